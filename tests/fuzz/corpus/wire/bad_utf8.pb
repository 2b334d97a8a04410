Ó´½au"s00300
 
í €úª¤¼"deluxe brush pack(08
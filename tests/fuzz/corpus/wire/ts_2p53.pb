Ó´½au"s00300
€€€€€€"deluxe brush pack(08
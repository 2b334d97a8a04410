Ó´½au"s00300
üÒ´½"scentedscarf Â wool(08
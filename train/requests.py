"""Write a request file (one JSON request per line) from the shop's held-out shoppers: realistic
history lengths, for benchmarks and load generators.

    /usr/bin/python3 -m train.requests --shop build/demo/shop.json --out build/demo/requests.jsonl
"""
import argparse
import json
import sys
import types

from . import shop as shop_mod
from .data import make_request


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--sections", type=int, default=3)
    ap.add_argument("--keywords", type=int, default=4)
    ap.add_argument("--products", type=int, default=4)
    a = ap.parse_args(argv)
    shop = shop_mod.load(a.shop)
    ids = types.SimpleNamespace(ids=[p["id"] for p in shop["products"]])  # what make_request reads
    held = [s for s in shop["shoppers"] if s["split"] in ("eval", "valid")]
    with open(a.out, "w") as f:
        for i in range(a.n):
            s = held[i % len(held)]
            hist, now, _ = shop_mod.holdout(s)
            req = make_request(hist, now, shop["regions"][s["region"]]["name"], ids, a.sections,
                               a.keywords, a.products, shopper_id=s["id"])
            f.write(json.dumps(req, separators=(",", ":")) + "\n")
    print("%d requests -> %s" % (a.n, a.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

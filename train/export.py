"""Export a trained checkpoint as the bundle the server loads, and the shop's catalogue.

    /usr/bin/python3 -m train.export --checkpoint build/demo/models/student.pt \\
        --shop build/demo/shop.json --bundle build/demo/bundle --catalog build/demo/catalog [--force]

Refuses NaN/Inf weights, shapes inconsistent with the config, and an existing non-empty output
directory without --force. Writes into a temporary directory and renames it into place.
"""
import argparse
import json
import os
import sys

from . import shop as shop_mod
from .bundle import export_bundle, export_catalog
from .data import Catalog, Tables
from .train import load_checkpoint


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--name", default="student")
    ap.add_argument("--metrics", nargs="*", default=[],
                    help="JSON files merged into the manifest's metrics")
    ap.add_argument("--ranker", help="ranker.json from train.tune (product score weights)")
    ap.add_argument("--force", action="store_true", help="overwrite existing output directories")
    a = ap.parse_args(argv)
    model, extra = load_checkpoint(a.checkpoint)
    shop = shop_mod.load(a.shop)
    tables = Tables.from_shop(shop)
    catalog = Catalog.from_shop(shop, model.cfg.code_levels, model.cfg.codebook)
    metrics = {"training": extra}
    for p in a.metrics:
        with open(p) as f:
            metrics[os.path.splitext(os.path.basename(p))[0]] = json.load(f)
    try:
        ranker = None
        if a.ranker:
            with open(a.ranker) as f:
                tuned = json.load(f)
            ranker, metrics["ranker_tuning"] = tuned["ranker"], tuned
        m = export_bundle(a.bundle, model, tables, metrics, a.force, a.name, ranker=ranker)
        c = export_catalog(a.catalog, catalog, tables, model, m["model_version"],
                           "shop-seed%d-%dp" % (shop["params"]["seed"], len(catalog.ids)),
                           a.force)
    except (ValueError, FileExistsError) as e:
        print("export: %s" % e, file=sys.stderr)
        return 2
    print("bundle %s (%s) and catalog %s (%d products) written" % (
        a.bundle, m["model_version"], a.catalog, c["n_products"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

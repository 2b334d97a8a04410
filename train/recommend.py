"""Run the reference cascade on one request: the PyTorch counterpart of `vitrine recommend`.

    /usr/bin/python3 -m train.recommend --bundle build/demo/bundle --catalog build/demo/catalog \\
        --request train/demo_request.json [--pretty]

Prints the storefront as JSON (or, with --pretty, as a table). A bad bundle, catalogue or request
is reported on stderr with exit status 2.
"""
import argparse
import json
import sys

import torch

from .bundle import BundleError, load_bundle, load_catalog
from .cascade import Cascade
from .data import RequestError


def pretty(front, catalog, out=sys.stdout):
    if front.get("dropped_events"):
        print("(%d oldest events dropped: more than the model's maximum)" %
              front["dropped_events"], file=out)
    for i, sec in enumerate(front["sections"], 1):
        th = sec["theme"]
        print("section %d  %-36s score %7.3f" % (i, th["text"], th["score"]), file=out)
        print("  keywords: " + ", ".join("%s (%.2f)" % (k["text"], k["score"])
                                         for k in sec["keywords"]), file=out)
        for p in sec["products"]:
            print("    %-8s %-40s %7.3f  via %s" % (
                p["id"], catalog.titles[p["index"]], p["score"],
                next(k["text"] for k in sec["keywords"] if k["id"] == p["keyword"])), file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--request", required=True, help="request JSON file, - for stdin")
    ap.add_argument("--pretty", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        model, tables, manifest = load_bundle(a.bundle)
        catalog, _ = load_catalog(a.catalog, tables, model.cfg, manifest["model_version"])
    except BundleError as e:
        print("recommend: %s" % e, file=sys.stderr)
        return 2
    try:
        f = sys.stdin if a.request == "-" else open(a.request)
        with f:
            req = json.load(f)
        front = Cascade.from_manifest(model, tables, catalog, manifest).recommend(req)
    except (OSError, json.JSONDecodeError, RequestError) as e:
        print("recommend: %s: %s" % (a.request, e), file=sys.stderr)
        return 2
    if a.pretty:
        pretty(front, catalog)
    else:
        json.dump(front, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

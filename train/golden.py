"""Golden dumps for C parity: requests, intermediate tensors and storefronts of the reference.

    /usr/bin/python3 -m train.golden --shop build/demo/shop.json --bundle build/demo/bundle \\
        --catalog build/demo/catalog --out build/demo/golden.safetensors [--n 240]

One safetensors file. Its __metadata__ holds format "vitrine-golden", version "1", the bundle's
model_version and the catalogue's catalog_version, and two JSON strings: "requests" (a list of
request objects, the API's JSON form) and "storefronts" (the reference's answers, same order).
Tensors, for request i (zero-padded to 3 digits), all float32:

    r{i}.event_emb     (N, C)  embedded events after LN_emb, context token first
    r{i}.enc{l}        (N, C)  output of encoder layer l (before the final LN)
    r{i}.memory        (Q, C)  Query-Former memory tokens
    r{i}.user          (R,)    retrieval user vector
    r{i}.first_logits  (V,)    full-vocabulary logits of the first theme-stage step

N = kept events + 1. The requests cover: empty history, one event, the maximum history, more than
the maximum (oldest dropped), unknown item ids, equal timestamps, search-only histories, events
after `now`, exclusions, several storefront shapes, and real held-out shoppers for the rest.
If the C engine disagrees with this file after a model change, regenerate it with the command above.
"""
import argparse
import json
import sys

import numpy as np
import torch

from . import shop as shop_mod
from .bundle import load_bundle, load_catalog, write_safetensors
from .cascade import Cascade
from .data import make_request

GOLDEN_FORMAT, GOLDEN_VERSION = "vitrine-golden", "1"


def golden_requests(shop, catalog, max_events, n, seed=3):
    rng = np.random.default_rng(seed)
    evals = [s for s in shop["shoppers"] if s["split"] == "eval"]
    regions = [r["name"] for r in shop["regions"]]
    now0 = 1750000000  # 2025-06-15
    reqs = []

    def ev(action, ts, item=None, query=None):
        d = {"action": action, "ts": int(ts)}
        if item is not None:
            d["item"] = item
        if query is not None:
            d["query"] = query
        return d

    ids = catalog.ids
    kw = [k["text"] for k in shop["keywords"]]
    for r in regions:  # empty history, each region
        reqs.append({"now": now0, "region": r, "events": [], "sections": 3,
                     "keywords_per_section": 3, "products_per_section": 4, "exclude": []})
    reqs.append({"now": now0, "region": "eu", "events": [ev("view", now0 - 60, ids[5])],
                 "sections": 2, "keywords_per_section": 2, "products_per_section": 3,
                 "exclude": []})
    long_hist = [ev(["view", "cart", "purchase", "view"][i % 4], now0 - 3600 * (200 - i),
                    ids[int(rng.integers(len(ids)))]) for i in range(max_events)]
    reqs.append({"now": now0, "region": "us", "events": long_hist, "sections": 4,
                 "keywords_per_section": 3, "products_per_section": 5, "exclude": []})
    over = long_hist + [ev("view", now0 - 10 * i, ids[i]) for i in range(1, 9)]
    reqs.append({"now": now0, "region": "au", "events": over, "sections": 3,
                 "keywords_per_section": 3, "products_per_section": 4, "exclude": []})
    reqs.append({"now": now0, "region": "sg", "events": [
        ev("view", now0 - 500, "no-such-item"), ev("purchase", now0 - 400, "p99999"),
        ev("view", now0 - 300, ids[7])], "sections": 3, "keywords_per_section": 3,
        "products_per_section": 4, "exclude": []})
    reqs.append({"now": now0, "region": "eu", "events": [
        ev("view", now0 - 1000, ids[i]) for i in (1, 2, 3, 4)] + [
        ev("search", now0 - 1000, query=kw[0])], "sections": 3, "keywords_per_section": 3,
        "products_per_section": 4, "exclude": []})
    reqs.append({"now": now0, "region": "us", "events": [
        ev("search", now0 - 86400 * i, query=kw[i] + " extra words") for i in range(1, 6)],
        "sections": 3, "keywords_per_section": 3, "products_per_section": 4, "exclude": []})
    reqs.append({"now": now0, "region": "au", "events": [
        ev("view", now0 + 3600, ids[10]), ev("cart", now0 + 7200, ids[10])],
        "sections": 3, "keywords_per_section": 3, "products_per_section": 4, "exclude": []})
    # the earliest time accepted: an event at the request time, one second after the epoch
    reqs.append({"now": 1, "region": "eu", "events": [ev("view", 1, ids[11])],
                 "sections": 1, "keywords_per_section": 1, "products_per_section": 1,
                 "exclude": []})
    while len(reqs) < n:
        s = evals[len(reqs) % len(evals)]
        hist, now, _ = shop_mod.holdout(s)
        req = make_request(hist, now, regions[s["region"]], catalog,
                           sections=int(rng.integers(1, 5)), kws=int(rng.integers(1, 5)),
                           prods=int(rng.integers(1, 7)))
        if rng.random() < 0.3 and hist:  # exclude something the shopper looked at
            req["exclude"] = [ids[e["item"]] for e in hist[-3:] if e["item"] is not None]
        reqs.append(req)
    return reqs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=240)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tables, manifest = load_bundle(a.bundle)
    catalog, cman = load_catalog(a.catalog, tables, model.cfg, manifest["model_version"])
    shop = shop_mod.load(a.shop)
    cascade = Cascade.from_manifest(model, tables, catalog, manifest)
    reqs = golden_requests(shop, catalog, model.cfg.max_events, a.n)
    tensors, fronts = {}, []
    for i, req in enumerate(reqs):
        trace = []
        fronts.append(cascade.recommend(req, trace))
        for name, t in trace:
            t = t[0] if name in ("event_emb", "memory") or name.startswith("enc") else t
            tensors["r%03d.%s" % (i, name)] = t.detach().numpy().astype(np.float32)
        with torch.no_grad():
            # the user vector, recomputed from the traced memory
            mem = dict(trace)["memory"]
            tensors["r%03d.user" % i] = model.user_vector(mem)[0].numpy().astype(np.float32)
    write_safetensors(a.out, tensors, {
        "format": GOLDEN_FORMAT, "version": GOLDEN_VERSION,
        "model_version": manifest["model_version"], "catalog_version": cman["catalog_version"],
        "requests": json.dumps(reqs, separators=(",", ":")),
        "storefronts": json.dumps(fronts, separators=(",", ":"))})
    print("golden: %d requests, %d tensors -> %s" % (len(reqs), len(tensors), a.out),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

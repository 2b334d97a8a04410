"""Tune the product ranker's weights on the validation shoppers (never the eval shoppers).

The cascade's candidates do not depend on the weights, so each validation shopper is decoded once
per page shape and its candidates re-ranked for every point of the grid (weights x the way a page
becomes one ranked list); the point with the best Recall@10 (then NDCG@10) wins, and the page
shape and ranking it used are what `train.evaluate` then uses on the eval shoppers.

    /usr/bin/python3 -m train.tune --checkpoint build/demo/models/student.pt \\
        --shop build/demo/shop.json --out build/demo/models/ranker.json
"""
import argparse
import itertools
import json
import math
import os
import sys
import time

import numpy as np
import torch

from . import shop as shop_mod
from .cascade import DEFAULT_RANKER, Cascade
from .data import Catalog, Tables, make_request
from .train import load_checkpoint

GRID = {"again": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0), "cooc": (0.0, 2.0, 4.0, 8.0, 16.0, 32.0),
        "popularity": (0.0, 0.25, 0.5, 1.0)}
# a larger catalogue's co-occurrence weights are smaller (more related items share the mass)
WIDE_GRID = {"again": (0.0, 4.0),
             "cooc": (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0),
             "popularity": (0.0, 0.05, 0.25, 0.5, 1.0)}
# page shapes tried (sections, keywords and products per section) and ways to rank a page
SHAPES = ({"sections": 3, "keywords": 4, "products": 4}, {"sections": 2, "keywords": 4, "products": 5},
          {"sections": 2, "keywords": 6, "products": 5}, {"sections": 4, "keywords": 4, "products": 3})
RANKINGS = ("round-robin", "score")


def holdout(shop, shopper):
    """(history events, now, target session) of a shopper's held-out last session, `now` by the
    shop's "request_now" rule: "previous_event" (the last history event's time: the target's own
    day would leak into the request), "cutoff" (the last second before a time split's cut-off:
    the moment the prediction is made) or, by default, the second before the held-out session
    (the synthetic shop's sessions: shop.holdout)."""
    hist, now, last = shop_mod.holdout(shopper)
    rule = shop["params"].get("request_now", "session")
    if rule == "previous_event" and hist:
        now = max(e["ts"] for e in hist)
    elif rule == "cutoff":
        now = shop["params"]["cutoff"] - 1
    elif rule not in ("session", "previous_event"):
        raise ValueError("shop params: unknown request_now %r" % rule)
    return hist, now, last


def seen_items(shop, catalog):
    """The products a time split ranks (bool array): those seen in the statistics, i.e. before the
    cut-off; None (every product) for other protocols."""
    if shop["params"].get("protocol") != "time":
        return None
    return np.asarray(catalog.popularity) > 0


class Progress:
    """Progress lines on stderr: what is done, of how many, and the elapsed time."""

    def __init__(self, log, what, total, every):
        self.log, self.what, self.total, self.every = log, what, total, max(1, every)
        self.t0, self.done = time.time(), 0

    def step(self, extra=""):
        self.done += 1
        if self.log and (self.done % self.every == 0 or self.done == self.total):
            self.log("  %s %d/%d, %.0f s%s" % (self.what, self.done, self.total,
                                              time.time() - self.t0, extra))


def collect(cascade, shop, catalog, storefront, split="valid", limit=None, log=None):
    """Decodes each shopper once: -> [(per-section candidate arrays, target product)]. With a
    limit, a seeded random sample of that many shoppers (file order can be biased: the first
    Beauty users are much harder than the average)."""
    out = []
    users = sample_shoppers(shop, split, limit)
    prog = Progress(log, "decoded %s shoppers (%d sections x %d keywords)"
                    % (split, storefront["sections"], storefront["keywords"]), len(users), 100)
    for s in users:
        hist, now, last = holdout(shop, s)
        req = make_request(hist, now, shop["regions"][s["region"]]["name"], catalog,
                           storefront["sections"], storefront["keywords"], storefront["products"])
        got = []
        cascade.recommend(req, collect=got)
        u, sections = got[0]
        out.append(([candidate_arrays(cascade, c, u) for c in sections], last["purchase"]))
        prog.step()
    return out


def sample_shoppers(shop, split, limit, seed=0):
    users = [x for x in shop["shoppers"] if x["split"] == split]
    if limit is None or limit >= len(users):
        return users
    keep = np.random.default_rng(seed).choice(len(users), size=limit, replace=False)
    return [users[i] for i in sorted(keep)]


def candidate_arrays(cascade, cands, u):
    """A section's candidates as float32 arrays: index, u.e_p, again, cooc, log1p(popularity)."""
    idx = np.array([c[0] for c in cands], dtype=np.int64)
    dots = (cascade.emb[idx] @ u).cpu().numpy() if len(idx) else np.zeros(0, np.float32)
    return (idx, dots.astype(np.float32), np.array([c[2] for c in cands], dtype=np.float32),
            np.array([c[3] for c in cands], dtype=np.float32),
            np.array([cascade.log_pop[i] for i in idx], dtype=np.float32))


def fast_pick(arrs, shown, n, ranker):
    """Cascade.pick on precomputed arrays (same float32 arithmetic): -> [(index, score)].
    shown: bool array over the catalogue, updated with the picked products."""
    idx, dot, ag, co, lp = arrs
    keep = ~shown[idx]
    idx, dot, ag, co, lp = idx[keep], dot[keep], ag[keep], co[keep], lp[keep]
    wa, wc, wp = (np.float32(ranker[k]) for k in ("again", "cooc", "popularity"))
    s = dot + wa * ag
    s = s + wc * co
    s = s + wp * lp
    if len(s) > n:  # only the candidates that can be among the best n (ties at the edge kept)
        edge = np.partition(s, len(s) - n)[len(s) - n]
        near = s >= edge
        idx, s = idx[near], s[near]
    order = np.lexsort((idx, -s))[:n]
    picked = [(int(idx[o]), float(s[o])) for o in order]
    shown[[p for p, _ in picked]] = True
    return picked


def page_ranking(sections, mode):
    """A storefront's products as one ranked list: round-robin over sections (first product of
    each section in section order, then the second, ...) or by descending score."""
    if mode == "score":
        prods = [p for s in sections for p in s]
        return [p["index"] for p in sorted(prods, key=lambda p: (-p["score"], p["index"]))]
    n = max((len(s) for s in sections), default=0)
    return [s[r]["index"] for r in range(n) for s in sections if r < len(s)]


def score(collected, ranker, n_products, ranking, n_catalog, k=10, seen=None):
    """-> (Recall@k, NDCG@k) of the pages; with `seen` (bool per product) only seen products are
    ranked (a time split: a target never seen before the cut-off is a miss)."""
    hits, ndcg = 0, 0.0
    shown = np.zeros(n_catalog, dtype=bool)
    for sections, target in collected:
        shown[:] = False
        page = [[{"index": i, "score": sc} for i, sc in fast_pick(a, shown, n_products, ranker)]
                for a in sections]
        ranked = page_ranking(page, ranking)
        ranked = (ranked if seen is None else [i for i in ranked if seen[i]])[:k]
        if target in ranked:
            hits += 1
            ndcg += 1.0 / math.log2(ranked.index(target) + 2)
    n = max(1, len(collected))
    return hits / n, ndcg / n


# ablations tuned in the same pass (--ablations): the grid's best among its points whose named
# weights are held at zero; the page shape and ranking are re-chosen for each
ABLATIONS = {"head-only": ("again", "cooc", "popularity"), "no-cooc": ("cooc",)}


def tune(cascade, shop, catalog, limit=None, log=None, shapes=SHAPES, rankings=RANKINGS,
         grid=None, progress=None, ablations=None):
    """-> (ranker weights, storefront shape with its ranking, (recall, ndcg), head-only recall),
    and with `ablations` ({name: weights held at 0}) a fifth item: {name: the same triple, the
    best among the grid points that hold those weights at 0}.
    log: the new best points; progress: progress lines (shoppers decoded, grid points scored)."""
    best, head_only = None, None
    ablated = {name: None for name in (ablations or {})}
    grid = grid or GRID
    seen = seen_items(shop, catalog)
    # shapes with the same keywords per section share one decoding with the most sections: the
    # theme beam's width is max(THEME_BEAM, sections) and its early stop is exact, so the first s
    # sections of a longer page are the page of s sections (products are chosen at scoring time)
    decoded = {}
    for shape in shapes:
        key = shape["keywords"]
        if key not in decoded:
            most = max(s["sections"] for s in shapes if s["keywords"] == key)
            if most > cascade.theme_beam and any(s["sections"] < most for s in shapes
                                                 if s["keywords"] == key):
                raise ValueError("page shapes with more sections than the theme beam (%d) "
                                 "cannot share a decoding" % cascade.theme_beam)
            decoded[key] = collect(cascade, shop, catalog, dict(shape, sections=most),
                                   limit=limit, log=progress)
    points = list(itertools.product(grid["again"], grid["cooc"], grid["popularity"]))
    prog = Progress(progress, "grid points scored", len(shapes) * len(rankings) * len(points), 1)
    for shape in shapes:
        collected = [(secs[:shape["sections"]], t) for secs, t in decoded[shape["keywords"]]]
        for ranking in rankings:
            for wa, wc, wp in points:
                r = dict(cascade.ranker, again=wa, cooc=wc, popularity=wp)
                rec, nd = score(collected, r, shape["products"], ranking, len(catalog.ids),
                                seen=seen)
                prog.step(" (%s %s again=%g cooc=%g popularity=%g: recall@10 %.4f)"
                          % (json.dumps(shape), ranking, wa, wc, wp, rec))
                if shape is shapes[0] and ranking == rankings[0] and (wa, wc, wp) == (0, 0, 0):
                    head_only = rec
                if best is None or (rec, nd) > best[0]:
                    best = ((rec, nd), r, dict(shape, ranking=ranking))
                    if log:
                        log("  %s again=%g cooc=%g popularity=%g: recall@10 %.4f ndcg@10 %.4f"
                            % (best[2], wa, wc, wp, rec, nd))
                for name, held in (ablations or {}).items():
                    if all(r[w] == 0 for w in held) and (
                            ablated[name] is None or (rec, nd) > ablated[name][0]):
                        ablated[name] = ((rec, nd), r, dict(shape, ranking=ranking))
    if any(v is None for v in ablated.values()):
        raise ValueError("an ablation holds at 0 a weight whose grid has no 0: %s"
                         % [k for k, v in ablated.items() if v is None])
    main = (best[1], best[2], best[0], head_only)
    if ablations is None:
        return main
    return main + ({k: (v[1], v[2], v[0]) for k, v in ablated.items()},)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", help="JSON list of page shapes to try, e.g. "
                    "'[{\"sections\": 4, \"keywords\": 8, \"products\": 10}]'")
    ap.add_argument("--rankings", default=",".join(RANKINGS), help="page rankings to try")
    ap.add_argument("--decay", type=float, default=DEFAULT_RANKER["decay"],
                    help="recency decay of the history's item-to-item features (fixed, not tuned)")
    ap.add_argument("--wide-grid", action="store_true", help="the grid for large catalogues")
    ap.add_argument("--ablations", action="store_true",
                    help="also write OUT's siblings ranker-head-only.json (again, cooc and "
                    "popularity held at 0: the retrieval head alone) and ranker-no-cooc.json "
                    "(co-occurrence held at 0), tuned in the same pass")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model, _ = load_checkpoint(a.checkpoint)
    shop = shop_mod.load(a.shop)
    tables = Tables.from_shop(shop)
    catalog = Catalog.from_shop(shop, model.cfg.code_levels, model.cfg.codebook)
    cascade = Cascade(model, tables, catalog, ranker=dict(DEFAULT_RANKER, decay=a.decay))
    shapes = tuple(json.loads(a.shapes)) if a.shapes else SHAPES
    got = tune(cascade, shop, catalog, a.limit, log, shapes, tuple(a.rankings.split(",")),
               WIDE_GRID if a.wide_grid else GRID, progress=log,
               ablations=ABLATIONS if a.ablations else None)
    ranker, storefront, (rec, nd), head_only = got[:4]
    n_valid = len(sample_shoppers(shop, "valid", a.limit))
    result = {"ranker": ranker, "storefront": storefront, "valid_shoppers": n_valid,
              "valid_recall@10": rec, "valid_ndcg@10": nd,
              "valid_recall@10_retrieval_head_only": head_only}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    log("ranker: %s" % json.dumps(result))
    stem, ext = os.path.splitext(a.out)
    for name, (r, sf, (rec, nd)) in (got[4].items() if a.ablations else ()):
        out = "%s-%s%s" % (stem, name, ext)
        with open(out, "w") as f:
            json.dump({"ranker": r, "storefront": sf, "valid_shoppers": n_valid,
                       "valid_recall@10": rec, "valid_ndcg@10": nd,
                       "ablation": "%s held at 0" % ", ".join(ABLATIONS[name])}, f, indent=1)
        log("%s: %s" % (out, json.dumps({"ranker": r, "storefront": sf, "recall@10": rec})))
    return 0


if __name__ == "__main__":
    sys.exit(main())

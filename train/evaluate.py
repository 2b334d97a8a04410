"""Evaluate the cascade against baselines on the shop's held-out shoppers.

Each eval shopper's last session is held out; its purchase is the target. Every system shows
products for the history before that session:
- popularity: the 10 most purchased products (training shoppers' events and eval histories);
- co-occurrence ("customers also bought"): C[a][b] counts item b following item a within 8 item
  events of one shopper; a shopper's score for b is sum over history items h, newest first at rank
  r, of 0.8^r C[h][b]; the top 10, topped up by popularity;
- cascade-teacher / cascade-student: the reference cascade (student from the exported bundle and
  catalogue, i.e. what the server loads); cascade-student-unconstrained decodes over the whole
  vocabulary instead of the tries, for contrast.

A storefront becomes one ranked list either round-robin (the first product of each section in
section order, then the second of each, ...) or by descending product score; the page shape and
which of the two are chosen on the validation shoppers by train.tune (recorded in the bundle).

Metrics: recall@10 and ndcg@10 of the target (one target per shopper, so recall is the hit rate),
the same on shoppers whose intent drifted, storefront hit rate (target anywhere on the page), theme
hit rate (the target's theme among the sections' themes), hallucination rate (generated themes and
keywords absent from the catalogue's tables), violation rate (shown products not sold in the
shopper's region or not suited to the season there at `now`), and per-request CPU latency.

    /usr/bin/python3 -m train.evaluate --shop build/demo/shop.json --bundle build/demo/bundle \\
        --catalog build/demo/catalog --teacher build/demo/models/teacher.pt --out build/demo/eval.json
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from . import shop as shop_mod
from .bootstrap import RESAMPLES, SEED, against_best, format_rows
from .bundle import load_bundle, load_catalog
from .cascade import Cascade, season_now
from .data import interaction_stats, make_request
from .model import n_params
from .train import load_checkpoint
from .tune import page_ranking

K = 10


def ranked_list(storefront, mode):
    return page_ranking([s["products"] for s in storefront["sections"]], mode)


def popularity(shop, n):
    """Products by observed purchases (the catalogue's popularity), ties to the lower index."""
    counts = interaction_stats(shop)[0]
    return [int(i) for i in sorted(range(n), key=lambda i: (-counts[i], i))]


def cooccurrence(shop, n, window=8):
    c = np.zeros((n, n), dtype=np.float32)
    for s in shop["shoppers"]:
        items = []
        for e in shop_mod.observed(s):
            if e["item"] is not None and (not items or items[-1] != e["item"]):
                items.append(e["item"])
        for i, a in enumerate(items):
            for b in items[i + 1:i + 1 + window]:
                if b != a:
                    c[a, b] += 1
    return c


def cooc_recommend(c, history_items, pop, k=K, decay=0.8):
    score = np.zeros(c.shape[0], dtype=np.float64)
    for r, h in enumerate(reversed(history_items)):
        score += (decay ** r) * c[h]
    top = [int(i) for i in np.argsort(-score, kind="stable")[:k] if score[i] > 0]
    for p in pop:
        if len(top) >= k:
            break
        if p not in top:
            top.append(p)
    return top


class Scores:
    def __init__(self):
        self.rows = []

    def add(self, ranked, target, drifted, violations, shown, theme_hit=None, page_hit=None,
            halluc=None, latency=None):
        top = ranked[:K]
        rank = top.index(target) if target in top else -1
        self.rows.append({"hit": rank >= 0, "ndcg": 1.0 / math.log2(rank + 2) if rank >= 0 else 0.0,
                          "drifted": drifted, "viol": violations, "shown": shown,
                          "theme_hit": theme_hit, "page_hit": page_hit, "halluc": halluc,
                          "latency": latency})

    def summary(self):
        r = self.rows
        mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
        d = [x for x in r if x["drifted"]]
        out = {"n": len(r), "recall@10": mean([x["hit"] for x in r]),
               "ndcg@10": mean([x["ndcg"] for x in r]),
               "recall@10_drifted": mean([x["hit"] for x in d]),
               "ndcg@10_drifted": mean([x["ndcg"] for x in d]), "n_drifted": len(d),
               "violation_rate": sum(x["viol"] for x in r) / max(1, sum(x["shown"] for x in r))}
        if r and r[0]["theme_hit"] is not None:
            out["theme_hit_rate"] = mean([x["theme_hit"] for x in r])
            out["storefront_hit_rate"] = mean([x["page_hit"] for x in r])
            n_phr = sum(x["halluc"][1] for x in r)
            out["hallucination_rate"] = sum(x["halluc"][0] for x in r) / max(1, n_phr)
            lat = sorted(x["latency"] for x in r)
            out["latency_ms_mean"] = 1000 * float(np.mean(lat))
            out["latency_ms_p50"] = 1000 * lat[len(lat) // 2]
            out["latency_ms_p99"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        else:
            out["hallucination_rate"] = 0.0  # baselines only show catalogue products
        return out


def violations(products, region, season, catalog):
    return sum(1 for p in products if region not in catalog.regions[p]
               or season not in catalog.seasons[p])


def evaluate(shop, systems, catalog, tables, sections=3, kws=4, prods=4, ranking="round-robin",
             limit=None, log=None):
    """systems: name -> Cascade or ("baseline", fn(shopper, history) -> ranked list)."""
    shoppers = [s for s in shop["shoppers"] if s["split"] == "eval"][:limit]
    scores = {name: Scores() for name in systems}
    for si, s in enumerate(shoppers):
        hist, now, last = shop_mod.holdout(s)
        rname = shop["regions"][s["region"]]["name"]
        season = season_now(tables, rname, now)
        target = last["purchase"]
        req = make_request(hist, now, rname, catalog, sections, kws, prods)
        for name, sysm in systems.items():
            if sysm[0] == "baseline":
                ranked = sysm[1](s, hist)
                top = ranked[:K]
                scores[name].add(ranked, target, s["drifted"],
                                 violations(top, s["region"], season, catalog), len(top))
                continue
            cascade, constrained = sysm
            t0 = time.perf_counter()
            sf = cascade.recommend(req, constrained=constrained)
            dt = time.perf_counter() - t0
            ranked = ranked_list(sf, ranking)
            top = ranked[:K]
            phrases = [sec["theme"] for sec in sf["sections"]] + \
                [k for sec in sf["sections"] for k in sec["keywords"]]
            scores[name].add(
                ranked, target, s["drifted"], violations(top, s["region"], season, catalog),
                len(top), theme_hit=any(sec["theme"]["id"] == last["theme"]
                                        for sec in sf["sections"]),
                page_hit=target in ranked, halluc=(sum(p["id"] < 0 for p in phrases),
                                                   len(phrases)), latency=dt)
        if log and (si + 1) % 100 == 0:
            log("  %d/%d shoppers" % (si + 1, len(shoppers)))
    out = {name: sc.summary() for name, sc in scores.items()}
    if shoppers:
        for name, r in compare(scores, systems).items():
            out[name]["vs_best_baseline"] = r
    return out


def compare(scores, systems, resamples=RESAMPLES, seed=SEED):
    """Each cascade's paired bootstrap 95% interval of its difference to the best baseline per
    metric (train.bootstrap), from the per-shopper hits and NDCG of the same shoppers."""
    def vectors(name):
        rows = scores[name].rows
        return {"recall@10": [float(x["hit"]) for x in rows], "ndcg@10": [x["ndcg"] for x in rows]}
    base = {n: vectors(n) for n, s in systems.items() if s[0] == "baseline"}
    cascades = {n: vectors(n) for n, s in systems.items() if s[0] != "baseline"}
    return against_best(cascades, base, ("recall@10", "ndcg@10"), resamples, seed)


def print_table(result, f=sys.stdout):
    cols = ["recall@10", "ndcg@10", "recall@10_drifted", "theme_hit_rate", "storefront_hit_rate",
            "hallucination_rate", "violation_rate", "latency_ms_p50"]
    print("%-32s" % "system" + "".join("%20s" % c for c in cols), file=f)
    for name, m in result["systems"].items():
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append("%20s" % ("-" if v is None else "%.4f" % v if c != "latency_ms_p50"
                                   else "%.1f" % v))
        print("%-32s" % name + "".join(cells), file=f)
    cmp = {n: m["vs_best_baseline"] for n, m in result["systems"].items()
           if "vs_best_baseline" in m}
    if cmp:
        print("\npaired bootstrap over shoppers (%d resamples, seed %d), 95%% interval of "
              "system - best baseline:" % (RESAMPLES, SEED), file=f)
        for row in format_rows(cmp):
            print(row, file=f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--teacher", help="teacher checkpoint")
    ap.add_argument("--teacher-ranker", help="the teacher's ranker.json from train.tune")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="NAME=CHECKPOINT more student checkpoints to evaluate (ablations)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--sections", type=int, help="default: the tuned page shape in the bundle")
    ap.add_argument("--keywords", type=int)
    ap.add_argument("--products", type=int)
    ap.add_argument("--ranking", choices=("round-robin", "score"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (latency is per request)")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    shop = shop_mod.load(a.shop)
    student, tables, manifest = load_bundle(a.bundle)
    catalog, _ = load_catalog(a.catalog, tables, student.cfg, manifest["model_version"])
    pop = popularity(shop, len(catalog.ids))
    cooc = cooccurrence(shop, len(catalog.ids))

    def cooc_fn(s, hist):
        return cooc_recommend(cooc, [e["item"] for e in hist if e["item"] is not None], pop)

    systems = {"popularity": ("baseline", lambda s, h: pop[:K]),
               "cooccurrence": ("baseline", cooc_fn)}
    params = {"cascade-student": n_params(student)}
    if a.teacher:
        teacher, _ = load_checkpoint(a.teacher)
        tr = manifest.get("ranker")
        if a.teacher_ranker:
            with open(a.teacher_ranker) as f:
                tr = json.load(f)["ranker"]
        systems["cascade-teacher"] = (Cascade(teacher, tables, catalog.with_embeddings(None), tr),
                                      True)
        params["cascade-teacher"] = n_params(teacher)
    for spec in a.extra:
        name, path = spec.split("=", 1)
        m, _ = load_checkpoint(path)
        systems[name] = (Cascade(m, tables, catalog.with_embeddings(None),
                                 manifest.get("ranker")), True)
        params[name] = n_params(m)
    student_cascade = Cascade.from_manifest(student, tables, catalog, manifest)
    systems["cascade-student"] = (student_cascade, True)
    systems["cascade-student-unconstrained"] = (student_cascade, False)
    params["cascade-student-unconstrained"] = params["cascade-student"]
    t0 = time.time()
    page = dict({"sections": 3, "keywords": 4, "products": 4, "ranking": "round-robin"},
                **manifest.get("metrics", {}).get("ranker_tuning", {}).get("storefront", {}))
    for k in ("sections", "keywords", "products", "ranking"):
        if getattr(a, k) is not None:
            page[k] = getattr(a, k)
    res = evaluate(shop, systems, catalog, tables, page["sections"], page["keywords"],
                   page["products"], page["ranking"], a.limit, log)
    for name, n in params.items():
        res[name]["params"] = n
    result = {"storefront": page,
              "threads": a.threads, "model_version": manifest["model_version"],
              "seconds": round(time.time() - t0, 1), "systems": res}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    if not a.quiet:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

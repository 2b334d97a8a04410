"""The served cascade on Amazon Beauty: leave-one-out test scores of bundles answered by the C
engine (`vitrine batch`), beside the baselines of train.beauty and train.sasrec.

    /usr/bin/python3 -m train.beauty_eval --shop build/beauty/shop.json --vitrine build/vitrine \\
        --system student=build/beauty/systems/student --system teacher=... \\
        --baselines build/beauty/baselines.json [--sasrec build/beauty/sasrec.json] \\
        --torch student --torch-limit 300 \\
        --out build/beauty/results.json

A system directory holds bundle/, catalog/ and ranker.json (train.tune's choice of page shape and
ranking, made on the validation targets). Every test user's history (all items but the last, as
the protocol says) becomes one request for that page shape; the storefront answers it.

How a storefront becomes one ranking of all 12,101 items (the metrics need one): the page's
products in the page ranking train.tune chose ("score": by the ranker's score across sections;
"round-robin": the first product of each section in section order, then the second, ...), then
every product not on the page by catalogue popularity (then by index). Recall@K and NDCG@K are the
published protocol's on that ranking. Also reported, for the product's own question:
- storefront hit: the held-out item is anywhere on the page;
- keyword coverage: the held-out item is among the products of a generated keyword (what
  retrieval could have found; what limits every other number);
- theme hit: the held-out item's theme is one of the page's themes.
--torch runs the PyTorch reference cascade of a system's bundle on the first --torch-limit test users,
constrained (its product ids are compared with the C engine's) and unconstrained (keywords decoded
word by word without the trie; hallucination rate = generated keywords that are not catalogue
keywords).
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

from . import shop as shop_mod
from .beauty import MISS
from .bootstrap import against_best, format_rows, per_user
from .cascade import Cascade
from .data import make_request
from .tune import holdout, page_ranking

KS = (5, 10)


def ranking_metrics(ranks):
    out = {}
    for k in KS:
        out["recall@%d" % k] = float(np.mean([r < k for r in ranks])) if ranks else 0.0
        out["ndcg@%d" % k] = float(np.mean([1 / math.log2(r + 2) if r < k else 0.0
                                            for r in ranks])) if ranks else 0.0
    return out


class Scorer:
    """Turns storefronts into the protocol's metrics (see the module's docstring)."""

    def __init__(self, shop):
        self.shop = shop
        self.ids = {p["id"]: i for i, p in enumerate(shop["products"])}
        n = len(shop["products"])
        self.kw_products = [set() for _ in shop["keywords"]]
        for i, p in enumerate(shop["products"]):
            for k in p["keywords"]:
                self.kw_products[k].add(i)
        pop = np.zeros(n)
        for s in shop["shoppers"]:
            if s.get("in_stats", True):
                for e in shop_mod.observed(s):
                    pop[e["item"]] += 1
        # a time split ranks the products seen before the cut-off; leave-one-out every product
        self.time_split = shop["params"].get("protocol") == "time"
        self.seen = pop > 0 if self.time_split else np.ones(n, dtype=bool)
        self.pop_order = sorted((i for i in range(n) if self.seen[i]), key=lambda i: (-pop[i], i))

    def rank(self, page, target):
        """0-based rank of target in the full ranking: the page, then the rest by popularity
        (only seen products in a time split: a cold-start target ranks MISS)."""
        if not self.seen[target]:
            return MISS
        page = [i for i in page if self.seen[i]]
        if target in page:
            return page.index(target)
        on_page = set(page)
        r = len(page)
        for i in self.pop_order:
            if i == target:
                return r
            if i not in on_page:
                r += 1
        raise ValueError("target %d not in the catalogue" % target)

    def score(self, storefronts, targets, mode, ranks_out=None):
        """-> the metrics of storefronts against targets; ranks_out (a list) receives each
        user's rank. In a time split also: cold-start targets, how often the page shows them, and
        the page's cold (never seen before the cut-off) products."""
        ranks, hit, cover, theme_hit, sizes, kw_unknown, kw_total = [], 0, 0, 0, [], 0, 0
        cold, cold_on_page, cold_shown = 0, 0, []
        for sf, t in zip(storefronts, targets):
            secs = [[{"index": self.ids[p["id"]], "score": p["score"]} for p in s["products"]]
                    for s in sf["sections"]]
            page = page_ranking(secs, mode)
            ranks.append(self.rank(page, t))
            hit += t in page
            sizes.append(len(page))
            if self.time_split:
                cold += not self.seen[t]
                cold_on_page += (not self.seen[t]) and t in page
                cold_shown.append(sum(1 for i in page if not self.seen[i]))
            kws = [k["id"] for s in sf["sections"] for k in s["keywords"]]
            kw_total += len(kws)
            kw_unknown += sum(1 for k in kws if k < 0)
            cover += any(t in self.kw_products[k] for k in kws if k >= 0)
            theme_hit += self.shop["products"][t]["theme"] in {s["theme"]["id"]
                                                                for s in sf["sections"]}
        n = max(1, len(targets))
        out = ranking_metrics(ranks)
        out.update({"storefront_hit": hit / n, "keyword_coverage": cover / n,
                    "theme_hit": theme_hit / n, "page_products": float(np.mean(sizes)),
                    "hallucination_rate": kw_unknown / max(1, kw_total), "users": len(targets)})
        if self.time_split:
            out.update({"cold_targets": cold, "cold_target_on_page": cold_on_page / max(1, cold),
                        "cold_products_per_page": float(np.mean(cold_shown)) if cold_shown
                        else 0.0})
        if ranks_out is not None:
            ranks_out.extend(ranks)
        return out


def test_cases(shop, shape):
    """-> (requests, targets) for every eval record, in file order. A request's `now` follows
    the shop's rule (train.tune.holdout: the previous event's time in leave-one-out, the cut-off
    in a time split), never the target's own day."""
    ids = type("Ids", (), {"ids": [p["id"] for p in shop["products"]]})
    reqs, targets = [], []
    for s in shop["shoppers"]:
        if s["split"] != "eval":
            continue
        hist, now, last = holdout(shop, s)
        reqs.append(make_request(hist, now, shop["regions"][s["region"]]["name"], ids,
                                 shape["sections"], shape["keywords"], shape["products"],
                                 shopper_id=s["id"]))
        targets.append(last["purchase"])
    return reqs, targets


METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def bootstrap(res, system_ranks, baselines_file, users, resamples, seed, log):
    """Per metric and served system, the paired bootstrap interval of system - best baseline (the
    baselines with per-user ranks in baselines.json: train.beauty's); -> res["bootstrap"]."""
    base = {}
    for name, v in baselines_file["systems"].items():
        if "test_ranks" not in v or "test_users" not in baselines_file:
            continue
        by_user = dict(zip(baselines_file["test_users"], v["test_ranks"]))
        missing = [u for u in users if u not in by_user]
        if missing:
            raise ValueError("baselines.json has no rank for test user %s (another split?)"
                             % missing[0])
        base[name] = {m: per_user([by_user[u] for u in users], m) for m in METRICS}
    if not base:
        log("bootstrap: baselines.json has no per-user ranks (rerun train.beauty); no intervals")
        return
    systems = {name: {m: per_user(r, m) for m in METRICS} for name, r in system_ranks.items()}
    res["bootstrap"] = {"method": "paired bootstrap over users, %d resamples, seed %d, "
                        "percentile 95%% interval of mean(system - best baseline); best baseline "
                        "per metric among %s" % (resamples, seed, ", ".join(sorted(base))),
                        "systems": against_best(systems, base, METRICS, resamples, seed)}
    better = [k for k, v in res.get("baselines", {}).items() if k not in base and
              any(v[m] > max(float(np.mean(b[m])) for b in base.values()) for m in METRICS)]
    if better:
        res["bootstrap"]["note"] = ("%s score higher on some metric but have no per-user ranks: "
                                    "not compared" % ", ".join(better))


def run_c(vitrine, system_dir, reqs, batch=64):
    """The C engine on every request (`vitrine batch`): -> (storefronts, seconds). The answers are
    kept in the system's folder with the digest of the requests and the bundle/catalogue they came
    from, and reused while those are unchanged (re-running the evaluation is then cheap)."""
    path = os.path.join(system_dir, "test-requests.jsonl")
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in reqs)
    with open(path, "w") as f:
        f.write(text)
    key = {"requests_sha256": hashlib.sha256(text.encode()).hexdigest()}
    for part in ("bundle", "catalog"):
        with open(os.path.join(system_dir, part, "manifest.json"), "rb") as f:
            key[part + "_manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    cache, meta = (os.path.join(system_dir, "test-storefronts" + x) for x in (".jsonl", ".json"))
    if os.path.exists(cache) and os.path.exists(meta):
        with open(meta) as f:
            m = json.load(f)
        if m.get("key") == key:
            with open(cache) as f:
                return [json.loads(line) for line in f], m["seconds"]
    t0 = time.perf_counter()
    p = subprocess.run([vitrine, "batch", "--bundle", os.path.join(system_dir, "bundle"),
                        "--catalog", os.path.join(system_dir, "catalog"), "--requests", path,
                        "--batch", str(batch)], capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError("vitrine batch failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    out = [json.loads(line) for line in p.stdout.splitlines()]
    if len(out) != len(reqs):
        raise RuntimeError("vitrine batch answered %d of %d requests" % (len(out), len(reqs)))
    with open(cache, "w") as f:
        f.write(p.stdout)
    with open(meta, "w") as f:
        json.dump({"key": key, "seconds": dt}, f)
    return out, dt


def run_torch(system_dir, reqs, constrained):
    """The PyTorch reference cascade on the system's own bundle and catalogue files: ->
    (storefronts, seconds), kept and reused like run_c's answers."""
    from .bundle import load_bundle, load_catalog
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in reqs)
    key = {"requests_sha256": hashlib.sha256(text.encode()).hexdigest(), "constrained": constrained}
    for part in ("bundle", "catalog"):
        with open(os.path.join(system_dir, part, "manifest.json"), "rb") as f:
            key[part + "_manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    cache = os.path.join(system_dir, "torch-%s.json" % ("constrained" if constrained
                                                        else "unconstrained"))
    if os.path.exists(cache):
        with open(cache) as f:
            c = json.load(f)
        if c.get("key") == key:
            return c["storefronts"], c["seconds"]
    model, tables, manifest = load_bundle(os.path.join(system_dir, "bundle"))
    catalog, _ = load_catalog(os.path.join(system_dir, "catalog"), tables, model.cfg,
                              manifest["model_version"])
    cascade = Cascade.from_manifest(model, tables, catalog, manifest)
    t0 = time.perf_counter()
    out = [cascade.recommend(r, constrained=constrained) for r in reqs]
    dt = time.perf_counter() - t0
    with open(cache, "w") as f:
        json.dump({"key": key, "seconds": dt, "storefronts": out}, f)
    return out, dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", required=True, help="the test shop of train.beauty --shops")
    ap.add_argument("--vitrine", default="build/vitrine")
    ap.add_argument("--system", action="append", default=[], help="NAME=DIR (bundle, catalog, "
                    "ranker.json)")
    ap.add_argument("--torch", action="append", default=[], help="NAME: also run the PyTorch "
                    "reference cascade of system NAME's bundle on --torch-limit users")
    ap.add_argument("--torch-limit", type=int, default=300)
    ap.add_argument("--baselines", help="train.beauty's baselines.json")
    ap.add_argument("--sasrec", help="train.sasrec's result JSON")
    ap.add_argument("--users", type=int, help="only the first N test users (a quick check; the "
                    "protocol is every user)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    shop = shop_mod.load(a.shop)
    scorer = Scorer(shop)
    if scorer.time_split:
        protocol = ("time split at %s: each shopper's first item after it, full ranking over the "
                    "%d items seen before it (cold-start targets are misses)"
                    % (shop["params"].get("cutoff_day"), len(scorer.pop_order)))
    else:
        protocol = "leave-one-out test targets, full ranking over all %d items" % len(
            shop["products"])
    res = {"protocol": protocol + "; a storefront is ranked as its page ranking, then the rest "
           "by popularity (train/beauty_eval.py)", "systems": {}, "reference": {}}
    users = [s["id"] for s in shop["shoppers"] if s["split"] == "eval"][:a.users]
    system_ranks, c_answers = {}, {}
    dirs = dict(s.split("=", 1) for s in a.system)
    for name, d in dirs.items():
        with open(os.path.join(d, "ranker.json")) as f:
            tuned = json.load(f)
        shape = tuned["storefront"]
        reqs, targets = test_cases(shop, shape)
        reqs, targets = reqs[:a.users], targets[:a.users]
        sfs, dt = run_c(a.vitrine, d, reqs)
        if name in a.torch:  # only what the reference is compared on (pages are large)
            c_answers[name] = sfs[:a.torch_limit]
        system_ranks[name] = []
        m = scorer.score(sfs, targets, shape["ranking"], system_ranks[name])
        m.update({"engine": "vitrine C (vitrine batch, 1 thread)", "storefront": shape,
                  "ranker": tuned["ranker"], "valid_recall@10": tuned.get("valid_recall@10"),
                  "valid_ndcg@10": tuned.get("valid_ndcg@10"),
                  "requests_per_s": round(len(reqs) / dt, 1)})
        res["systems"][name] = m
        log("%s: %s" % (name, json.dumps(m)))
    for name in a.torch:
        d = dirs[name]
        shape = res["systems"][name]["storefront"]
        reqs, targets = test_cases(shop, shape)
        # the C engine's answers to the same first requests, from its run above (a run of these
        # alone would replace the system's kept answers to every test user: run_c keeps one set)
        c_sfs = c_answers[name]
        reqs, targets = reqs[:len(c_sfs)], targets[:len(c_sfs)]
        entry = {}
        for constrained in (True, False):
            sfs, dt = run_torch(d, reqs, constrained)
            m = scorer.score(sfs, targets, shape["ranking"])
            m["ms_per_request"] = round(1000 * dt / max(1, len(reqs)), 2)
            entry["constrained" if constrained else "unconstrained"] = m
            if constrained:
                same = sum(1 for x, y in zip(sfs, c_sfs)
                           if [[p["id"] for p in s["products"]] for s in x["sections"]] ==
                           [[p["id"] for p in s["products"]] for s in y["sections"]])
                entry["same_products_as_c"] = same / max(1, len(reqs))
        entry["c_engine_same_users"] = scorer.score(c_sfs, targets, shape["ranking"])
        res["reference"][name] = entry
        log("%s (PyTorch, %d users): %s" % (name, len(reqs), json.dumps(entry)))
    if a.baselines:
        with open(a.baselines) as f:
            b = json.load(f)
        res["baselines"] = {k: v["test"] for k, v in b["systems"].items()}
        res["baseline_params"] = {k: v.get("params") for k, v in b["systems"].items()}
        res["published"] = b["published"]
        if "split" in b:
            res["split"] = b["split"]
    if a.sasrec and os.path.exists(a.sasrec):
        with open(a.sasrec) as f:
            s = json.load(f)
        res.setdefault("baselines", {})["SASRec (ours)"] = s["test"]
        res.setdefault("baseline_params", {})["SASRec (ours)"] = s.get("params")
    if a.baselines and system_ranks:
        bootstrap(res, system_ranks, b, users, a.resamples, a.seed, log)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print_table(res)
    return 0


def print_table(res, f=sys.stdout):
    print("| system (test, full ranking) | R@5 | N@5 | R@10 | N@10 | storefront hit | keyword "
          "coverage |", file=f)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |", file=f)
    rows = [("%s (served, C engine)" % k, v) for k, v in res["systems"].items()]
    rows += [(k, v) for k, v in res.get("baselines", {}).items()]
    rows += [("%s (published)" % k, v) for k, v in res.get("published", {}).items()]
    for name, m in rows:
        print("| %s | %.4f | %.4f | %.4f | %.4f | %s | %s |" % (
            name, m["recall@5"], m["ndcg@5"], m["recall@10"], m["ndcg@10"],
            "%.4f" % m["storefront_hit"] if "storefront_hit" in m else "",
            "%.4f" % m["keyword_coverage"] if "keyword_coverage" in m else ""), file=f)
    if "split" in res:
        sp = res["split"]
        print("\nTime split at %s (validation cut-off %s): %d test shoppers, %d cold-start targets "
              "(%.1f%%: never seen before the cut-off, misses for every system)" % (
                  sp["cutoff"], sp["valid_cutoff"], sp["test_shoppers"], sp["cold_test_targets"],
                  100 * sp["cold_test_targets"] / max(1, sp["test_shoppers"])), file=f)
        for k, v in res["systems"].items():
            if "cold_targets" in v:
                print("- %s: the cold-start target is on the page for %.1f%% of them; %.2f cold "
                      "products per page" % (k, 100 * v["cold_target_on_page"],
                                             v["cold_products_per_page"]), file=f)
        print("- ID-based baselines cannot rank an item never seen before the cut-off.", file=f)
    if "bootstrap" in res:
        print("\nPaired bootstrap (%s):\n" % res["bootstrap"]["method"], file=f)
        for row in format_rows(res["bootstrap"]["systems"]):
            print(row, file=f)
        if "note" in res["bootstrap"]:
            print("\n" + res["bootstrap"]["note"], file=f)


if __name__ == "__main__":
    sys.exit(main())

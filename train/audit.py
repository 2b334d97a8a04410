"""Bias and exposure audit (issue #16, docs/AUDIT.md): what the served cascade shows, to whom,
against the co-occurrence and popularity baselines on the same requests, and the price of the
ranker's calibration (kernels/calib.h) as a trade-off table.

    /usr/bin/python3 -m train.audit --shop build/demo/shop.json --bundle build/demo/bundle \\
        --catalog build/demo/catalog --ranker build/demo/models/student-ranker.json \\
        --strengths 0,0.1,0.3,0.5,0.9 --out build/demo/audit.json --markdown build/demo/audit.md
    /usr/bin/python3 -m train.audit --log audit.jsonl --catalog build/demo/catalog \\
        --bundle build/demo/bundle        # the served storefronts of a `vitrine serve --audit-log`

Requests: every test shopper of the shop (split "eval": its history before the held-out last
session, as train.evaluate and train.beauty_eval ask), one request each for the page shape the
ranker tuning chose (--ranker's "storefront", else 3 sections x 4 keywords x 4 products,
round-robin). The cascade answers through the C engine (`vitrine batch`, once per calibration
strength). What is audited per system and user is the list R@10 scores: the first 10 of the
page ranking (train.tune.page_ranking), topped up by popularity when the page is shorter (as
train.beauty_eval ranks); the baselines' lists are their own top 10 (co-occurrence topped up by
popularity, as train.evaluate does).

Numbers (per system):
- coverage: the share of catalogue products in at least one user's list;
- exposure Gini: over all catalogue products of their exposure, plain counts of lists they are in
  (0: every product as often; (n - 1) / n: one product takes all);
- top-1% share: the share of all exposure that goes to the 1% most interacted-with products,
  beside their share of the interactions (the observed item events of the shop): above it, the
  system amplifies popularity;
- miscalibration per segment (Steck 2018): the mean over the segment's users with a history of
  KL(p || (1 - a) q + a p), a = 0.01, p the distribution of the categories of the history's
  products, q that of the list's; over two groupings of products: the data's category (the
  synthetic shop's theme; Beauty's top-level category from the item metadata, --beauty-data) and
  the product's first semantic code (what the engine's calibration sees);
- segments: region; activity (the terciles of the history's product count over the test users);
  new (fewer than 3 products in the history) or returning; on Beauty, the user's dominant
  top-level category.
R@10 and N@10 on the held-out purchase (leave-one-out on Beauty). Without --bundle the baselines
only (the data's categories; no code0 grouping, no trade-off).

--log FILE: the storefronts a server wrote to its audit log (docs/SERVER.md): coverage, Gini and
the top-1% share over every logged page's products, overall and by the record's region and
activity segments; no miscalibration (the log keeps no history, by design), no baselines.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict

import numpy as np

from . import shop as shop_mod

ALPHA = 0.01   # Steck's smoothing of q toward p
K = 10         # the list audited: what R@10 counts
NEW_BELOW = 3  # a history with fewer products is "new"


# ---- the metrics --------------------------------------------------------------------------------
def gini(x):
    """Gini coefficient of non-negative amounts (0: equal; (n - 1) / n: one takes all)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def coverage(lists, n_products):
    """The share of the n_products catalogue products shown in at least one list."""
    return len({p for l in lists for p in l}) / n_products


def exposure(lists, n_products):
    """Plain exposure counts: how many lists each product is in."""
    from .beauty import popularity
    return popularity(lists, n_products)


def top_share(expo, interactions, frac=0.01):
    """(share of exposure, share of interactions) of the ceil(frac * n) products with the most
    interactions (ties: the lower index)."""
    n = len(interactions)
    top = sorted(range(n), key=lambda i: (-interactions[i], i))[:max(1, math.ceil(frac * n))]
    te, ti = float(np.sum(expo)), float(np.sum(interactions))
    return (float(np.sum(expo[top])) / te if te else 0.0,
            float(np.sum(np.asarray(interactions)[top])) / ti if ti else 0.0)


def distribution(cats):
    """Category -> share of the list of categories cats."""
    c = Counter(cats)
    n = sum(c.values())
    return {g: v / n for g, v in c.items()}


def kl(p, q, alpha=ALPHA):
    """KL(p || (1 - alpha) q + alpha p) over p's categories (Steck 2018's miscalibration)."""
    return sum(pg * math.log(pg / ((1 - alpha) * q.get(g, 0.0) + alpha * pg))
               for g, pg in p.items() if pg > 0)


def terciles(lengths):
    """The activity segment of each history length: its tercile over all of them."""
    a, b = np.quantile(np.asarray(lengths, dtype=np.float64), [1 / 3, 2 / 3])
    names = ("low (<= %g)" % a, "mid", "high (> %g)" % b)
    return [names[0] if x <= a else names[2] if x > b else names[1] for x in lengths]


def audit_lists(lists, users, n_products, interactions, groupings):
    """The audit of one system: lists[u] the products shown to user u, users[u] {"hist": product
    indices, "segments": {kind: name}}, groupings {name: category of each product}."""
    e = exposure(lists, n_products)
    te, ti = top_share(e, interactions)
    out = {"coverage": coverage(lists, n_products), "gini": gini(e),
           "top1_exposure_share": te, "top1_interaction_share": ti, "kl": {}}
    for gname, cat in groupings.items():
        per_user = []
        for l, u in zip(lists, users):
            if not u["hist"] or not l:
                per_user.append(None)
                continue
            per_user.append(kl(distribution([cat[p] for p in u["hist"]]),
                               distribution([cat[p] for p in l])))
        known = [x for x in per_user if x is not None]
        seg = defaultdict(lambda: defaultdict(list))
        for x, u in zip(per_user, users):
            if x is not None:
                for kind, name in u["segments"].items():
                    seg[kind][name].append(x)
        out["kl"][gname] = {
            "all": {"mean": float(np.mean(known)) if known else None, "users": len(known)},
            "segments": {kind: {name: {"mean": float(np.mean(v)), "users": len(v)}
                                for name, v in sorted(names.items())}
                         for kind, names in sorted(seg.items())}}
    return out


def ranking_metrics(lists, targets):
    """R@10 and N@10 of each user's held-out target in its list."""
    hits = [l[:K].index(t) if t in l[:K] else -1 for l, t in zip(lists, targets)]
    n = max(1, len(hits))
    return {"recall@10": sum(h >= 0 for h in hits) / n,
            "ndcg@10": sum(1 / math.log2(h + 2) for h in hits if h >= 0) / n}


# ---- the systems ------------------------------------------------------------------------------
def item_sequences(shop):
    """Each shopper's observed item events, consecutive repeats dropped (train.evaluate)."""
    out = []
    for s in shop["shoppers"]:
        items = []
        for e in shop_mod.observed(s):
            if e["item"] is not None and (not items or items[-1] != e["item"]):
                items.append(e["item"])
        out.append(items)
    return out


def popularity_order(interactions):
    return [int(i) for i in sorted(range(len(interactions)), key=lambda i: (-interactions[i], i))]


def top_up(top, pop):
    """The list topped up to K by the most popular products not in it."""
    return (list(top) + [p for p in pop[:K] if p not in top])[:K]


def cooc_lists(seqs, histories, n, pop, window, decay, direction):
    """The co-occurrence baseline ("customers also bought", train.beauty.cooccurrence's counts:
    item b following item a within `window` items of one shopper, "both": either way) ranked as
    train.evaluate.cooc_recommend does: a user's score of b sums decay^r C[h][b] over its history
    items h, newest first at rank r; the top 10 (ties: the lower index), topped up by
    popularity."""
    from .beauty import cooccurrence
    from .evaluate import cooc_recommend
    c = cooccurrence(seqs, n, window, direction)
    return [cooc_recommend(c, hist, pop, K, decay) for hist in histories]


def run_batch(vitrine, bundle, catalog, reqs, strength):
    """`vitrine batch` on the requests at this calibration strength -> storefronts."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in reqs))
        path = f.name
    try:
        p = subprocess.run([vitrine, "batch", "--bundle", bundle, "--catalog", catalog,
                            "--requests", path, "--calibration", repr(float(strength))],
                           capture_output=True, text=True,
                           env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    finally:
        os.unlink(path)
    if p.returncode != 0:
        raise RuntimeError("vitrine batch failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    out = [json.loads(line) for line in p.stdout.splitlines()]
    if len(out) != len(reqs):
        raise RuntimeError("vitrine batch answered %d of %d requests" % (len(out), len(reqs)))
    return out


def cascade_lists(storefronts, index, mode, pop):
    from .tune import page_ranking
    out = []
    for sf in storefronts:
        secs = [[{"index": index[p["id"]], "score": p["score"]} for p in s["products"]]
                for s in sf["sections"]]
        out.append(top_up(list(page_ranking(secs, mode))[:K], pop))
    return out


# ---- the shop's users and categories ------------------------------------------------------------
def beauty_categories(shop, data):
    """Each shop product's top-level Beauty category (train.beauty's item metadata)."""
    from .beauty import TOP_CATEGORIES, load
    items, _ = load(data)
    by_asin = {it["asin"]: it for it in items}
    out = []
    for p in shop["products"]:
        cats = by_asin[p["id"]]["categories"] if p["id"] in by_asin else []
        out.append(cats[0] if cats and cats[0] in TOP_CATEGORIES else "other")
    return out


def test_users(shop, shape, limit, data_categories):
    from .beauty_eval import test_cases
    reqs, targets = test_cases(shop, shape)
    evals = [s for s in shop["shoppers"] if s["split"] == "eval"]
    users = []
    for s in evals:
        hist, _, _ = shop_mod.holdout(s)
        items = [e["item"] for e in hist if e.get("item") is not None]
        seg = {"region": shop["regions"][s["region"]]["name"],
               "history": "new (< %d products)" % NEW_BELOW if len(items) < NEW_BELOW
               else "returning"}
        if data_categories is not None and items:
            seg["top category"] = Counter(data_categories[i] for i in items).most_common(1)[0][0]
        users.append({"hist": items, "segments": seg})
    for u, a in zip(users, terciles([len(u["hist"]) for u in users])):
        u["segments"]["activity"] = a
    if limit:  # an even subsample, the same for every system
        step = max(1, len(users) // limit)
        keep = list(range(0, len(users), step))[:limit]
        reqs, targets, users = ([x[i] for i in keep] for x in (reqs, targets, users))
    return reqs, targets, users


# ---- tables ------------------------------------------------------------------------------------
def _f(x, d=4):
    return "-" if x is None else ("%.*f" % (d, x))


def markdown(res):
    """The audit table (systems) and the trade-off table (strengths)."""
    g0, gs = res["groupings"][0], res["groupings"]
    lines = ["Audit (%s; %d test users; list = the %d products R@10 scores; KL grouping: %s)"
             % (res["shop"], res["users"], K, ", ".join(gs)), "",
             "| system | R@10 | N@10 | coverage | exposure Gini | top-1%% exposure (interactions "
             "%.3f) | %s |" % (res["top1_interaction_share"],
                               " | ".join("mean KL (%s)" % g for g in gs)),
             "| --- " * (6 + len(gs)) + "|"]
    for name, s in res["systems"].items():
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            name, _f(s["recall@10"]), _f(s["ndcg@10"]), _f(s["coverage"]), _f(s["gini"]),
            _f(s["top1_exposure_share"]),
            " | ".join(_f(s["kl"][g]["all"]["mean"]) for g in gs)))
    lines += ["", "Miscalibration by segment, mean KL (%s) [users]" % g0, ""]
    names = list(res["systems"])
    lines += ["| segment | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    first = res["systems"][names[0]]["kl"][g0]["segments"]
    for kind, segs in first.items():
        for seg, v in segs.items():
            cells = [_f(res["systems"][n]["kl"][g0]["segments"].get(kind, {}).get(seg, {})
                        .get("mean")) for n in names]
            lines.append("| %s: %s [%d] | %s |" % (kind, seg, v["users"], " | ".join(cells)))
    if res.get("tradeoff"):
        lines += ["", "Calibration trade-off (cascade, `vitrine batch --calibration L`)", "",
                  "| L | R@10 | N@10 | coverage | Gini | top-1%% exposure | %s |"
                  % " | ".join("mean KL (%s)" % g for g in gs), "| --- " * (6 + len(gs)) + "|"]
        for t in res["tradeoff"]:
            lines.append("| %g | %s | %s | %s | %s | %s | %s |" % (
                t["strength"], _f(t["recall@10"]), _f(t["ndcg@10"]), _f(t["coverage"]),
                _f(t["gini"]), _f(t["top1_exposure_share"]),
                " | ".join(_f(t["kl"][g]["all"]["mean"]) for g in gs)))
    return "\n".join(lines) + "\n"


# ---- the two modes ------------------------------------------------------------------------------
def audit_requests(a, log):
    from .bundle import load_bundle, load_catalog
    shop = shop_mod.load(a.shop)
    n = len(shop["products"])
    seqs = item_sequences(shop)
    interactions = exposure(seqs, n)  # the observed item events of each product
    pop = popularity_order(interactions)
    catalog = None  # without a bundle: the baselines only
    if a.bundle:
        model, tables, manifest = load_bundle(a.bundle)
        catalog, _ = load_catalog(a.catalog, tables, model.cfg, manifest["model_version"])
        index = {pid: i for i, pid in enumerate(catalog.ids)}
        if [p["id"] for p in shop["products"]] != list(catalog.ids):
            raise ValueError("%s: its products are not the catalogue's (%s)" % (a.shop, a.catalog))
    shape = {"sections": 3, "keywords": 4, "products": 4, "ranking": "round-robin"}
    if a.ranker:
        with open(a.ranker) as f:
            shape = json.load(f)["storefront"]
    groupings, data_cats = {}, None
    if a.beauty_data:
        data_cats = beauty_categories(shop, a.beauty_data)
        groupings["category"] = data_cats
    else:
        groupings["theme"] = [p["theme"] for p in shop["products"]]
    if catalog is not None:
        groupings["code0"] = [int(c[0]) for c in catalog.codes]
    reqs, targets, users = test_users(shop, shape, a.limit, data_cats)
    hists = [u["hist"] for u in users]
    log("audit: %d users, shape %s" % (len(users), json.dumps(shape)))
    res = {"shop": a.shop, "users": len(users), "storefront": shape,
           "groupings": list(groupings), "alpha": ALPHA, "list": K,
           "exposure": "plain counts of the lists a product is in",
           "top1_interaction_share": top_share(np.zeros(n), interactions)[1],
           "systems": {}, "tradeoff": []}

    def add(name, lists):
        s = ranking_metrics(lists, targets)
        s.update(audit_lists(lists, users, n, interactions, groupings))
        log("%s: R@10 %.4f N@10 %.4f coverage %.4f gini %.4f top1 %.4f" % (
            name, s["recall@10"], s["ndcg@10"], s["coverage"], s["gini"],
            s["top1_exposure_share"]))
        return s

    strengths = [float(x) for x in a.strengths.split(",")] if a.strengths else [0.0]
    if 0.0 not in strengths:
        strengths = [0.0] + strengths
    for lam in strengths if catalog is not None else []:
        sfs = run_batch(a.vitrine, a.bundle, a.catalog, reqs, lam)
        s = add("cascade (calibration %g)" % lam, cascade_lists(sfs, index, shape["ranking"], pop))
        if lam == 0.0:
            res["systems"]["cascade"] = s
        res["tradeoff"].append(dict(s, strength=lam))
    window, decay, direction = a.cooc.split(",")
    res["systems"]["co-occurrence"] = add("co-occurrence", cooc_lists(
        seqs, hists, n, pop, int(window), float(decay), direction))
    res["systems"]["co-occurrence"]["params"] = {"window": int(window), "decay": float(decay),
                                                 "direction": direction}
    res["systems"]["popularity"] = add("popularity", [pop[:K]] * len(users))
    return res


def audit_log(a, log):
    from .bundle import load_bundle, load_catalog
    model, tables, manifest = load_bundle(a.bundle)
    catalog, _ = load_catalog(a.catalog, tables, model.cfg, manifest["model_version"])
    n = len(catalog.ids)
    index = {pid: i for i, pid in enumerate(catalog.ids)}
    interactions = np.asarray(catalog.popularity, dtype=np.float64)
    pages, segs = [], []
    with open(a.log) as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                page = [index[p["id"]] for s in r["sections"] for p in s["products"]]
                seg = r["segment"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError("%s:%d: not an audit record the catalogue knows (%s)"
                                 % (a.log, ln, e)) from None
            pages.append(page)
            segs.append({"region": seg["region"], "activity": seg["activity"]})

    def summary(ps):
        e = exposure(ps, n)
        te, ti = top_share(e, interactions)
        return {"pages": len(ps), "coverage": coverage(ps, n), "gini": gini(e),
                "top1_exposure_share": te, "top1_interaction_share": ti}
    res = {"log": a.log, "exposure": "plain counts of the logged pages a product is on",
           "interactions": "the catalogue's popularity", "all": summary(pages), "segments": {}}
    for kind in ("region", "activity"):
        groups = defaultdict(list)
        for p, s in zip(pages, segs):
            groups[s[kind]].append(p)
        res["segments"][kind] = {k: summary(v) for k, v in sorted(groups.items())}
    log("log: %d pages, coverage %.4f gini %.4f" % (len(pages), res["all"]["coverage"],
                                                    res["all"]["gini"]))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", help="the shop whose test shoppers make the requests")
    ap.add_argument("--log", help="an audit log of `vitrine serve` instead of requests")
    ap.add_argument("--bundle", help="the cascade's bundle (without one, with --shop: the "
                    "baselines only)")
    ap.add_argument("--catalog")
    ap.add_argument("--ranker", help="train.tune's ranker.json: the page shape and ranking")
    ap.add_argument("--vitrine", default="build/vitrine")
    ap.add_argument("--strengths", default="0,0.1,0.3,0.5,0.9",
                    help="calibration strengths of the trade-off table")
    ap.add_argument("--limit", type=int, default=0, help="an even subsample of the test users")
    ap.add_argument("--cooc", default="8,0.8,forward", help="co-occurrence WINDOW,DECAY,DIRECTION "
                    "(train.evaluate's; Beauty: its baselines.json's tuned ones)")
    ap.add_argument("--cooc-from", help="train.beauty's baselines.json: its tuned co-occurrence "
                    "parameters instead of --cooc")
    ap.add_argument("--beauty-data", help="the amazon-beauty folder: categories from its items")
    ap.add_argument("--out", help="JSON results")
    ap.add_argument("--markdown", help="the tables as Markdown")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if bool(a.shop) == bool(a.log):
        ap.error("give --shop (requests) or --log (an audit log), one of them")
    if bool(a.bundle) != bool(a.catalog) or (a.log and not a.bundle):
        ap.error("--bundle and --catalog go together (--log needs both)")
    try:
        if a.cooc_from:
            with open(a.cooc_from) as f:
                p = json.load(f)["systems"]["cooccurrence"]["params"]
            a.cooc = "%d,%r,%s" % (p["window"], float(p["decay"]), p["direction"])
        res = audit_log(a, log) if a.log else audit_requests(a, log)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print("train.audit: %s" % e, file=sys.stderr)
        return 2
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    text = json.dumps(res, indent=1) if a.log else markdown(res)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the learned product ranker (issue #15) on validation shoppers: a linear model or one ReLU
layer over the features the page step computes for each candidate (train/cascade.py
RANKER_FEATURES), with a listwise loss; the result goes into a bundle's manifest "ranker".

    /usr/bin/python3 -m train.ranker --checkpoint build/demo/models/student.pt \\
        --shop build/demo/shop.json --tuned build/demo/models/student-ranker.json \\
        --out build/demo/models/learned-ranker.json

--tuned is train.tune's ranker.json: its page shape and page ranking are the ones trained for, its
recency decay weighs the history here too, and its weights' mix is the comparison. The output has
ranker.json's form ("ranker", "storefront", valid_*), so `train.export --ranker` and
`train.beauty_eval` take it unchanged. `python -m train.ranker evaluate --help`: Beauty's test
users through the C engine, with paired bootstrap intervals between systems (evaluate_main).

1. Every sampled validation shopper's history (the held-out target's session excluded) is decoded
   once by the reference cascade; each section's candidates (what retrieval returns, before the
   de-duplication against earlier sections) and their features are kept, with the target.
2. A seeded part of the shoppers (--holdout) is set aside for model selection and early stopping.
3. Loss, per shopper: softmax cross-entropy over every candidate of the page (all sections
   together, as the page is ranked by score across sections), the target's rows the positives:
   -log(sum over positives of exp s) + log(sum over all of exp s). Shoppers whose target no
   keyword retrieved carry no gradient and are left out.
4. Features are standardised for training; the standardisation is folded into the exported
   weights, so the engine computes the raw features. cooc_half (cooc_sat = cooc / (cooc + half))
   is the median positive co-occurrence of the training candidates.
5. Each candidate model (--hidden: 0 = linear, starting from the tuned mix, which it can express
   exactly; H = one ReLU layer of H units, from a random start) is trained with Adam,
   evaluated after every epoch on the held-out shoppers as the engine would serve it (its exported
   float32 weights, LearnedRanker's arithmetic, the page assembled section by section and ranked
   as train.tune ranks it); the best epoch of the best model by Recall@10, then NDCG@10, wins.
"""
import argparse
import itertools
import json
import sys
import time

import numpy as np
import torch

from . import shop as shop_mod
from .beauty_eval import ranking_metrics
from .cascade import RANKER_FEATURES, Cascade, LearnedRanker
from .cascade_batched import BatchedCascade
from .data import Catalog, Tables, make_request
from .train import load_checkpoint
from .tune import GRID, WIDE_GRID, page_ranking, sample_shoppers

F = len(RANKER_FEATURES)


def placeholder(decay, cooc_half=1.0):
    """A learned ranker that scores 0: the cascade computes the features with it."""
    return {"kind": "learned", "decay": decay, "features": list(RANKER_FEATURES),
            "cooc_half": cooc_half, "hidden": 0, "w1": [], "b1": [], "w2": [0.0] * F, "b2": 0.0}


def collect(cascade, shop, catalog, shape, limit, log=None, batch=32):
    """-> [(sections [(product indices, X (n, F))], target)] for the sampled validation shoppers.
    cascade: a Cascade, or a BatchedCascade (its beam searches batch shoppers together; the
    features are the reference's assembly's; keyword and theme scores differ from the
    reference's by float rounding)."""
    out, t0 = [], time.time()
    users = sample_shoppers(shop, "valid", limit)
    for b0 in range(0, len(users), batch):
        reqs, targets = [], []
        for s in users[b0:b0 + batch]:
            hist, now, last = shop_mod.holdout(s)
            reqs.append(make_request(hist, now, shop["regions"][s["region"]]["name"], catalog,
                                     shape["sections"], shape["keywords"], shape["products"]))
            targets.append(last["purchase"])
        got = []
        if isinstance(cascade, Cascade):
            for r in reqs:
                cascade.recommend(r, features=got)
        else:
            cascade.storefronts(reqs, features=got)
        out.extend(zip(got, targets))
        if log:
            log("  collected %d/%d shoppers (%.0f s)" % (len(out), len(users), time.time() - t0))
    return out


def with_cooc_half(data, half):
    """Recomputes cooc_sat for another cooc_half, as the engine computes it (float32)."""
    h = np.float32(half)
    for secs, _ in data:
        for _, X in secs:
            X[:, 3] = X[:, 2] / (X[:, 2] + h)


def page_metrics(data, score_fn, n_products, ranking):
    """Recall@10 and NDCG@10 of the pages a score function assembles (the engine's pick: each
    section's best n not yet shown, by score then lower product index; then the page ranking;
    a target not on the page counts as a miss)."""
    ranks = []
    n_cat = 1 + max((int(i.max()) for secs, _ in data for i, _ in secs if len(i)), default=0)
    shown = np.zeros(n_cat, dtype=bool)
    for secs, target in data:
        page, on_page = [], []
        for idx, X in secs:
            keep = ~shown[idx]
            ids, s = idx[keep], score_fn(X[keep])
            if len(s) > n_products:  # only what can be among the best n (ties at the edge kept)
                near = s >= np.partition(s, len(s) - n_products)[len(s) - n_products]
                ids, s = ids[near], s[near]
            order = np.lexsort((ids, -s))[:n_products]
            page.append([{"index": int(ids[o]), "score": float(s[o])} for o in order])
            shown[ids[order]] = True
            on_page.extend(ids[order].tolist())
        shown[on_page] = False
        ranked = page_ranking(page, ranking)
        ranks.append(ranked.index(target) if target in ranked else len(ranked) + 10)
    m = ranking_metrics(ranks)
    return m["recall@10"], m["ndcg@10"]


def mix_score(ranker):
    """The weights' mix on the features (dot, again, cooc, log_pop), as Cascade.pick sums it."""
    wa, wc, wp = (np.float32(ranker[k]) for k in ("again", "cooc", "popularity"))

    def fn(X):
        s = X[:, 0] + wa * X[:, 1]
        s = s + wc * X[:, 2]
        return s + wp * X[:, 4]
    return fn


def tune_mix(data, shape, decay, grid):
    """train.tune's search on the collected shoppers (all of them): the weights' mix with the best
    Recall@10, then NDCG@10 -> ((recall, ndcg), ranker)."""
    best = None
    for wa, wc, wp in itertools.product(grid["again"], grid["cooc"], grid["popularity"]):
        r = {"again": wa, "cooc": wc, "popularity": wp, "decay": decay}
        m = page_metrics(data, mix_score(r), shape["products"], shape["ranking"])
        if best is None or m > best[0]:
            best = (m, r)
    return best


class Net(torch.nn.Module):
    """keep: a 0/1 mask over RANKER_FEATURES (None: all); a dropped feature never reaches the
    net, and its exported weights are exactly 0, so the engine's raw value of it is ignored."""

    def __init__(self, hidden, keep=None):
        super().__init__()
        self.hidden = hidden
        self.keep = torch.ones(F) if keep is None else torch.as_tensor(keep, dtype=torch.float32)
        if hidden:
            self.l1 = torch.nn.Linear(F, hidden)
            self.l2 = torch.nn.Linear(hidden, 1)
        else:
            self.l2 = torch.nn.Linear(F, 1)

    def forward(self, x):
        x = x * self.keep
        if self.hidden:
            x = torch.relu(self.l1(x))
        return self.l2(x).squeeze(-1)

    def export(self, mean, std, cooc_half, decay):
        """The manifest "ranker" of this net on raw features: x_std = (x - mean) / std folded
        into the first layer (w' = w / std, b' = b - w' . mean)."""
        mean, std = mean.astype(np.float64), std.astype(np.float64)
        first = self.l1 if self.hidden else self.l2
        w = first.weight.detach().double().numpy() * self.keep.double().numpy() / std
        b = first.bias.detach().double().numpy() - w @ mean
        d = placeholder(decay, float(np.float32(cooc_half)))
        f32 = lambda a: [float(np.float32(v)) for v in np.ravel(a)]  # noqa: E731
        if self.hidden:
            d.update(hidden=self.hidden, w1=[f32(row) for row in w], b1=f32(b),
                     w2=f32(self.l2.weight.detach().numpy()),
                     b2=float(np.float32(self.l2.bias.item())))
        else:
            d.update(w2=f32(w[0]), b2=float(np.float32(b[0])))
        return d


def tensors(data, mean, std):
    """Training shoppers with a positive -> (X standardised, positive mask, shopper id per row)."""
    xs, pos, seg, u = [], [], [], 0
    for secs, target in data:
        idx = np.concatenate([i for i, _ in secs]) if secs else np.zeros(0, np.int64)
        if not (idx == target).any():
            continue
        X = np.concatenate([x for _, x in secs])
        xs.append((X - mean) / std)
        pos.append(idx == target)
        seg.append(np.full(len(idx), u))
        u += 1
    if not u:
        raise ValueError("no training shopper has its target among its candidates: nothing to "
                         "learn from (more shoppers, or more sections and keywords per page)")
    return (torch.as_tensor(np.concatenate(xs), dtype=torch.float32),
            torch.as_tensor(np.concatenate(pos)), torch.as_tensor(np.concatenate(seg)), u)


def segment_logsumexp(s, seg, n):
    m = torch.full((n,), -1e30).scatter_reduce(0, seg, s.detach(), "amax")
    e = torch.zeros(n).index_add(0, seg, torch.exp(s - m[seg]))
    return torch.log(e) + m


def train_one(hidden, train_t, valid, mean, std, cooc_half, decay, shape, epochs, lr, log,
              mix=None, seed=0, keep=None):
    """-> ((recall, ndcg), exported ranker, epoch) of the best epoch on the held-out shoppers.
    mix (linear only): start from the weights' mix (epoch -1 is the mix itself, exactly: its
    terms in its order, the others weighted 0), so training departs from it only where the
    held-out shoppers say it gains."""
    torch.manual_seed(seed)
    X, pos, seg, n_users = train_t
    net = Net(hidden, keep)
    if mix is not None and not hidden:
        w = np.zeros(F)
        for name, key in (("dot", None), ("again", "again"), ("cooc", "cooc"),
                          ("log_pop", "popularity")):
            w[RANKER_FEATURES.index(name)] = 1.0 if key is None else float(mix[key])
        if keep is not None:
            w = w * np.asarray(keep, np.float64)
        with torch.no_grad():  # standardised: w_std = w std, b_std = w . mean (b folds to 0)
            net.l2.weight.copy_(torch.as_tensor(w * std).view(1, F))
            net.l2.bias.fill_(float(w @ mean.astype(np.float64)))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    # users in minibatches (rows of a user are contiguous)
    starts = np.searchsorted(seg.numpy(), np.arange(n_users + 1))
    rng = np.random.default_rng(seed)
    best = None
    per_batch = 64
    if mix is not None and not hidden:
        exported = net.export(mean, std, cooc_half, decay)
        m = page_metrics(valid, LearnedRanker(exported).score, shape["products"], shape["ranking"])
        log("  hidden 0 from the mix: held-out recall@10 %.4f ndcg@10 %.4f" % m)
        best = (m, exported, -1)
    for ep in range(epochs):
        order = rng.permutation(n_users)
        total = 0.0
        for b0 in range(0, n_users, per_batch):
            us = order[b0:b0 + per_batch]
            rows = np.concatenate([np.arange(starts[x], starts[x + 1]) for x in us])
            rid = torch.as_tensor(np.repeat(np.arange(len(us)), starts[us + 1] - starts[us]))
            s = net(X[rows])
            p = pos[rows]
            loss = (segment_logsumexp(s, rid, len(us)) -
                    segment_logsumexp(s.masked_fill(~p, -1e30), rid, len(us))).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(us)
        exported = net.export(mean, std, cooc_half, decay)
        lr_ = LearnedRanker(exported)
        rec, nd = page_metrics(valid, lr_.score, shape["products"], shape["ranking"])
        log("  hidden %d epoch %d: loss %.4f held-out recall@10 %.4f ndcg@10 %.4f"
            % (hidden, ep, total / max(1, n_users), rec, nd))
        if best is None or (rec, nd) > best[0]:
            best = ((rec, nd), exported, ep)
        elif ep - best[2] >= 4:  # patience
            break
    return best


def mix_weighs_dropped(mix, drop, where, log):
    """True (and says so) when the weights' mix, the linear ranker's start and comparison, uses a
    feature --drop takes away: the ablation needs the mix tuned without it."""
    terms = {"dot": 1.0, "again": mix["again"], "cooc": mix["cooc"], "log_pop": mix["popularity"]}
    used = [f for f in drop if terms.get(f, 0.0)]
    if used:
        log("train.ranker: --drop: the tuned mix (%s) weighs %s; give it a mix tuned without %s"
            % (where, ", ".join(used), "them" if len(used) > 1 else "it"))
    return bool(used)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--shop", required=True, help="the shop whose validation shoppers train it")
    ap.add_argument("--tuned", required=True, help="train.tune's ranker.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, help="a seeded sample of this many validation shoppers")
    ap.add_argument("--holdout", type=float, default=0.25, help="part kept for selection")
    ap.add_argument("--hidden", default="0,16", help="models to try: 0 = linear, H = H ReLU units")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batched", action="store_true", help="decode with the batched cascade "
                    "(train/cascade_batched.py: faster; the same candidates, scores to float "
                    "rounding)")
    ap.add_argument("--cache", help="keep the collected features here (.npz) and reuse them "
                    "(for the same checkpoint, shop, page, decay and --limit)")
    ap.add_argument("--tune-mix", metavar="OUT", help="also tune the weights' mix on the same "
                    "shoppers (train.tune's grid and rule, --tuned's decay and page) and write "
                    "its ranker.json here; it is then the comparison")
    ap.add_argument("--wide-grid", action="store_true", help="train.tune's grid for large "
                    "catalogues (with --tune-mix)")
    ap.add_argument("--drop", default="", help="features the ranker may not use, comma-separated "
                    "(of: %s); their weights are exported as 0. The ablation without "
                    "co-occurrence drops cooc,cooc_sat (with --tuned the mix tuned without it)"
                    % ", ".join(RANKER_FEATURES))
    a = ap.parse_args(argv)
    drop = [d for d in a.drop.split(",") if d]
    unknown = sorted(set(drop) - set(RANKER_FEATURES))
    if unknown:
        ap.error("--drop: no ranker feature %s (the features: %s)"
                 % (", ".join(unknown), ", ".join(RANKER_FEATURES)))
    keep = [0.0 if f in drop else 1.0 for f in RANKER_FEATURES] if drop else None
    torch.set_num_threads(a.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with open(a.tuned) as f:
        tuned = json.load(f)
    shape, decay = tuned["storefront"], tuned["ranker"].get("decay", 0.8)
    if not a.tune_mix and mix_weighs_dropped(tuned["ranker"], drop, a.tuned, log):
        return 2
    meta = {"checkpoint": a.checkpoint, "shop": a.shop, "storefront": shape, "decay": decay,
            "limit": a.limit, "batched": a.batched}
    data = load_cache(a.cache, meta, log) if a.cache else None
    if data is None:
        model, _ = load_checkpoint(a.checkpoint)
        shop = shop_mod.load(a.shop)
        tables = Tables.from_shop(shop)
        catalog = Catalog.from_shop(shop, model.cfg.code_levels, model.cfg.codebook)
        cascade = (BatchedCascade if a.batched else Cascade)(model, tables, catalog,
                                                             ranker=placeholder(decay))
        data = collect(cascade, shop, catalog, shape, a.limit, log)
        if a.cache:
            save_cache(a.cache, data, meta)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(data))
    n_hold = max(1, int(round(a.holdout * len(data))))
    valid = [data[i] for i in sorted(perm[:n_hold])]
    train = [data[i] for i in sorted(perm[n_hold:])]
    allx = np.concatenate([x for secs, _ in train for _, x in secs])
    pos_cooc = allx[:, 2][allx[:, 2] > 0]
    cooc_half = float(np.float32(np.median(pos_cooc))) if len(pos_cooc) else 1.0
    for part in (train, valid):
        with_cooc_half(part, cooc_half)
    allx = np.concatenate([x for secs, _ in train for _, x in secs])
    mean, std = allx.mean(0), allx.std(0)
    std[std < 1e-6] = 1.0
    train_t = tensors(train, mean, std)
    covered = train_t[3] / max(1, len(train))
    log("%d training shoppers (%.1f%% with the target among the candidates), %d held out; "
        "%d candidate rows; cooc_half %.4g" % (len(train), 100 * covered, len(valid),
                                                len(allx), cooc_half))
    mix_ranker = tuned["ranker"]
    if a.tune_mix:
        (rec, nd), mix_ranker = tune_mix(data, shape, decay, WIDE_GRID if a.wide_grid else GRID)
        with open(a.tune_mix, "w") as f:
            json.dump({"ranker": mix_ranker, "storefront": shape, "valid_shoppers": len(data),
                       "valid_recall@10": rec, "valid_ndcg@10": nd,
                       "tuned_by": "train.ranker --tune-mix"}, f, indent=1)
        log("tuned mix on all %d shoppers: %s recall@10 %.4f ndcg@10 %.4f"
            % (len(data), json.dumps(mix_ranker), rec, nd))
        if mix_weighs_dropped(mix_ranker, drop, a.tuned, log):  # (--tuned's was checked above)
            return 2
    mix = page_metrics(valid, mix_score(mix_ranker), shape["products"], shape["ranking"])
    head = page_metrics(valid, lambda X: X[:, 0], shape["products"], shape["ranking"])
    log("held out: tuned mix recall@10 %.4f ndcg@10 %.4f; retrieval head alone %.4f %.4f"
        % (mix + head))
    results = {}
    for h in (int(x) for x in a.hidden.split(",")):
        results[h] = train_one(h, train_t, valid, mean, std, cooc_half, decay, shape, a.epochs,
                               a.lr, log, mix_ranker, keep=keep)
    best_h = max(results, key=lambda h: results[h][0])
    (rec, nd), ranker, ep = results[best_h]
    out = {"ranker": ranker, "storefront": shape,
           "valid_shoppers": len(data), "valid_training_shoppers": len(train),
           "valid_heldout_shoppers": len(valid),
           "valid_recall@10": rec, "valid_ndcg@10": nd,
           "valid_tuned_mix_recall@10": mix[0], "valid_tuned_mix_ndcg@10": mix[1],
           "valid_retrieval_head_recall@10": head[0],
           "models": {str(h): {"recall@10": r[0][0], "ndcg@10": r[0][1], "epoch": r[2]}
                      for h, r in results.items()},
           "tuned_from": a.tuned, "dropped_features": drop}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    log("chosen: hidden %d (epoch %d): held-out recall@10 %.4f ndcg@10 %.4f (tuned mix %.4f "
        "%.4f)" % (best_h, ep, rec, nd, mix[0], mix[1]))
    return 0


def evaluate_main(argv):
    """`python -m train.ranker evaluate`: Beauty's test users through the C engine for several
    systems (train.beauty_eval's harness: its test cases, `vitrine batch`, its Scorer), per-user
    ranks kept, and paired bootstrap 95% intervals of each system's difference from the first;
    with --beauty-data also the tuned co-occurrence baseline's per-user ranks (train.beauty's
    baseline, recomputed with baselines.json's parameters) as a system to compare with."""
    from .beauty_eval import Scorer, run_c, test_cases
    ap = argparse.ArgumentParser(prog="train.ranker evaluate")
    ap.add_argument("--shop", required=True, help="the test shop")
    ap.add_argument("--vitrine", default="build/vitrine")
    ap.add_argument("--system", action="append", required=True, help="NAME=DIR (bundle, "
                    "catalog, ranker.json); the first is compared with the others")
    ap.add_argument("--baselines", help="train.beauty's baselines.json")
    ap.add_argument("--beauty-data", help="the amazon-beauty folder: per-user co-occurrence ranks")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--sample", type=int, help="a seeded random sample of this many test users "
                    "(the protocol is every user)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    shop = shop_mod.load(a.shop)
    scorer = Scorer(shop)
    ranks, res, keep = {}, {"systems": {}, "differences": {}}, None
    for name, d in (x.split("=", 1) for x in a.system):
        with open(d + "/ranker.json") as f:
            shape = json.load(f)["storefront"]
        reqs, targets = test_cases(shop, shape)
        if a.sample and a.sample < len(reqs):
            keep = sorted(np.random.default_rng(0).choice(len(reqs), a.sample, replace=False))
            reqs, targets = [reqs[i] for i in keep], [targets[i] for i in keep]
        sfs, dt = run_c(a.vitrine, d, reqs)
        ranks[name] = [scorer.rank(page_ranking([[{"index": scorer.ids[p["id"]],
                                                   "score": p["score"]} for p in s["products"]]
                                                 for s in sf["sections"]], shape["ranking"]), t)
                       for sf, t in zip(sfs, targets)]
        res["systems"][name] = dict(scorer.score(sfs, targets, shape["ranking"]),
                                    requests_per_s=round(len(reqs) / dt, 1))
        log("%s: %s" % (name, json.dumps(res["systems"][name])))
    if a.beauty_data and a.baselines:
        ranks["cooccurrence"] = cooc_ranks(a.beauty_data, a.baselines, targets, keep)
        res["systems"]["cooccurrence"] = ranking_metrics(ranks["cooccurrence"])
        log("cooccurrence: %s" % json.dumps(res["systems"]["cooccurrence"]))
    if a.baselines:
        with open(a.baselines) as f:
            res["baselines"] = {k: v["test"] for k, v in json.load(f)["systems"].items()}
    first = next(iter(ranks))
    rng = np.random.default_rng(0)
    n = len(ranks[first])
    idx = rng.integers(0, n, size=(a.boot, n))
    per_user = lambda r: {"recall@10": (np.asarray(r) < 10).astype(float),  # noqa: E731
                          "ndcg@10": np.where(np.asarray(r) < 10,
                                              1 / np.log2(np.asarray(r) + 2.0), 0.0)}
    mine = per_user(ranks[first])
    for other in ranks:
        if other == first:
            continue
        theirs, d = per_user(ranks[other]), {}
        for m in ("recall@10", "ndcg@10"):
            diff = mine[m] - theirs[m]
            boot = diff[idx].mean(1)
            d[m] = {"difference": float(diff.mean()),
                    "relative": float(diff.mean() / max(1e-12, theirs[m].mean())),
                    "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}
        res["differences"]["%s - %s" % (first, other)] = d
        log("%s - %s: %s" % (first, other, json.dumps(d)))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


def cooc_ranks(data, baselines, targets, keep=None):
    """Per-user test ranks of train.beauty's tuned co-occurrence baseline (its eval_cooc, with the
    ranks kept), in train.beauty's user order, which must be the test shop's (keep: only those
    users)."""
    from . import beauty
    with open(baselines) as f:
        p = json.load(f)["systems"]["cooccurrence"]["params"]
    items, seqs = beauty.load(data)
    _, valid, test = beauty.split(seqs)
    sample = test if keep is None else [test[i] for i in keep]
    if [t for _, t in sample] != list(targets):
        raise ValueError("train.beauty's test users are not the test shop's, in order")
    train_plus = [h + [t] for h, t in valid]
    n = len(items)
    c = beauty.cooccurrence(train_plus, n, p["window"], p["direction"])
    pop = beauty.popularity(train_plus, n)
    out = []
    for hist, target in sample:
        score = np.zeros(n)
        for r, h in enumerate(reversed(hist)):
            score += (p["decay"] ** r) * c[h]
        out.append(beauty.rank_of(score, target, pop))
    return out


def save_cache(path, data, meta):
    """The collected candidates, with meta: what they were collected from (load_cache reuses
    them only for the same)."""
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for u, (secs, target) in enumerate(data):
        arrays["t%d" % u] = np.array([target, len(secs)])
        for s, (idx, X) in enumerate(secs):
            arrays["i%d_%d" % (u, s)], arrays["x%d_%d" % (u, s)] = idx, X
    np.savez(path, n=np.array([len(data)]), **arrays)


def load_cache(path, meta, log=None):
    """-> the candidates saved at path for these inputs (meta), or None: no file, or one from
    other inputs (another checkpoint, shop, page shape, decay or sample)."""
    try:
        z = np.load(path)
    except FileNotFoundError:
        return None
    if "meta" not in z.files or json.loads(str(z["meta"])) != json.loads(json.dumps(meta)):
        if log:
            log("%s holds candidates of other inputs: collecting again" % path)
        return None
    out = []
    for u in range(int(z["n"][0])):
        target, ns = (int(v) for v in z["t%d" % u])
        out.append(([(z["i%d_%d" % (u, s)], z["x%d_%d" % (u, s)].copy()) for s in range(ns)],
                    target))
    return out


if __name__ == "__main__":
    sys.exit(evaluate_main(sys.argv[2:]) if sys.argv[1:2] == ["evaluate"] else main())

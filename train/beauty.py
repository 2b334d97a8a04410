"""Amazon Beauty 5-core: loading, keyword phrases, mined themes, the leave-one-out split and a
global time split, and the baselines of each protocol.

    /usr/bin/python3 -m train.beauty --data ../shared/data/amazon-beauty --out build/beauty
    /usr/bin/python3 -m train.beauty --data ../shared/data/amazon-beauty --out build/beauty/time \
        --split time [--cutoff YYYY-MM-DD] [--valid-cutoff YYYY-MM-DD] --shops

The data directory is an argument; where it is absent the command says so and exits 0 (tests skip).

Protocol (as SASRec, S3-Rec and TIGER report it): per user, ordered by time (ties keep the file's
order), the last item is the test target and the one before it the validation target; a model sees
the items before its target; every one of the 12,101 items is ranked (no sampled negatives, no
filtering of items the user has seen); Recall@K = hit rate of the target in the top K, NDCG@K =
1 / log2(rank + 2) for a hit at 0-based rank. Baselines here:
- popularity: items by the number of training interactions;
- co-occurrence ("customers also bought"): C[a][b] counts b at most `window` positions after a
  (direction "forward") or on either side ("both") in training sequences; a user's score for b is
  sum over history items h at recency rank r (newest 0) of decay^r C[h][b]; ties and the rest of
  the ranking by popularity. Window, decay and direction are chosen on the validation targets.
Training sequences never contain a validation or test target: for validation the history ends
before the validation item, for test before the test item; statistics for the test ranking are
recomputed with the validation item added (the standard practice).

Time split (--split time): a global cut-off day T (default: the day that leaves about 10% of all
interactions on or after it, 2014-05-13 on this data) and a validation cut-off V < T (default: the
same rule on the interactions before T, 2014-03-13). The model, the validation statistics and the
baselines' tuning see only interactions before V; validation targets are each shopper's first item
in [V, T); test histories and statistics are every interaction before T, the targets each
shopper's first item on or after T (shoppers with no interaction before the cut-off are counted,
not evaluated). Only items seen before the cut-off are ranked: a target never seen before it is a
cold-start miss for every system, and counted apart.
"""
import argparse
import calendar
import csv
import gzip
import html
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict

import numpy as np

TOP_CATEGORIES = ("Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body",
                  "Fragrance")
KS = (5, 10)
MISS = 10 ** 9  # the rank of a target not ranked at all (a cold-start item): a miss at any K


def _words(text):
    """Lower-case alphanumeric words of a phrase ("Creams & Moisturizers" -> creams moisturizers)."""
    return re.findall(r"[a-z0-9]+", html.unescape(text).lower())


def load(path):
    """-> (items, sequences): items[i] = {idx, asin, title, brand, categories} for i = item_idx - 1;
    sequences[u] = [(item, ts), ...] in file order (the user's time order)."""
    ipath, xpath = os.path.join(path, "items.csv.gz"), os.path.join(path, "interactions.csv.gz")
    for p in (ipath, xpath):
        if not os.path.exists(p):
            raise FileNotFoundError("%s: missing (see the data folder's README)" % p)
    items = []
    with gzip.open(ipath, "rt", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f)):
            if int(row["item_idx"]) != n + 1:
                raise ValueError("%s:%d: item_idx %s out of order" % (ipath, n + 2, row["item_idx"]))
            parts = [html.unescape(p) for p in row["attributes"].split("|") if p]
            brand = None
            if parts and parts[0] not in TOP_CATEGORIES:
                brand = parts[0]
                parts = parts[1:]
            if brand == "Unknown":
                brand = None
            items.append({"idx": n, "asin": row["asin"], "title": html.unescape(row["title"]),
                          "brand": brand, "categories": parts})
    seqs = defaultdict(list)
    with gzip.open(xpath, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            seqs[int(row["user_idx"])].append((int(row["item_idx"]) - 1, int(row["timestamp"])))
    return items, [seqs[u] for u in sorted(seqs)]


def keyword_phrases(items, min_items=3):
    """Keyword phrases from catalogue text and attributes, and each item's keywords.

    Every category path level becomes a phrase of its words ("nail polish"), the brand a phrase
    ("opi"), and brand + leaf category another ("opi nail polish"); phrases with fewer than
    min_items items are dropped. Returns (phrases, item_keywords)."""
    cand = []
    for it in items:
        ks = []
        for c in it["categories"]:
            ks.append(" ".join(_words(c)))
        if it["brand"]:
            b = " ".join(_words(it["brand"]))
            ks.append(b)
            if it["categories"]:
                ks.append(b + " " + " ".join(_words(it["categories"][-1])))
        cand.append([k for k in dict.fromkeys(ks) if k])
    count = Counter(k for ks in cand for k in ks)
    phrases = sorted(k for k, c in count.items() if c >= min_items)
    index = {p: i for i, p in enumerate(phrases)}
    return phrases, [[index[k] for k in ks if k in index] for ks in cand]


def split(seqs):
    """Leave-one-out: -> (train sequences, validation (history, target), test (history, target)).
    Users need 3+ items (5-core guarantees 5)."""
    train, valid, test = [], [], []
    for s in seqs:
        items = [i for i, _ in s]
        if len(items) < 3:
            continue
        train.append(items[:-2])
        valid.append((items[:-2], items[-2]))
        test.append((items[:-1], items[-1]))
    return train, valid, test


def mine_themes(train, item_keywords, phrases, n_themes=32, seed=0, iters=20):
    """Themes: k-means of keywords by their co-purchase profile (which keywords appear in the same
    users' training sequences), each named by its two most frequent keywords' words. Returns
    (theme names, keyword -> theme)."""
    k = len(phrases)
    co = np.zeros((k, k))
    freq = np.zeros(k)
    for seq in train:
        kws = sorted({kw for i in seq for kw in item_keywords[i]})
        for a in kws:
            freq[a] += 1
            co[a, kws] += 1
    prof = co / np.maximum(np.linalg.norm(co, axis=1, keepdims=True), 1e-9)
    rng = np.random.default_rng(seed)
    n = min(n_themes, k)
    cent = prof[rng.choice(k, size=n, replace=False)]
    for _ in range(iters):
        assign = (prof @ cent.T).argmax(1)
        for j in range(n):
            if (assign == j).any():
                c = prof[assign == j].mean(0)
                cent[j] = c / max(np.linalg.norm(c), 1e-9)
    names, used = [], set()
    for j in range(n):
        members = sorted(np.flatnonzero(assign == j), key=lambda a: (-freq[a], a))
        words = []
        for a in members:
            for w in phrases[a].split():
                if w not in words:
                    words.append(w)
            if len(words) >= 3:
                break
        name = " ".join(words[:3]) or "misc"
        while name in used:
            name += " more"
        used.add(name)
        names.append(name)
    return names, [int(a) for a in assign]


def _catalogue(items, phrases, item_kw, themes, kw_theme):
    """-> (products, theme rows, keyword rows) in the shop format (see build_shops)."""
    for t in themes:
        if len(t.split()) > 3:
            raise ValueError("theme name %r longer than 3 words" % t)
    products = []
    for it, ks in zip(items, item_kw):
        leaf = " ".join(_words(it["categories"][-1])) if it["categories"] else None
        ks = sorted(ks, key=lambda k: (phrases[k] != leaf, ks.index(k)))
        if not ks:
            raise ValueError("item %s has no keyword" % it["asin"])
        products.append({"id": it["asin"], "title": it["title"] or it["asin"],
                         "brand": it["brand"] or "unknown", "theme": kw_theme[ks[0]],
                         "keywords": ks, "seasons": [0, 1, 2, 3], "regions": [0], "stock": 1,
                         "appeal": 1.0})
    theme_rows = [{"id": j, "name": name, "seasons": [0, 1, 2, 3], "next": [],
                   "keywords": [k for k in range(len(phrases)) if kw_theme[k] == j]}
                  for j, name in enumerate(themes)]
    keywords = [{"id": k, "text": phrases[k], "themes": [kw_theme[k]]}
                for k in range(len(phrases))]
    return products, theme_rows, keywords


def _record(u, seq, products, split, in_stats):
    """One shopper record: each (item, ts) of seq a one-event session ending in a purchase."""
    events, sessions = [], []
    for i, (item, ts) in enumerate(seq):
        events.append({"ts": ts, "action": 3, "item": item, "query": None})
        sessions.append({"start": ts, "first_event": i, "end_event": i + 1,
                         "theme": products[item]["theme"], "season": 0, "purchase": item})
    return {"id": "u%05d" % u, "region": 0, "drifter": False, "events": events,
            "sessions": sessions, "split": split, "in_stats": in_stats,
            "drifted": bool(len(sessions) > 1 and sessions[-1]["theme"] != sessions[-2]["theme"])}


def _shop(catalogue, records, related_window, related_top, related_direction, extra=None):
    products, theme_rows, keywords = catalogue
    params = {"seed": 0, "source": "amazon-beauty", "n_products": len(products),
              "related_window": related_window, "related_top": related_top,
              "related_direction": related_direction,
              # semantic codes: titles tell apart products that share keywords and brand;
              # 12,101 products need TIGER's 256-entry codebooks
              "code_title_words": 500, "code_dims": 48, "codebook": 256}
    params.update(extra or {})
    return {"format": "vitrine-shop", "version": 1, "params": params,
            "actions": ["view", "search", "cart", "purchase"],
            "seasons": ["winter", "spring", "summer", "autumn"],
            "regions": [{"name": "all", "season_offset": 0, "fixed_season": -1}],
            "themes": theme_rows, "keywords": keywords, "products": products,
            "shoppers": records}


def build_shops(items, seqs, phrases, item_kw, themes, kw_theme, related_window, related_top=50,
                related_direction="forward"):
    """The data as two vitrine-shop files, so the demo's tools (train.train, train.tune,
    train.export) run on it unchanged. -> (shop for training and validation, shop for the test).

    Catalogue: one product per item (id = asin), its keywords with its leaf category first (the
    keyword a purchase teaches the model: specific enough to mean something, broad enough to
    retrieve), its theme that keyword's mined theme; one region "all" whose season follows the
    calendar, every product suiting every season and in stock (the data has no such rules).
    Shoppers: each review is a one-event session ending in a purchase (action "purchase", the
    review's day). Per user, with items i_1..i_n:
    - a "train" record of i_1..i_{n-2} (every session after the first is a training example);
    - the validation shop adds a "valid" record i_1..i_{n-1} (its held-out session is i_{n-1});
    - the test shop adds an "eval" record i_1..i_n (held out: i_n, history i_1..i_{n-1}).
    Catalogue statistics (popularity, related items) come from the histories the protocol allows:
    i_1..i_{n-2} for validation, i_1..i_{n-1} for the test ("in_stats" marks the counted record);
    the related items follow the co-occurrence baseline's tuned window and direction.
    A request's `now` is the previous event's time ("request_now": "previous_event"): the
    target's own day would leak into the request."""
    cat = _catalogue(items, phrases, item_kw, themes, kw_theme)
    products = cat[0]
    train_v, train_t, valid, test = [], [], [], []
    for u, s in enumerate(seqs):
        if len(s) < 3:
            continue
        train_v.append(_record(u, s[:-2], products, "train", True))
        train_t.append(_record(u, s[:-2], products, "train", False))
        valid.append(_record(u, s[:-1], products, "valid", False))
        test.append(_record(u, s, products, "eval", True))
    extra = {"protocol": "leave-one-out", "request_now": "previous_event"}
    return tuple(_shop(cat, r, related_window, related_top, related_direction, extra)
                 for r in (train_v + valid, train_t + test))


def day(ts):
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def parse_day(text):
    """"YYYY-MM-DD" -> unix seconds at 00:00 UTC, with a clear error."""
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%d"))
    except ValueError:
        raise ValueError("cut-off %r is not a date YYYY-MM-DD" % text) from None


def quantile_cutoff(seqs, after=0.1, before=None):
    """The default cut-off: the day of the interaction at the (1 - after) quantile of all
    interactions by time (of those before `before`, when given): about `after` of them fall on or
    after it (days are the data's resolution, so ties can add a little)."""
    ts = sorted(t for s in seqs for _, t in s if before is None or t < before)
    if not ts:
        raise ValueError("no interactions before the cut-off")
    return ts[min(len(ts) - 1, int(len(ts) * (1 - after)))]


def time_split(seqs, cutoff, valid_cutoff):
    """The global time split. Every interaction before `valid_cutoff` is training data for the
    model, the validation statistics and the baselines' tuning; every interaction before `cutoff`
    is history and statistics for the test. -> dict:
    - train_valid / train_test: per user, the items before valid_cutoff / cutoff (users with none
      are left out), as (user, [(item, ts)]);
    - valid / test: (user, history [(item, ts)], (target item, ts)): each shopper's first item on or
      after the cut-off (before `cutoff` for validation), for shoppers with a history before it;
    - new_users_valid / new_users_test: shoppers with a target but no history (not evaluated)."""
    if not valid_cutoff < cutoff:
        raise ValueError("the validation cut-off %s must be before the cut-off %s"
                         % (day(valid_cutoff), day(cutoff)))
    out = {"train_valid": [], "train_test": [], "valid": [], "test": [], "new_users_valid": 0,
           "new_users_test": 0}
    for u, s in enumerate(seqs):
        for lo, hi, tr, cases, new in ((valid_cutoff, cutoff, "train_valid", "valid",
                                        "new_users_valid"),
                                       (cutoff, None, "train_test", "test", "new_users_test")):
            hist = [(i, t) for i, t in s if t < lo]
            after = [(i, t) for i, t in s if t >= lo and (hi is None or t < hi)]
            if hist:
                out[tr].append((u, hist))
            if after and hist:
                out[cases].append((u, hist, after[0]))
            elif after:
                out[new] += 1
    return out


def build_time_shops(items, ts_split, phrases, item_kw, themes, kw_theme, related_window,
                     related_top=50, related_direction="forward", cutoff=None, valid_cutoff=None):
    """The time split as two vitrine-shop files (-> validation shop, test shop): "train" records
    hold each user's items before the validation cut-off (validation shop: the model's training
    data and the statistics) or before the cut-off (test shop: the statistics); "valid" / "eval"
    records add the target (held out) to the history. Histories are not counted twice (the held-out
    records are "in_stats": false). A request's `now` is the cut-off ("request_now": "cutoff"):
    the moment the prediction is made, never the target's day. Metrics rank only the items seen
    before the cut-off ("protocol": "time"): a target never seen before it is a cold-start miss."""
    cat = _catalogue(items, phrases, item_kw, themes, kw_theme)
    products = cat[0]
    shops = []
    for tr, cases, split, cut in (("train_valid", "valid", "valid", valid_cutoff),
                                  ("train_test", "test", "eval", cutoff)):
        recs = [_record(u, h, products, "train", True) for u, h in ts_split[tr]]
        recs += [_record(u, h + [t], products, split, False) for u, h, t in ts_split[cases]]
        shops.append(_shop(cat, recs, related_window, related_top, related_direction,
                           {"protocol": "time", "request_now": "cutoff", "cutoff": cut,
                            "cutoff_day": day(cut)}))
    return tuple(shops)


def popularity(train, n_items):
    counts = np.zeros(n_items)
    for seq in train:
        for i in seq:
            counts[i] += 1
    return counts


def cooccurrence(train, n_items, window, direction):
    c = np.zeros((n_items, n_items), dtype=np.float32)
    for seq in train:
        for p, a in enumerate(seq):
            for q in range(p + 1, min(len(seq), p + 1 + window)):
                b = seq[q]
                if a != b:
                    c[a, b] += 1
                    if direction == "both":
                        c[b, a] += 1
    return c


def rank_of(scores, target, tiebreak=None):
    """0-based rank of target when ranking by descending score, then by descending tiebreak
    (if given), then by ascending index."""
    s = scores[target]
    if tiebreak is None:
        return int((scores > s).sum() + (scores[:target] == s).sum())
    t = tiebreak[target]
    eq = scores == s
    return int((scores > s).sum() + (eq & (tiebreak > t)).sum()
               + (eq[:target] & (tiebreak[:target] == t)).sum())


def metrics(ranks):
    out = {}
    for k in KS:
        out["recall@%d" % k] = float(np.mean([r < k for r in ranks]))
        out["ndcg@%d" % k] = float(np.mean([1 / math.log2(r + 2) if r < k else 0.0
                                            for r in ranks]))
    return out


def pop_ranks(train, cases, n_items, cold_miss=False):
    """Per case, the target's 0-based rank by training popularity (ties: lower index). With
    cold_miss, a target never seen in training ranks MISS (only seen items are ranked)."""
    pop = popularity(train, n_items)
    return [MISS if cold_miss and pop[t] == 0 else rank_of(pop, t) for _, t in cases]


def eval_popularity(train, cases, n_items, cold_miss=False):
    return metrics(pop_ranks(train, cases, n_items, cold_miss))


def cooc_ranks(train, cases, n_items, window, decay, direction, cooc=None, cold_miss=False):
    """Per case, the target's 0-based rank by the co-occurrence score (ties by popularity, then
    index); cold_miss as pop_ranks."""
    c = cooccurrence(train, n_items, window, direction) if cooc is None else cooc
    pop = popularity(train, n_items)  # breaks ties between equal scores
    ranks = []
    for hist, target in cases:
        if cold_miss and pop[target] == 0:
            ranks.append(MISS)
            continue
        score = np.zeros(n_items)
        for r, h in enumerate(reversed(hist)):
            score += (decay ** r) * c[h]
        ranks.append(rank_of(score, target, pop))
    return ranks


def eval_cooc(train, cases, n_items, window, decay, direction, cooc=None, cold_miss=False):
    return metrics(cooc_ranks(train, cases, n_items, window, decay, direction, cooc, cold_miss))


def tune_cooc(train, valid, n_items, log=None, cold_miss=False):
    """Window, decay and direction with the best validation NDCG@10 (then Recall@10): 80
    settings."""
    best = None
    for direction in ("forward", "both"):
        for window in (1, 2, 3, 5, 10):
            c = cooccurrence(train, n_items, window, direction)
            for decay in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0):
                m = eval_cooc(train, valid, n_items, window, decay, direction, c, cold_miss)
                key = (m["ndcg@10"], m["recall@10"])
                if best is None or key > best[0]:
                    best = (key, {"window": window, "decay": decay, "direction": direction}, m)
                    if log:
                        log("  cooc %s: valid %s" % (best[1], json.dumps(m)))
    return best[1], best[2]


PUBLISHED = {"SASRec (TIGER's table)": {"recall@5": 0.0387, "ndcg@5": 0.0249, "recall@10": 0.0605,
                                        "ndcg@10": 0.0318},
             "TIGER": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648,
                       "ndcg@10": 0.0384}}


def loo_protocol(seqs, items, phrases, item_kw, log):
    """-> (result dict, theme mining input, shops builder, test user ids)."""
    train, valid, test = split(seqs)
    n = len(items)
    res = {"protocol": "leave-one-out, full ranking over all items", "systems": {}}
    params, vm = tune_cooc(train, valid, n, log)
    train_plus = [h + [t] for h, t in valid]  # the validation item joins training for the test
    ranks = cooc_ranks(train_plus, test, n, **params)
    res["systems"]["cooccurrence"] = {"params": params, "valid": vm, "test": metrics(ranks),
                                      "test_ranks": ranks}
    ranks = pop_ranks(train_plus, test, n)
    res["systems"]["popularity"] = {"valid": eval_popularity(train, valid, n),
                                    "test": metrics(ranks), "test_ranks": ranks}
    res["test_users"] = ["u%05d" % u for u, s in enumerate(seqs) if len(s) >= 3]
    res["published"] = PUBLISHED

    def shops(themes, kw_theme):
        return build_shops(items, seqs, phrases, item_kw, themes, kw_theme, params["window"],
                           related_direction=params["direction"])
    return res, train, shops


def time_protocol(seqs, items, phrases, item_kw, cutoff, valid_cutoff, log):
    """The global time split (see time_split): baselines tuned on the validation targets (before
    the cut-off), tested on each shopper's first item after it; cold-start targets (never seen
    before the cut-off) are misses, and counted apart."""
    ts = time_split(seqs, cutoff, valid_cutoff)
    n = len(items)
    items_of = lambda hs: [i for i, _ in hs]  # noqa: E731
    train_v = [items_of(h) for _, h in ts["train_valid"]]
    train_t = [items_of(h) for _, h in ts["train_test"]]
    valid = [(items_of(h), t[0]) for _, h, t in ts["valid"]]
    test = [(items_of(h), t[0]) for _, h, t in ts["test"]]
    if not valid or not test:
        raise ValueError("the time split has %d validation and %d test shoppers: choose other "
                         "cut-offs" % (len(valid), len(test)))
    pop_v, pop_t = popularity(train_v, n), popularity(train_t, n)
    cold_v = sum(1 for _, t in valid if pop_v[t] == 0)
    cold_t = [bool(pop_t[t] == 0) for _, t in test]
    log("beauty: time split at %s (validation cut-off %s): %d test shoppers (%d cold-start "
        "targets), %d validation shoppers (%d cold); %d / %d shoppers without a history"
        % (day(cutoff), day(valid_cutoff), len(test), sum(cold_t), len(valid), cold_v,
           ts["new_users_test"], ts["new_users_valid"]))
    res = {"protocol": "global time split at %s: each shopper's first item on or after it, full "
           "ranking over the items seen before it; cold-start targets are misses" % day(cutoff),
           "split": {"cutoff": day(cutoff), "valid_cutoff": day(valid_cutoff),
                     "test_shoppers": len(test), "valid_shoppers": len(valid),
                     "cold_test_targets": sum(cold_t), "cold_valid_targets": cold_v,
                     "shoppers_without_history_test": ts["new_users_test"],
                     "shoppers_without_history_valid": ts["new_users_valid"],
                     "items_seen_before_cutoff": int((pop_t > 0).sum()),
                     "items_seen_before_valid_cutoff": int((pop_v > 0).sum()),
                     "interactions_before_valid_cutoff": sum(map(len, train_v)),
                     "interactions_before_cutoff": sum(map(len, train_t))},
           "systems": {}, "test_users": ["u%05d" % u for u, _, _ in ts["test"]],
           "test_cold": cold_t}
    params, vm = tune_cooc(train_v, valid, n, log, cold_miss=True)
    ranks = cooc_ranks(train_t, test, n, cold_miss=True, **params)
    res["systems"]["cooccurrence"] = {"params": params, "valid": vm, "test": metrics(ranks),
                                      "test_ranks": ranks}
    ranks = pop_ranks(train_t, test, n, cold_miss=True)
    res["systems"]["popularity"] = {"valid": eval_popularity(train_v, valid, n, True),
                                    "test": metrics(ranks), "test_ranks": ranks}
    res["published"] = {}  # published rows are leave-one-out numbers: not comparable

    def shops(themes, kw_theme):
        return build_time_shops(items, ts, phrases, item_kw, themes, kw_theme, params["window"],
                                related_direction=params["direction"], cutoff=cutoff,
                                valid_cutoff=valid_cutoff)
    return res, train_v, shops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="the amazon-beauty folder")
    ap.add_argument("--out", required=True, help="output folder (baselines.json)")
    ap.add_argument("--shops", action="store_true",
                    help="also write shop-valid.json and shop.json for the demo's tools")
    ap.add_argument("--split", choices=("loo", "time"), default="loo",
                    help="leave-one-out (default) or a global time split")
    ap.add_argument("--cutoff", help="time split: the cut-off day YYYY-MM-DD (default: the day "
                    "that leaves about --after of all interactions on or after it)")
    ap.add_argument("--valid-cutoff", help="time split: the validation cut-off day (default: "
                    "the same rule applied to the interactions before the cut-off)")
    ap.add_argument("--after", type=float, default=0.1, help="time split: the share of "
                    "interactions after each default cut-off (default 0.1)")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not os.path.isdir(a.data):
        log("beauty: %s is absent; skipping (the data is optional)" % a.data)
        return 0
    if a.split == "loo" and (a.cutoff or a.valid_cutoff):
        ap.error("--cutoff and --valid-cutoff need --split time")
    if not 0 < a.after < 1:
        ap.error("--after must be between 0 and 1")
    items, seqs = load(a.data)
    phrases, item_kw = keyword_phrases(items)
    n = len(items)
    if a.split == "time":
        try:
            cutoff = parse_day(a.cutoff) if a.cutoff else quantile_cutoff(seqs, a.after)
            valid_cutoff = parse_day(a.valid_cutoff) if a.valid_cutoff else \
                quantile_cutoff(seqs, a.after, before=cutoff)
            res, theme_train, shops = time_protocol(seqs, items, phrases, item_kw, cutoff,
                                                    valid_cutoff, log)
        except ValueError as e:
            ap.error(str(e))
    else:
        res, theme_train, shops = loo_protocol(seqs, items, phrases, item_kw, log)
    themes, kw_theme = mine_themes(theme_train, item_kw, phrases)
    log("beauty: %d items, %d users, %d keyword phrases, %d themes; items without a keyword: %d"
        % (n, len(seqs), len(phrases), len(themes), sum(1 for k in item_kw if not k)))
    res["data"] = {"items": n, "users": len(seqs), "interactions": sum(len(s) for s in seqs),
                   "keywords": len(phrases), "themes": len(themes)}
    os.makedirs(a.out, exist_ok=True)
    if a.shops:
        for name, shop in zip(("shop-valid.json", "shop.json"), shops(themes, kw_theme)):
            with open(os.path.join(a.out, name), "w") as f:
                json.dump(shop, f, separators=(",", ":"))
        log("beauty: shops -> %s/shop-valid.json, shop.json" % a.out)
    with open(os.path.join(a.out, "baselines.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("%-28s %9s %9s %9s %9s" % ("system (test)", "R@5", "N@5", "R@10", "N@10"))
    rows = [(k, v["test"]) for k, v in res["systems"].items()] + list(res["published"].items())
    for name, m in rows:
        print("%-28s %9.4f %9.4f %9.4f %9.4f" % (name, m["recall@5"], m["ndcg@5"], m["recall@10"],
                                                   m["ndcg@10"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

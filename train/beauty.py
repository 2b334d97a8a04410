"""Amazon Beauty 5-core: loading, keyword phrases, mined themes, the leave-one-out split, and the
baselines of the published protocol.

    /usr/bin/python3 -m train.beauty --data ../shared/data/amazon-beauty --out build/beauty

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
"""
import argparse
import csv
import gzip
import html
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict

import numpy as np

TOP_CATEGORIES = ("Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body",
                  "Fragrance")
KS = (5, 10)


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


def build_shops(items, seqs, phrases, item_kw, themes, kw_theme, related_window, related_top=50):
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
    i_1..i_{n-2} for validation, i_1..i_{n-1} for the test ("in_stats" marks the counted record)."""
    n_items = len(items)
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

    def record(u, seq, split, in_stats):
        events, sessions = [], []
        for i, (item, ts) in enumerate(seq):
            events.append({"ts": ts, "action": 3, "item": item, "query": None})
            sessions.append({"start": ts, "first_event": i, "end_event": i + 1,
                             "theme": products[item]["theme"], "season": 0, "purchase": item})
        return {"id": "u%05d" % u, "region": 0, "drifter": False, "events": events,
                "sessions": sessions, "split": split, "in_stats": in_stats,
                "drifted": bool(len(sessions) > 1 and
                                sessions[-1]["theme"] != sessions[-2]["theme"])}

    def shop(records):
        return {"format": "vitrine-shop", "version": 1,
                "params": {"seed": 0, "source": "amazon-beauty", "n_products": n_items,
                           "related_window": related_window, "related_top": related_top,
                           # semantic codes: titles tell apart products that share keywords and
                           # brand; 12,101 products need TIGER's 256-entry codebooks
                           "code_title_words": 500, "code_dims": 48, "codebook": 256},
                "actions": ["view", "search", "cart", "purchase"],
                "seasons": ["winter", "spring", "summer", "autumn"],
                "regions": [{"name": "all", "season_offset": 0, "fixed_season": -1}],
                "themes": theme_rows, "keywords": keywords, "products": products,
                "shoppers": records}

    train_v, train_t, valid, test = [], [], [], []
    for u, s in enumerate(seqs):
        if len(s) < 3:
            continue
        train_v.append(record(u, s[:-2], "train", True))
        train_t.append(record(u, s[:-2], "train", False))
        valid.append(record(u, s[:-1], "valid", False))
        test.append(record(u, s, "eval", True))
    return shop(train_v + valid), shop(train_t + test)


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


def eval_popularity(train, cases, n_items):
    pop = popularity(train, n_items)
    tie = pop * 1.0  # ties -> lower index via rank_of
    return metrics([rank_of(tie, t) for _, t in cases])


def eval_cooc(train, cases, n_items, window, decay, direction, cooc=None):
    c = cooccurrence(train, n_items, window, direction) if cooc is None else cooc
    pop = popularity(train, n_items)  # breaks ties between equal scores
    ranks = []
    for hist, target in cases:
        score = np.zeros(n_items)
        for r, h in enumerate(reversed(hist)):
            score += (decay ** r) * c[h]
        ranks.append(rank_of(score, target, pop))
    return metrics(ranks)


def tune_cooc(train, valid, n_items, log=None):
    best = None
    for direction in ("forward", "both"):
        for window in (1, 2, 3, 5, 10):
            c = cooccurrence(train, n_items, window, direction)
            for decay in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0):
                m = eval_cooc(train, valid, n_items, window, decay, direction, c)
                key = (m["ndcg@10"], m["recall@10"])
                if best is None or key > best[0]:
                    best = (key, {"window": window, "decay": decay, "direction": direction}, m)
                    if log:
                        log("  cooc %s: valid %s" % (best[1], json.dumps(m)))
    return best[1], best[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="the amazon-beauty folder")
    ap.add_argument("--out", required=True, help="output folder (baselines.json)")
    ap.add_argument("--shops", action="store_true",
                    help="also write shop-valid.json and shop.json for the demo's tools")
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not os.path.isdir(a.data):
        log("beauty: %s is absent; skipping (the data is optional)" % a.data)
        return 0
    items, seqs = load(a.data)
    phrases, item_kw = keyword_phrases(items)
    train, valid, test = split(seqs)
    themes, kw_theme = mine_themes(train, item_kw, phrases)
    n = len(items)
    log("beauty: %d items, %d users, %d keyword phrases, %d themes; items without a keyword: %d"
        % (n, len(seqs), len(phrases), len(themes), sum(1 for k in item_kw if not k)))
    res = {"data": {"items": n, "users": len(seqs), "interactions": sum(len(s) for s in seqs),
                    "keywords": len(phrases), "themes": len(themes)},
           "protocol": "leave-one-out, full ranking over all items", "systems": {}}
    params, vm = tune_cooc(train, valid, n, log)
    train_plus = [h + [t] for h, t in valid]  # the validation item joins training for the test
    res["systems"]["cooccurrence"] = {"params": params, "valid": vm,
                                      "test": eval_cooc(train_plus, test, n, **params)}
    res["systems"]["popularity"] = {"valid": eval_popularity(train, valid, n),
                                    "test": eval_popularity(train_plus, test, n)}
    res["published"] = {"SASRec (TIGER's table)": {"recall@5": 0.0387, "ndcg@5": 0.0249,
                                                   "recall@10": 0.0605, "ndcg@10": 0.0318},
                        "TIGER": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648,
                                  "ndcg@10": 0.0384}}
    os.makedirs(a.out, exist_ok=True)
    if a.shops:
        for name, shop in zip(("shop-valid.json", "shop.json"),
                              build_shops(items, seqs, phrases, item_kw, themes, kw_theme,
                                          params["window"])):
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

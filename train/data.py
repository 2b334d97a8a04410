"""Tables, catalogue, request featurisation and training examples.

A *request* is what the gRPC API and `vitrine recommend` take (JSON):

    {"now": 1735700000, "region": "eu", "shopper_id": "s00042",
     "events": [{"item": "p00017", "action": "view", "ts": 1735600000},
                {"action": "search", "ts": 1735600100, "query": "wool scarf"}, ...],
     "sections": 3, "keywords_per_section": 3, "products_per_section": 4,
     "exclude": ["p00003"]}

Featurisation (the C engine does the same): events are stably sorted by ts and only the newest
max_events are kept; an item id the catalogue does not know embeds as the "unknown" code row, an
event without an item as the "none" row; query words outside the vocabulary become UNK, at most
max_query_tokens of them; events after `now` count as 0 seconds ago.
"""
import re

import numpy as np
import torch

from .model import ACTION_CONTEXT, time_inputs
from .vocab import BOS, EOS, PAD, SEP, Trie, Vocab

ACTIONS = ("view", "search", "cart", "purchase")
LIMITS = {"max_sections": 16, "max_keywords_per_section": 16, "max_products_per_section": 64,
          "max_query_bytes": 1024}


class Tables:
    """The model-side tables of a bundle: vocabulary, theme and keyword phrases, tries, regions."""

    def __init__(self, vocab, theme_texts, keyword_texts, regions):
        self.vocab = vocab
        self.theme_texts, self.keyword_texts = list(theme_texts), list(keyword_texts)
        self.theme_tokens = [vocab.encode(t) for t in self.theme_texts]
        self.keyword_tokens = [vocab.encode(k) for k in self.keyword_texts]
        self.theme_trie = Trie(self.theme_tokens, SEP)
        self.keyword_trie = Trie(self.keyword_tokens, EOS)
        self.regions = regions  # [{"name", "season_offset", "fixed_season"}]
        self.region_index = {r["name"]: i for i, r in enumerate(regions)}

    @classmethod
    def from_shop(cls, shop):
        themes = [t["name"] for t in shop["themes"]]
        kws = [k["text"] for k in shop["keywords"]]
        return cls(Vocab.from_phrases(themes + kws), themes, kws, shop["regions"])


def kmeans_pp_init(x, k, rng):
    """k-means++ seeding: each next centroid drawn with probability proportional to D^2."""
    cent = [x[rng.integers(len(x))]]
    d2 = ((x - cent[0]) ** 2).sum(-1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
        cent.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - cent[-1]) ** 2).sum(-1))
    return np.array(cent)


def residual_kmeans(feats, levels, k, seed, iters=12, dims=24):
    """Semantic codes: residual k-means, `levels` levels of k centroids -> (P, levels) int."""
    rng = np.random.default_rng(seed)
    x = feats.astype(np.float64) - feats.mean(0)
    # sparse attribute features cluster badly (one giant cluster): project on the top singular
    # directions first, then quantise the dense vectors
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    resid = u[:, :dims] * sv[:dims]
    codes = np.zeros((feats.shape[0], levels), dtype=np.int64)
    for lv in range(levels):
        cent = kmeans_pp_init(resid, k, rng)
        for _ in range(iters):
            d = ((resid[:, None, :] - cent[None]) ** 2).sum(-1)
            a = d.argmin(1)
            for j in range(k):
                if (a == j).any():
                    cent[j] = resid[a == j].mean(0)
        codes[:, lv] = a
        resid = resid - cent[a]
    return codes


def title_features(prods, n_words, weight=0.3):
    """(P, n_words) indicators of the n_words title words found in the most products (at least
    3; ties by the word), scaled by weight."""
    words = [set(re.findall(r"[a-z0-9]+", p["title"].lower())) for p in prods]
    df = {}
    for ws in words:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    vocab = [w for w, c in sorted(df.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 3][:n_words]
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(prods), len(vocab)))
    for i, ws in enumerate(words):
        for w in ws:
            if w in index:
                out[i, index[w]] = weight
    return out


def dedup_level(codes, codebook):
    """TIGER's extra code level: the rank of a product among those sharing all earlier codes, so
    every product has a distinct code tuple (and so a distinct embedding)."""
    seen = {}
    out = np.zeros((len(codes), 1), dtype=np.int64)
    for i, c in enumerate(map(tuple, codes)):
        out[i, 0] = seen.get(c, 0)
        seen[c] = out[i, 0] + 1
    if out.max(initial=0) >= codebook:
        raise ValueError("more than %d products share a semantic code; raise the codebook size"
                         % codebook)
    return out


RELATED_WINDOW, RELATED_TOP = 8, 24


def interaction_stats(shop):
    """Catalogue statistics from observed events (never a held-out session):
    popularity[p] = purchases of p; related[a] = the `related_top` (default RELATED_TOP) products
    b that most often followed a within `related_window` (default RELATED_WINDOW) item events of
    one shopper, weight = count(a->b)/count(a->*) rounded to float32; both can be set in the
    shop's params. With the params' "related_direction" "both" (default "forward"), b also counts
    when it came up to `related_window` events before a (train.beauty's tuned co-occurrence
    direction; the catalogue format and the engine's use of related[a] are unchanged). A
    shopper marked "in_stats": false is left out (a record whose history another record of the
    same person already counts, as in train.beauty's leave-one-out shops)."""
    from .shop import observed
    n = len(shop["products"])
    window = shop["params"].get("related_window", RELATED_WINDOW)
    top_n = shop["params"].get("related_top", RELATED_TOP)
    direction = shop["params"].get("related_direction", "forward")
    if direction not in ("forward", "both"):
        raise ValueError("shop params: related_direction %r is not forward or both" % direction)
    pop = [0] * n
    follow = {}
    for s in shop["shoppers"]:
        if not s.get("in_stats", True):
            continue
        items = []
        for e in observed(s):
            if e["action"] == 3:
                pop[e["item"]] += 1
            if e["item"] is not None and (not items or items[-1] != e["item"]):
                items.append(e["item"])
        for i, a in enumerate(items):
            row = follow.setdefault(a, {})
            for b in items[i + 1:i + 1 + window]:
                if b != a:
                    row[b] = row.get(b, 0) + 1
                    if direction == "both":
                        back = follow.setdefault(b, {})
                        back[a] = back.get(a, 0) + 1
    related = [[] for _ in range(n)]
    for a, row in follow.items():
        total = sum(row.values())
        top = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
        related[a] = [(b, float(np.float32(c / total))) for b, c in top]
    return pop, related


class Catalog:
    """Products with their keywords, attributes and semantic codes (embeddings are added by the
    exporter, which runs the model's product tower)."""

    def __init__(self, ids, titles, keywords, regions, seasons, stock, codes, n_keywords,
                 embeddings=None, popularity=None, related=None):
        self.ids, self.titles, self.keywords = list(ids), list(titles), [list(k) for k in keywords]
        self.regions, self.seasons = [list(r) for r in regions], [list(s) for s in seasons]
        self.stock = list(stock)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalogue has duplicate product ids")
        self.kw_products = [[] for _ in range(n_keywords)]
        for i, ks in enumerate(self.keywords):
            for k in ks:
                self.kw_products[k].append(i)
        self.embeddings = embeddings
        self.popularity = list(popularity) if popularity is not None else [0] * len(self.ids)
        # related[a]: [(b, weight)], the products that followed a in shoppers' histories
        self.related = [list(r) for r in related] if related is not None else \
            [[] for _ in self.ids]

    def with_embeddings(self, embeddings):
        """The same catalogue with other product embeddings (another model's product tower)."""
        return Catalog(self.ids, self.titles, self.keywords, self.regions, self.seasons,
                       self.stock, self.codes, len(self.kw_products), embeddings,
                       self.popularity, self.related)

    @classmethod
    def from_shop(cls, shop, cfg_levels, cfg_codebook, seed=0):
        prods = shop["products"]
        n_kw, brands = len(shop["keywords"]), sorted({p["brand"] for p in prods})
        kw_words = sorted({w for k in shop["keywords"] for w in k["text"].split()})
        wi = {w: i for i, w in enumerate(kw_words)}
        feats = np.zeros((len(prods), n_kw + len(wi) + len(brands) + 8))
        for i, p in enumerate(prods):
            for k in p["keywords"]:
                feats[i, k] = 2.0
                for w in shop["keywords"][k]["text"].split():
                    feats[i, n_kw + wi[w]] = 0.5
            feats[i, n_kw + len(wi) + brands.index(p["brand"])] = 0.7
            for s in p["seasons"]:
                feats[i, -8 + s] = 0.5
            for r in p["regions"]:
                feats[i, -4 + r] = 0.3
        n_title = shop["params"].get("code_title_words", 0)
        if n_title:  # real catalogues: many products share keywords and brand; titles tell apart
            feats = np.concatenate([feats, title_features(prods, n_title)], axis=1)
        codes = residual_kmeans(feats, cfg_levels - 1, cfg_codebook, seed,
                                dims=shop["params"].get("code_dims", 24))
        codes = np.concatenate([codes, dedup_level(codes, cfg_codebook)], axis=1)
        pop, related = interaction_stats(shop)
        return cls([p["id"] for p in prods], [p["title"] for p in prods],
                   [p["keywords"] for p in prods], [p["regions"] for p in prods],
                   [p["seasons"] for p in prods], [p["stock"] for p in prods], codes, n_kw,
                   popularity=pop, related=related)


class RequestError(ValueError):
    """A request the engine refuses (the gRPC server answers INVALID_ARGUMENT with the message)."""


MAX_UNIX = 2 ** 53 - 1  # the largest time accepted: every integer up to it is exact in a double


def _time(v, field):
    """A Unix time in seconds, 1..MAX_UNIX (absent and 0 are one case: proto3 cannot send 0)."""
    if v is None or v == 0:
        raise RequestError("%s is missing or 0: a Unix time in seconds, 1..%d, is required" %
                           (field, MAX_UNIX))
    if not isinstance(v, int) or isinstance(v, bool):
        raise RequestError("%s must be an integer: a Unix time in seconds, 1..%d" %
                           (field, MAX_UNIX))
    if v < 0:
        raise RequestError("%s is negative: a Unix time in seconds, 1..%d, is required" %
                           (field, MAX_UNIX))
    if v > MAX_UNIX:
        raise RequestError("%s is above %d (2^53 - 1), the largest Unix time accepted" %
                           (field, MAX_UNIX))
    return v


def _text(s, field):
    """A request string must be UTF-8 without NUL characters (byte offsets in UTF-8)."""
    if "\x00" in s:
        raise RequestError("%s contains a NUL character (at byte %d)" %
                           (field, len(s[:s.index("\x00")].encode("utf-8", "surrogatepass"))))
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, from a JSON \ud800 escape
        raise RequestError("%s is not valid UTF-8 (at byte %d)" %
                           (field, len(s[:e.start].encode("utf-8", "surrogatepass")))) from None


def validate_request(req, tables, cfg):
    """Checks a request and returns (events sorted and truncated, n_dropped). Raises RequestError
    with the message the C engine gives (engine/request.c)."""
    if not isinstance(req, dict):
        raise RequestError("request must be an object")
    if not req:
        raise RequestError("empty request: now, region, sections, keywords_per_section and "
                           "products_per_section are required")
    _time(req.get("now"), "now")
    region = req.get("region")
    names = ", ".join("'%s'" % r["name"] for r in tables.regions)
    if region is not None and not isinstance(region, str):
        raise RequestError("region must be a string")
    if region:
        _text(region, "region")
    if not region:
        raise RequestError("region is missing: one of %s" % names)
    if region not in tables.region_index:
        raise RequestError("unknown region '%s': one of %s" % (region, names))
    for key, lim in (("sections", LIMITS["max_sections"]),
                     ("keywords_per_section", LIMITS["max_keywords_per_section"]),
                     ("products_per_section", LIMITS["max_products_per_section"])):
        v = req.get(key)
        if v is None or v == 0:
            raise RequestError("%s is missing or 0: it must be an integer in 1..%d" % (key, lim))
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > lim:
            raise RequestError("%s must be an integer in 1..%d" % (key, lim))
    if req["sections"] > len(tables.theme_texts):
        raise RequestError("sections must be at most %d (the number of themes)" %
                           len(tables.theme_texts))
    sid = req.get("shopper_id")
    if sid is not None and not isinstance(sid, str):
        raise RequestError("shopper_id must be a string")
    if sid:
        _text(sid, "shopper_id")
    events = req.get("events", [])
    if not isinstance(events, list):
        raise RequestError("events must be a list")
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            raise RequestError("events[%d] must be an object" % i)
        if e.get("action") not in ACTIONS:
            raise RequestError("events[%d].action %s one of %s" % (
                i, "is missing: it must be" if e.get("action") is None else "must be",
                ", ".join(ACTIONS)))
        _time(e.get("ts"), "events[%d].ts" % i)
        q = e.get("query")
        if q is not None and (not isinstance(q, str) or len(q.encode("utf-8", "surrogatepass")) >
                              LIMITS["max_query_bytes"]):
            raise RequestError("events[%d].query must be a string of at most %d bytes" %
                               (i, LIMITS["max_query_bytes"]))
        if q is not None:
            _text(q, "events[%d].query" % i)
        it = e.get("item")
        if it is not None and not isinstance(it, str):
            raise RequestError("events[%d].item must be a string" % i)
        if it is not None:
            _text(it, "events[%d].item" % i)
    ex = req.get("exclude", [])
    if not isinstance(ex, list):
        raise RequestError("exclude must be a list of product ids")
    for i, x in enumerate(ex):
        if not isinstance(x, str):
            raise RequestError("exclude[%d] must be a string" % i)
        _text(x, "exclude[%d]" % i)
    order = sorted(range(len(events)), key=lambda i: events[i]["ts"])  # stable
    kept = [events[i] for i in order][-cfg.max_events:] if cfg.max_events else []
    return kept, len(events) - len(kept)


def featurize_one(events, now, region, tables, catalog, cfg):
    """One request (validated events) -> dict of numpy arrays, context token first."""
    n = len(events) + 1
    codes = np.full((n, cfg.code_levels), cfg.code_none, dtype=np.int64)
    action = np.full(n, ACTION_CONTEXT, dtype=np.int64)
    query = np.full((n, cfg.max_query_tokens), PAD, dtype=np.int64)
    ts = np.zeros(n, dtype=np.int64)
    ts[0] = now
    for i, e in enumerate(events, start=1):
        action[i] = ACTIONS.index(e["action"])
        ts[i] = e["ts"]
        it = e.get("item")
        if it is not None:
            p = catalog.index.get(it)
            codes[i] = catalog.codes[p] if p is not None else cfg.code_unknown
        if e.get("query"):
            toks = tables.vocab.encode(e["query"])[:cfg.max_query_tokens]
            query[i, :len(toks)] = toks
    x, cal = time_inputs([int(t) for t in ts], now)
    return {"codes": codes, "action": action, "query": query, "ts": ts,
            "x": np.asarray(x, dtype=np.float64).astype(np.float32),
            "cal": np.asarray(cal, dtype=np.float64).astype(np.float32),
            "region": tables.region_index[region], "length": n}


def collate(feats, device=None):
    """List of featurize_one dicts -> padded batch of tensors (on `device`; None: the CPU)."""
    b, n = len(feats), max(f["length"] for f in feats)
    out = {}
    for key in ("codes", "action", "query", "ts", "x", "cal"):
        first = feats[0][key]
        arr = np.zeros((b, n) + first.shape[1:], dtype=first.dtype)
        if key == "codes":
            arr[:] = feats[0]["codes"][0, 0]  # pad rows with the "none" code
        if key == "ts":
            for i, f in enumerate(feats):  # padded keys are masked; give them a harmless time
                arr[i, :] = f["ts"][0]
        for i, f in enumerate(feats):
            arr[i, :f["length"]] = f[key]
        out[key] = torch.as_tensor(arr, device=device)
    out["region"] = torch.tensor([f["region"] for f in feats], dtype=torch.int64, device=device)
    out["length"] = torch.tensor([f["length"] for f in feats], dtype=torch.int64, device=device)
    return out


def shop_event_to_api(e, catalog):
    d = {"action": ACTIONS[e["action"]], "ts": int(e["ts"])}
    if e["item"] is not None:
        d["item"] = catalog.ids[e["item"]]
    if e["query"]:
        d["query"] = e["query"]
    return d


def make_request(events, now, region_name, catalog, sections=3, kws=3, prods=4, exclude=(),
                 shopper_id=""):
    return {"now": int(now), "region": region_name, "shopper_id": shopper_id,
            "events": [shop_event_to_api(e, catalog) for e in events],
            "sections": sections, "keywords_per_section": kws, "products_per_section": prods,
            "exclude": list(exclude)}


def target_keyword(shop, session):
    """The keyword of the purchased product that belongs to the session's theme."""
    theme_kws = shop["themes"][session["theme"]]["keywords"]
    for k in shop["products"][session["purchase"]]["keywords"]:
        if k in theme_kws:
            return k
    return shop["products"][session["purchase"]]["keywords"][0]


def training_examples(shop, tables, catalog, cfg, split="train"):
    """Every session with a purchase after the first, of every shopper in `split`: the history
    before it is the input, its theme, keyword and product the targets."""
    out = []
    for s in shop["shoppers"]:
        if s["split"] != split:
            continue
        region = shop["regions"][s["region"]]["name"]
        for si in range(1, len(s["sessions"])):
            sess = s["sessions"][si]
            if sess["purchase"] is None:
                continue
            events = [shop_event_to_api(e, catalog) for e in s["events"][:sess["first_event"]]]
            now = sess["start"] - 1
            events = sorted(events, key=lambda e: e["ts"])[-cfg.max_events:]
            f = featurize_one(events, now, region, tables, catalog, cfg)
            k = target_keyword(shop, sess)
            seq = [BOS] + tables.theme_tokens[sess["theme"]] + [SEP] + \
                tables.keyword_tokens[k] + [EOS]
            f.update(seq=seq, theme=sess["theme"], keyword=k, product=sess["purchase"])
            out.append(f)
    return out


def valid_children_mask(seq, tables, v):
    """For teacher forcing on seq: (T-1, V) bool, the trie-valid next tokens at each position."""
    t = len(seq) - 1
    mask = np.zeros((t, v), dtype=bool)
    sep = seq.index(SEP)
    node = 0
    for i in range(t):  # predicting seq[i + 1] from prefix seq[: i + 1]
        if i < sep:
            trie, pos_in = tables.theme_trie, i
            node = trie.walk(seq[1:1 + pos_in])
        else:
            trie, pos_in = tables.keyword_trie, i - sep
            node = trie.walk(seq[sep + 1:sep + 1 + pos_in])
        toks, _ = trie.children(node)
        mask[i, toks] = True
    return mask


def collate_train(examples, tables, cfg):
    b = collate(examples)
    t = max(len(e["seq"]) for e in examples)
    seq = np.full((len(examples), t), PAD, dtype=np.int64)
    valid = np.zeros((len(examples), t - 1, cfg.vocab_size), dtype=bool)
    for i, e in enumerate(examples):
        seq[i, :len(e["seq"])] = e["seq"]
        if "valid" not in e:
            e["valid"] = valid_children_mask(e["seq"], tables, cfg.vocab_size)
        valid[i, :len(e["seq"]) - 1] = e["valid"]
    b["seq"] = torch.from_numpy(seq)
    b["valid"] = torch.from_numpy(valid)
    b["product"] = torch.tensor([e["product"] for e in examples], dtype=torch.int64)
    return b

"""The reference cascade: a request in, a storefront out. The C engine must reproduce this.

1. Encode the history (model.encode) into Q memory tokens; the user vector u = W_user mean(mem).
2. Stage 1, themes: beam search from [BOS] under the theme trie, width max(theme_beam, sections);
   the `sections` best finished themes, in order.
3. Stage 2, keywords: for each theme, beam search from [BOS theme SEP] under the keyword trie,
   width max(keyword_beam, keywords_per_section); the best `keywords_per_section` keywords.
4. Retrieval: a section's candidates are the products of its keywords (keyword order, then
   product index); filtered by the business rules (excluded ids, stock <= 0, not sold in the
   region, not suited to the region's season at `now`, already shown in an earlier section);
   scored by the retrieval head plus item-to-item features of the history (see pick and
   history_features; weights tuned on validation shoppers by train.tune and carried in the
   bundle's manifest), or by a learned ranker (LearnedRanker, trained by train.ranker, over
   ranker_features); the best `products_per_section` kept. A product is credited to the first
   (best) keyword of the section that retrieves it.

Beam search, deterministic by construction (the C engine follows it to the bit):
- A beam's next-token distribution is the log-softmax of its logits over the trie's valid children
  only (a sparse output projection: logit_c = h . tok_emb[c]); scores are float32 sums.
- Each step lists candidates beam by beam (beams in rank order) and, within a beam, children in
  ascending token id; the best `width` candidates are taken by a stable sort on descending score,
  so on equal scores the earlier candidate wins.
- A selected candidate whose token is the trie's terminator finishes (its phrase id is the node's
  phrase); the others stay live. Search stops when no beam is live, or when `n_best` hypotheses
  have finished and the best live score is below the n_best-th finished score (log-probabilities
  are <= 0, so no live beam can overtake: exact).
- Finished hypotheses are ranked by descending score, then ascending phrase id.

Device: the cascade runs where the model's parameters are (CPU or CUDA). Every tensor it makes
is created on that device (`device=self.device`); the tries, business rules and re-ranking stay
host-side Python/numpy, and the few values read back go through `.cpu()` / `.tolist()` / float().
"""
import math

import numpy as np
import torch

from . import calendar
from .data import collate, featurize_one, validate_request
from .vocab import BOS, EOS, SEP, UNK, PAD

THEME_BEAM = 8
KEYWORD_BEAM = 8
MAX_FREE_WORDS = 6
# product score weights; a bundle's manifest carries tuned ones (train.tune)
DEFAULT_RANKER = {"again": 0.0, "cooc": 0.0, "popularity": 0.0, "decay": 0.8,
                  "calibration": 0.0}  # unconstrained decoding stops a phrase after this many words
# a learned ranker's features, in the engine's order (kernels/decode.h vt_ranker_model)
RANKER_FEATURES = ("dot", "again", "cooc", "cooc_sat", "log_pop", "in_history", "recency",
                   "keyword_score", "keyword_rank", "theme_score", "section")
RANKER_MAX_HIDDEN = 32


class LearnedRanker:
    """A manifest "ranker" of kind "learned" (docs/BUNDLE.md; train.ranker trains one): a linear
    model (hidden 0) or one ReLU layer over RANKER_FEATURES, in float32 with the C engine's order
    of operations (kernels/ranker.h): every add, multiply and divide rounded to float32 in turn,
    no transcendental function, so the engine's scores are these bits."""

    def __init__(self, d):
        if list(d.get("features", ())) != list(RANKER_FEATURES):
            raise ValueError("ranker.features must be %s" % list(RANKER_FEATURES))
        self.hidden = d.get("hidden")
        if not isinstance(self.hidden, int) or not 0 <= self.hidden <= RANKER_MAX_HIDDEN:
            raise ValueError("ranker.hidden must be 0..%d" % RANKER_MAX_HIDDEN)
        F, H = len(RANKER_FEATURES), self.hidden
        self.cooc_half = self._field(d, "cooc_half", ())
        if not self.cooc_half > 0:
            raise ValueError("ranker.cooc_half must be > 0")
        self.b2 = self._field(d, "b2", ())
        self.w2 = self._field(d, "w2", (H or F,))
        self.b1 = self._field(d, "b1", (H,))
        self.w1 = self._field(d, "w1", (H, F))

    @staticmethod
    def _field(d, name, shape):
        try:
            a = np.asarray(d.get(name, [] if shape and not shape[0] else None), dtype=np.float32)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != shape and not (a.size == 0 and 0 in shape) or \
                not np.isfinite(a).all():
            raise ValueError("ranker.%s must be %s finite numbers" % (name, shape or "a number"))
        return a.reshape(shape)

    def features(self, dot, again, cooc, recency, log_pop, kw_score, kw_rank, theme_score,
                 section):
        """-> X (n, F) float32 from per-candidate arrays (and the section's two scalars)."""
        f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
        n = len(dot)
        cooc = f32(cooc)
        X = np.zeros((n, len(RANKER_FEATURES)), dtype=np.float32)
        X[:, 0], X[:, 1], X[:, 2] = f32(dot), f32(again), cooc
        X[:, 3] = cooc / (cooc + self.cooc_half)
        X[:, 4] = f32(log_pop)
        X[:, 5] = f32(again) > 0
        X[:, 6], X[:, 7], X[:, 8] = f32(recency), f32(kw_score), f32(kw_rank)
        X[:, 9], X[:, 10] = np.float32(theme_score), np.float32(section)
        return X

    def score(self, X):
        """(n, F) -> (n,) float32, summed as the engine sums."""
        s = np.full(len(X), self.b2, dtype=np.float32)
        F = X.shape[1]
        if self.hidden == 0:
            for i in range(F):
                s = s + self.w2[i] * X[:, i]
            return s
        for j in range(self.hidden):
            h = np.full(len(X), self.b1[j], dtype=np.float32)
            for i in range(F):
                h = h + self.w1[j, i] * X[:, i]
            s = s + self.w2[j] * np.where(h > 0, h, np.float32(0))
        return s


def learned_ranker(ranker):
    """The LearnedRanker of a manifest "ranker", or None for the weights' mix (kind "mix")."""
    kind = (ranker or {}).get("kind", "mix")
    if kind not in ("mix", "learned"):
        raise ValueError("ranker.kind must be mix or learned, not %r" % kind)
    return LearnedRanker(ranker) if kind == "learned" else None


def season_now(tables, region, now):
    r = tables.regions[tables.region_index[region]]
    return calendar.season_of(now, r["season_offset"], r["fixed_season"])


class Cascade:
    def __init__(self, model, tables, catalog, ranker=None, theme_beam=THEME_BEAM,
                 keyword_beam=KEYWORD_BEAM):
        self.model, self.tables, self.catalog = model, tables, catalog
        self.device = model.tok_emb.weight.device
        self.ranker = dict(DEFAULT_RANKER, **(ranker or {}))
        self.learned = learned_ranker(self.ranker)
        self.log_pop = [np.float32(math.log1p(x)) for x in catalog.popularity]
        self.theme_beam, self.keyword_beam = theme_beam, keyword_beam
        if catalog.embeddings is None:
            with torch.no_grad():
                codes = torch.as_tensor(catalog.codes, device=self.device)
                catalog.embeddings = model.product_vectors(codes).cpu().numpy().astype(np.float32)
        self.emb = torch.as_tensor(np.ascontiguousarray(catalog.embeddings, dtype=np.float32),
                                   device=self.device)
        words = [i for i in range(len(tables.vocab)) if i not in (PAD, BOS, SEP, EOS, UNK)]
        self.free_words = words

    @classmethod
    def from_manifest(cls, model, tables, catalog, manifest):
        """The cascade a bundle describes: its ranker weights and beam widths."""
        d = manifest.get("decode", {})
        return cls(model, tables, catalog, manifest.get("ranker"),
                   d.get("theme_beam", THEME_BEAM), d.get("keyword_beam", KEYWORD_BEAM))

    # ---- beam search ------------------------------------------------------------------------
    def _children(self, trie, state, terminator):
        """(tokens, next states) of a beam; trie None means unconstrained (state = #words)."""
        if trie is not None:
            toks, kids = trie.children(state)
            return list(toks), list(kids)
        if state >= MAX_FREE_WORDS:
            return [terminator], [-1]
        return self.free_words + [terminator], [state + 1] * len(self.free_words) + [-1]

    @torch.no_grad()
    def beam_search(self, xkv, prefix, trie, terminator, width, n_best, trace=None):
        """-> list of (score, phrase id or tokens tuple, tokens) best first."""
        m, dev = self.model, self.device
        cache, h = None, None
        for pos, tok in enumerate(prefix):  # run the prefix, one beam
            h, cache = m.decode_step(torch.tensor([tok], device=dev), pos, cache, xkv)
        if trace is not None:
            trace.append(("first_logits", (h @ m.tok_emb.weight.t())[0]))
        pos = len(prefix)
        # score, trie node (or word count), tokens
        beams = [(torch.tensor(0.0, device=dev), 0, ())]
        finished = []
        emb = m.tok_emb.weight
        while beams:
            cand_scores, cand_meta = [], []
            for bi, (score, state, toks) in enumerate(beams):
                ctoks, kids = self._children(trie, state, terminator)
                logits = h[bi] @ emb[ctoks].t()
                logp = torch.log_softmax(logits, dim=-1)
                cand_scores.append(score + logp)
                cand_meta.extend((bi, t, k) for t, k in zip(ctoks, kids))
            allc = torch.cat(cand_scores)
            order = torch.sort(-allc, stable=True).indices[:width].tolist()
            live = []
            for ci in order:
                bi, t, k = cand_meta[ci]
                s, toks = allc[ci], beams[bi][2] + (t,)
                if t == terminator:
                    pid = trie.phrase[k] if trie is not None else toks[:-1]
                    finished.append((s, pid, toks))
                else:
                    live.append((bi, t, k, s, toks))
            if len(finished) >= n_best and live:
                kth = sorted(float(f[0]) for f in finished)[-n_best]
                if float(live[0][3]) < kth:
                    live = []
            if not live:
                break
            parents = torch.tensor([x[0] for x in live], device=dev)
            cache = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in cache]
            h, cache = m.decode_step(torch.tensor([x[1] for x in live], device=dev), pos, cache,
                                     self._expand(xkv, len(live)))
            beams = [(x[3], x[2], x[4]) for x in live]
            pos += 1
            if pos >= m.cfg.max_dec_len:
                break
        key = (lambda f: (-float(f[0]), f[1])) if trie is not None else (lambda f: -float(f[0]))
        finished.sort(key=key)
        return finished[:n_best]

    @staticmethod
    def _expand(xkv, w):
        return [(k[:1].expand(w, -1, -1, -1), v[:1].expand(w, -1, -1, -1)) for k, v in xkv]

    # ---- the cascade ----------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, req, trace=None, constrained=True, collect=None, features=None):
        """Request dict -> storefront dict. trace: list collecting (name, tensor) intermediates;
        collect: list receiving (u, [section candidates]) for re-ranking (train.tune);
        features: list receiving [(candidate product indices, their RANKER_FEATURES (n, F))] per
        section, the learned ranker's inputs (train.ranker; the cascade must have a learned
        ranker, whose cooc_half the features use)."""
        t, cat, m = self.tables, self.catalog, self.model
        events, dropped = validate_request(req, t, m.cfg)
        f = featurize_one(events, req["now"], req["region"], t, cat, m.cfg)
        mem = m.encode(collate([f], self.device), trace)
        return self._decode(req, events, dropped, mem, trace, constrained, collect, features)

    @torch.no_grad()
    def recommend_many(self, reqs):
        """Several requests: one padded encoder batch, then each request's decoding and retrieval
        (the reference decodes one request at a time). Same answers as recommend."""
        t, cat, m = self.tables, self.catalog, self.model
        checked = [validate_request(r, t, m.cfg) for r in reqs]
        feats = [featurize_one(ev, r["now"], r["region"], t, cat, m.cfg)
                 for r, (ev, _) in zip(reqs, checked)]
        mem = m.encode(collate(feats, self.device))
        return [self._decode(r, ev, dropped, mem[i:i + 1])
                for i, (r, (ev, dropped)) in enumerate(zip(reqs, checked))]

    def _decode(self, req, events, dropped, mem, trace=None, constrained=True, collect=None,
                features=None):
        t, m = self.tables, self.model
        u = m.user_vector(mem)[0]
        xkv = m.cross_kv(mem)
        n_sec, n_kw = req["sections"], req["keywords_per_section"]
        theme_trie = t.theme_trie if constrained else None
        kw_trie = t.keyword_trie if constrained else None
        themes = self.beam_search(self._expand(xkv, 1), [BOS], theme_trie, SEP,
                                  max(self.theme_beam, n_sec), n_sec, trace)
        secs = []
        for th_score, th_id, th_toks in themes:
            kws = self.beam_search(self._expand(xkv, 1), [BOS] + list(th_toks), kw_trie, EOS,
                                   max(self.keyword_beam, n_kw), n_kw)
            secs.append({"theme": self._phrase(th_id, th_score, t.theme_texts, t.theme_trie,
                                               th_toks),
                         "keywords": [self._phrase(k_id, k_s, t.keyword_texts, t.keyword_trie,
                                                   k_toks) for k_s, k_id, k_toks in kws]})
        return self.assemble(req, events, dropped, secs, u, collect, features)

    def assemble(self, req, events, dropped, secs, u, collect=None, features=None):
        """Sections with their themes and keywords -> the storefront: each section's candidates
        (section_candidates), scored and picked in section order (pick). collect, features: as
        recommend's."""
        t = self.tables
        shown, all_cands, feats = set(), [], []
        exclude = set(req.get("exclude", []))
        hist = self.history_features(events)
        recency = self.history_recency(events) if self.learned is not None else None
        calib = self.calibration(events)
        season = season_now(t, req["region"], req["now"])
        region = t.region_index[req["region"]]
        for si, sec in enumerate(secs):
            cands = self.section_candidates(sec["keywords"], exclude, region, season, hist)
            all_cands.append(cands)
            ctx = (sec["keywords"], sec["theme"]["score"], si, recency)
            if features is not None:
                feats.append(self.ranker_features(cands, u, ctx))
            sec["products"] = self.pick(cands, shown, req["products_per_section"], u, ctx=ctx,
                                        calib=calib)
        if collect is not None:
            collect.append((u, all_cands))
        if features is not None:
            features.append(feats)
        return {"sections": secs, "dropped_events": dropped}

    # ---- retrieval and ranking ----------------------------------------------------------------
    def history_features(self, events):
        """Item-to-item features of a history: (again, cooc) dicts product -> float32.
        Known catalogue items of the kept events, newest first, get weights 1, d, d^2, ...
        (d = ranker decay, float32 products); again[p] sums the weights of p's own occurrences,
        cooc[q] sums weight x related(p -> q) over history items p."""
        cat, d = self.catalog, np.float32(self.ranker["decay"])
        again, cooc = {}, {}
        w = np.float32(1.0)
        for e in reversed(events):
            p = cat.index.get(e["item"]) if e.get("item") is not None else None
            if p is None:
                continue
            again[p] = np.float32(again.get(p, np.float32(0)) + w)
            for q, wt in cat.related[p]:
                cooc[q] = np.float32(cooc.get(q, np.float32(0)) + w * np.float32(wt))
            w = np.float32(w * d)
        return again, cooc

    def history_recency(self, events):
        """The learned ranker's recency feature: product -> float32 1 / (1 + k), k the position
        (from the newest, counting known catalogue items as history_features does) of the newest
        history item that is the product or relates to it."""
        cat, out, k = self.catalog, {}, 0
        for e in reversed(events):
            p = cat.index.get(e["item"]) if e.get("item") is not None else None
            if p is None:
                continue
            r = np.float32(1.0) / np.float32(k + 1)
            for q in [p] + [q for q, _ in cat.related[p]]:
                out.setdefault(q, r)
            k += 1
        return out

    def ranker_features(self, cands, u, ctx):
        """A section's candidates -> (product indices, RANKER_FEATURES (n, F) float32).
        ctx: (the section's keywords, its theme's score, its index, history_recency)."""
        keywords, theme_score, section, recency = ctx
        idx = np.array([c[0] for c in cands], dtype=np.int64)
        dots = (self.emb[idx] @ u).cpu().numpy() if len(idx) else np.zeros(0, np.float32)
        rank = {k["id"]: i for i, k in enumerate(keywords)}
        kw_rank = [rank[c[1]] for c in cands]
        X = self.learned.features(
            dots, [c[2] for c in cands], [c[3] for c in cands],
            [recency.get(p, 0.0) for p in idx.tolist()], [self.log_pop[p] for p in idx.tolist()],
            [np.float32(keywords[r]["score"]) for r in kw_rank], kw_rank, theme_score, section)
        return idx, X

    def section_candidates(self, keywords, exclude, region, season, hist):
        """Products of a section's keywords passing the business rules (not yet de-duplicated
        against earlier sections): list of (product, crediting keyword, again, cooc)."""
        cat = self.catalog
        again, cooc = hist
        out, seen = [], set()
        for kw in keywords:
            if kw["id"] < 0:
                continue  # an unconstrained keyword that is not in the catalogue
            for p in cat.kw_products[kw["id"]]:
                if p in seen:
                    continue
                seen.add(p)
                if (cat.ids[p] in exclude or cat.stock[p] <= 0 or region not in cat.regions[p]
                        or season not in cat.seasons[p]):
                    continue
                out.append((p, kw["id"], again.get(p, np.float32(0)),
                            cooc.get(p, np.float32(0))))
        return out

    def calibration(self, events):
        """The page's Calibration when the ranker's calibration is on and the history has
        catalogue products, else None."""
        if float(self.ranker.get("calibration", 0.0)) <= 0.0:
            return None
        idx = [self.catalog.index.get(e["item"]) for e in events if e.get("item") is not None]
        cats = [int(self.catalog.codes[p][0]) for p in idx if p is not None]
        return Calibration(cats) if cats else None

    def pick(self, cands, shown, n, u, ranker=None, ctx=None, calib=None):
        """Scores the candidates not yet shown, keeps the best n (ties: lower product index) and
        marks them shown. score = u.e_p + again_w again + cooc_w cooc + pop_w log1p(popularity),
        summed left to right in float32; or, with a learned ranker (ranker None), its score of
        ranker_features(cands, u, ctx). With calib (the page's Calibration) the n are picked
        greedily by Calibration.pick instead."""
        r = ranker or self.ranker
        if not cands:
            return []
        if ranker is None and self.learned is not None:
            idx, X = self.ranker_features(cands, u, ctx)
            s = self.learned.score(X)
            scored = sorted((-float(x), p, c[1], float(x)) for x, p, c in zip(s, idx.tolist(), cands)
                            if p not in shown)
            return self._take(scored, shown, n, calib, r)
        dots = (self.emb[[c[0] for c in cands]] @ u).cpu().numpy()
        wa, wc, wp = (np.float32(r[k]) for k in ("again", "cooc", "popularity"))
        scored = []
        for (p, kw, ag, co), dot in zip(cands, dots):
            if p in shown:
                continue
            s = np.float32(dot) + wa * ag
            s = np.float32(s + wc * co)
            s = np.float32(s + wp * self.log_pop[p])
            scored.append((-float(s), p, kw, float(s)))
        scored.sort()
        return self._take(scored, shown, n, calib, r)

    def _take(self, scored, shown, n, calib=None, r=None):
        """The best n of sorted (-score, product, keyword, score), marked shown; with calib,
        picked greedily by Calibration.pick at the ranker r's calibration strength."""
        if calib is not None:
            strength = np.float32(r.get("calibration", 0.0))
            scored = calib.pick(scored, n, strength, lambda p: int(self.catalog.codes[p][0]))
        out = []
        for _, p, kw, s in scored[:n]:
            shown.add(p)
            out.append({"id": self.catalog.ids[p], "index": p, "score": s, "keyword": kw})
        return out

    def _phrase(self, pid, score, texts, trie, toks):
        """Phrase record; an unconstrained phrase gets its trie id if it exists, else -1."""
        if not isinstance(pid, int):
            body = list(pid)
            pid = trie.contains(body + [trie.terminator])
            text = texts[pid] if pid >= 0 else self.tables.vocab.decode(body)
        else:
            text = texts[pid]
        return {"id": int(pid), "text": text, "score": float(score)}


CALIB_CATEGORIES = 256  # kernels/decode.h VT_CALIB_CATEGORIES
CALIB_ALPHA = 0.01      # VT_CALIB_ALPHA


class Calibration:
    """The ranker's calibration (kernels/calib.h, the same doubles in the same order): Steck's
    calibrated recommendations, greedy. p: the history products' categories (a product's category
    is its first semantic code); q: those of the page so far; a candidate's objective
    (1 - l) * score - l * KL(p || (1 - a) q' + a p), q' the page with the candidate added."""

    def __init__(self, hist_categories):
        self.hist = [0] * CALIB_CATEGORIES
        for g in hist_categories:
            self.hist[g] += 1
        self.n_hist = len(hist_categories)
        self.page = [0] * CALIB_CATEGORIES
        self.n_page = 0

    def term(self, g, shown, n):
        p = self.hist[g] / self.n_hist
        q = (1.0 - CALIB_ALPHA) * (shown / n) + CALIB_ALPHA * p
        return p * math.log(p / q)

    def table(self):
        """kl[g]: the KL of the page with one more product, of category g."""
        n = self.n_page + 1
        base = 0.0
        for g in range(CALIB_CATEGORIES):
            if self.hist[g] > 0:
                base = base + self.term(g, self.page[g], n)
        return [(base + -self.term(g, self.page[g], n)) + self.term(g, self.page[g] + 1, n)
                if self.hist[g] > 0 else base for g in range(CALIB_CATEGORIES)]

    @staticmethod
    def objective(strength, score, kl):
        lam = float(strength)
        return (1.0 - lam) * float(score) + -(lam * kl)

    def pick(self, scored, n, strength, category):
        """scored: (-score, product, keyword, score) of the candidates not yet shown; returns the
        n picked, in order, and counts them on the page."""
        left, out = list(scored), []
        while left and len(out) < n:
            kl = self.table()
            best = None
            for i, c in enumerate(left):
                obj = self.objective(strength, np.float32(c[3]), kl[category(c[1])])
                if best is None or obj > best[0] or (obj == best[0] and c[1] < left[best[1]][1]):
                    best = (obj, i)
            c = left.pop(best[1])
            out.append(c)
            self.page[category(c[1])] += 1
            self.n_page += 1
        return out

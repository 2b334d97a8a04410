"""The batched cascade: many requests in, their storefronts out, the same ids as train.cascade.

The reference (train/cascade.py) decodes one request at a time and, within a request, one theme's
keywords at a time: a Python loop per beam per step. This module runs the same searches for a
whole batch at once, one decoder forward per step:

1. Encoder: model.encode over the requests sorted by history length, encode_chunk (32) at a
   time, so a short history is not padded to the batch's longest -> memory (B, Q, C); the user
   vectors (B, R) and the decoder's cross-attention K/V (B, NH, Q, HS) once per request.
2. Stage 1, themes: S = B searches (one per request), each from [BOS] under the theme trie.
3. Stage 2, keywords: S = sum of the requests' sections, each from [BOS theme SEP] under the
   keyword trie. Both stages are one call of `beam_search` below.
4. Retrieval and page assembly: per request, host side, the reference's rules and float32
   arithmetic (Cascade.history_features, section_candidates, pick) rewritten over numpy arrays
   of the catalogue (CSR keyword -> products, product -> related products, rule masks), and the
   retrieval dot products of all of a request's sections as one matrix-vector product. Batching
   them across requests does not pay: a request has a few dozen candidates, the work is numpy
   call overhead, and on a GPU it would only add transfers. (The reference's history_features, a
   Python loop over every related product of every history item, was the largest single cost of
   a batch before this rewrite.)

Beam search on a grid. The S searches of a stage form a grid (S, W): row s holds search s's live
beams in rank order (W = the widest beam of the batch; a narrower search or one with fewer live
beams leaves slots dead). Each step:

- children by CSR gather (STATIC): node (S, W) -> entries indptr[node] + k, k < degree, padded to
  the largest degree K among the live beams: tokens and next nodes (S, W, K), sorted by token id
  within a beam as the trie stores them;
- logits of those children only: h . tok_emb[c] (a dense h @ tok_emb^T then a gather when K is
  not much smaller than V, "dense"; the gathered rows of tok_emb otherwise, "sparse"), a
  log-softmax over the valid children, -inf elsewhere, added to the beam's score (float32);
- the candidates of a search, flattened beam by beam then child by child (exactly the reference's
  listing order), are sorted by a stable sort on descending score and the first `width` taken:
  equal scores keep the earlier candidate, as in the reference;
- a candidate ending in the terminator is finished: it is merged into the search's best-n_best
  buffer (ranked by descending score then ascending phrase id, the reference's final order; only
  the n_best best can ever be returned, so keeping n_best is exact); the others stay live, packed
  to the front of the row in selection order, and their KV cache is gathered from their parents;
- the reference's stop rules per search: no live beam; n_best finished and the best live score
  below the n_best-th finished score; the next position reaching max_dec_len. A search that stops
  leaves the grid (the grid is compacted to the searches still running).

KV cache as tensors: the prefix's keys/values (S, NH, P, HS) once per search (prefixes of unequal
length are left-padded and the padding masked), the generated tokens' (S, W, NH, t, HS) per beam;
attention reads both, so the prefix is never copied per beam. Positions (pos_emb) are per search.

Numerics: the same float32 operations as the reference, but over batched shapes (a GEMM over all
beams instead of one per beam, a softmax with masked padding), so scores agree to rounding (about
1e-6), not to the bit. Ids are identical unless two candidates are within rounding of each other;
train/tests/test_cascade_batched.py checks the golden requests.

Speed (train/bench_batched.py measures each option): the decoder step runs as TorchScript by
default (the same values; 0-20% faster on a CPU in runs on a shared 2-core machine); "frozen"
(torch.jit.freeze + optimize_for_inference) and MKLDNN Linear layers did not help at these
shapes with one thread, and torch's NNC CPU fuser needs an LLVM that Debian's torch is built
without.

Only constrained decoding (the serving path): the reference's unconstrained mode
(recommend(constrained=False), a diagnostic) is not batched.
"""
import copy
import math
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.mkldnn

from .cascade import KEYWORD_BEAM, THEME_BEAM, Cascade, season_now
from .data import RequestError, collate, featurize_one, validate_request
from .vocab import BOS, SEP

NEG = float("-inf")
BIG_ID = 2 ** 62  # phrase id of an empty finished slot (sorts after every real id)


class TrieTensors:
    """A vocab.Trie's CSR arrays as int64 tensors on a device."""

    def __init__(self, trie, device):
        def as_t(x):
            return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device)
        self.indptr, self.token, self.child = as_t(trie.indptr), as_t(trie.token), as_t(trie.child)
        self.phrase = as_t(trie.phrase)
        self.n_entries = len(trie.token)
        self.terminator = trie.terminator


def to_mkldnn(model):
    """A copy of the model whose Linear layers are MKLDNN ones (torch.utils.mkldnn)."""
    fast = torch.utils.mkldnn.to_mkldnn(copy.deepcopy(model))
    fast.eval()
    return fast


class CatalogArrays:
    """The catalogue as flat numpy arrays for retrieval: CSR keyword -> products and product ->
    related products, and the business-rule masks."""

    def __init__(self, cat, n_regions):
        n = len(cat.ids)
        self.kw_indptr = np.cumsum([0] + [len(p) for p in cat.kw_products]).astype(np.int64)
        self.kw_prod = np.asarray([p for ps in cat.kw_products for p in ps], dtype=np.int64)
        self.rel_indptr = np.cumsum([0] + [len(r) for r in cat.related]).astype(np.int64)
        self.rel_q = np.asarray([q for r in cat.related for q, _ in r], dtype=np.int64)
        self.rel_wt = np.asarray([np.float32(w) for r in cat.related for _, w in r],
                                 dtype=np.float32)
        self.stock_ok = np.asarray([s > 0 for s in cat.stock], dtype=bool)
        self.region_ok = np.zeros((n, n_regions), dtype=bool)
        self.season_ok = np.zeros((n, 4), dtype=bool)  # calendar.season_of: 0 winter .. 3
        for i in range(n):
            self.region_ok[i, [r for r in cat.regions[i] if 0 <= r < n_regions]] = True
            self.season_ok[i, [s for s in cat.seasons[i] if 0 <= s < 4]] = True
        self.log_pop = np.asarray([np.float32(math.log1p(x)) for x in cat.popularity],
                                  dtype=np.float32)


def lookup(keys, values, q):
    """values[keys == q] for each q (keys sorted, unique), float32 0 where absent."""
    if len(keys) == 0:
        return np.zeros(len(q), np.float32)
    i = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return np.where(keys[i] == q, values[i], np.float32(0)).astype(np.float32)


class BatchedCascade:
    """storefronts(requests) -> the reference's storefronts, computed for the batch at once.

    logits: "auto" (dense when the widest node has more than V/8 children), "dense" or "sparse"
    (see the module docstring); step: "script" (the DecoderStep module compiled by
    torch.jit.script; the same values, 0-20% faster than "eager" on a CPU), "eager" or "frozen"
    (scripted, then torch.jit.optimize_for_inference: frozen weights, oneDNN where torch's passes
    choose it); mkldnn: run the Linear layers as MKLDNN (oneDNN) ones (CPU only); encode_chunk:
    the encoder runs on requests sorted by history length, this many at a time (less padding;
    0: the whole batch at once)."""

    def __init__(self, model, tables, catalog, ranker=None, theme_beam=THEME_BEAM,
                 keyword_beam=KEYWORD_BEAM, logits="auto", step="script", mkldnn=False,
                 encode_chunk=32):
        if logits not in ("auto", "dense", "sparse"):
            raise ValueError("logits must be auto, dense or sparse, not %r" % logits)
        if step not in ("eager", "script", "frozen"):
            raise ValueError("step must be eager, script or frozen, not %r" % step)
        self.model, self.tables, self.catalog = model, tables, catalog
        # retrieval, business rules and phrase records: the reference's own code
        self.ref = Cascade(model, tables, catalog, ranker, theme_beam, keyword_beam)
        self.device = self.ref.device
        self.ranker = self.ref.ranker
        self.theme_beam, self.keyword_beam = theme_beam, keyword_beam
        self.logits, self.encode_chunk = logits, encode_chunk
        self.mkldnn = bool(mkldnn) and self.device.type == "cpu"
        # the model whose Linear layers run: the model itself, or a copy whose Linear layers are
        # MKLDNN (oneDNN) ones (bench_batched.py measures both)
        self.fast = to_mkldnn(model) if self.mkldnn else model
        self.decoder = DecoderStep(self.fast)
        self.out_proj = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=False)
        self.out_proj.weight = model.tok_emb.weight  # logits = h @ tok_emb^T (tied)
        if self.mkldnn:
            self.out_proj = torch.utils.mkldnn.to_mkldnn(self.out_proj)
        if step == "script":
            self.decoder = torch.jit.script(self.decoder)
        elif step == "frozen":  # weights folded in as constants, then torch's inference passes
            self.decoder = torch.jit.optimize_for_inference(torch.jit.script(self.decoder.eval()))
        self.theme_trie = TrieTensors(tables.theme_trie, self.device)
        self.keyword_trie = TrieTensors(tables.keyword_trie, self.device)
        self.arrays = CatalogArrays(catalog, len(tables.regions))

    @classmethod
    def from_manifest(cls, model, tables, catalog, manifest, **kw):
        d = manifest.get("decode", {})
        return cls(model, tables, catalog, manifest.get("ranker"),
                   d.get("theme_beam", THEME_BEAM), d.get("keyword_beam", KEYWORD_BEAM), **kw)

    # ---- the cascade ----------------------------------------------------------------------
    @torch.inference_mode()
    def storefronts(self, reqs, errors=False, features=None):
        """List of request dicts -> list of storefront dicts (the reference's form), in order.
        A request the reference refuses raises its RequestError; with errors=True its slot holds
        the RequestError instead and the others are answered. features (a learned ranker only):
        a list receiving each answered request's Cascade.recommend features, in order."""
        t, cat, m = self.tables, self.catalog, self.model
        checked = []
        for r in reqs:
            try:
                checked.append(validate_request(r, t, m.cfg))
            except RequestError as e:
                if not errors:
                    raise
                checked.append(e)
        ok = [i for i, c in enumerate(checked) if not isinstance(c, RequestError)]
        out = list(checked)
        if not ok:
            return out
        reqs_ok = [reqs[i] for i in ok]
        feats = [featurize_one(checked[i][0], reqs[i]["now"], reqs[i]["region"], t, cat, m.cfg)
                 for i in ok]
        mem = self.encode(feats)  # (B, Q, C)
        users = self.fast.user_vector(mem)  # (B, R)
        xkv = self.fast.cross_kv(mem)  # per layer (K, V), each (B, NH, Q, HS)

        # stage 1: a theme search per request
        n_sec = [r["sections"] for r in reqs_ok]
        themes = self.beam_search(xkv, list(range(len(ok))), [[BOS]] * len(ok),
                                  self.theme_trie, [max(self.theme_beam, n) for n in n_sec], n_sec)
        # stage 2: a keyword search per (request, theme)
        owner, prefixes, n_kw = [], [], []
        for b, (r, th) in enumerate(zip(reqs_ok, themes)):
            for _, tid in th:
                owner.append(b)
                prefixes.append([BOS] + t.theme_tokens[tid] + [SEP])
                n_kw.append(r["keywords_per_section"])
        kws = self.beam_search(xkv, owner, prefixes, self.keyword_trie,
                               [max(self.keyword_beam, n) for n in n_kw], n_kw)

        # retrieval and assembly, per request
        j = 0
        for b, (i, r) in enumerate(zip(ok, reqs_ok)):
            secs = []
            for th_score, tid in themes[b]:
                secs.append({"theme": {"id": tid, "text": t.theme_texts[tid], "score": th_score},
                             "keywords": [{"id": kid, "text": t.keyword_texts[kid], "score": s}
                                          for s, kid in kws[j]]})
                j += 1
            out[i] = self.assemble(r, checked[i][0], checked[i][1], secs, users[b], features)
        return out

    def encode(self, feats):
        """Featurised requests -> memory (B, Q, C), in their order: sorted by length and encoded
        encode_chunk at a time, so that a short history is not padded to the longest."""
        n = self.encode_chunk or len(feats)
        if len(feats) <= n:
            return self.fast.encode(collate(feats, self.device))
        order = sorted(range(len(feats)), key=lambda i: feats[i]["length"])
        mem = torch.cat([self.fast.encode(collate([feats[i] for i in order[a:a + n]],
                                                  self.device))
                         for a in range(0, len(order), n)])
        inv = torch.as_tensor(np.argsort(order), device=self.device)
        return mem.index_select(0, inv)

    def assemble(self, req, events, dropped, secs, u, features=None):
        """Sections with themes and keywords -> the storefront: the reference's retrieval and
        ranking (Cascade.history_features, section_candidates and pick), in numpy over the
        catalogue's arrays, and one retrieval product (emb @ u) for all of the request's
        candidates instead of one per section. The float32 arithmetic of the ranking is the
        reference's, operation for operation (np.add.at accumulates in the reference's order).
        A learned ranker (kind "learned") is the reference's own assembly."""
        if self.ref.learned is not None:
            return self.ref.assemble(req, events, dropped, secs, u, features=features)
        a = self.arrays
        n_prod = req["products_per_section"]
        ex = [self.catalog.index.get(x) for x in req.get("exclude", [])]
        ex = np.asarray([p for p in ex if p is not None], dtype=np.int64)
        season = season_now(self.tables, req["region"], req["now"])
        region = self.tables.region_index[req["region"]]
        hist = self.history_features(events)
        cands = [self.section_candidates(s["keywords"], ex, region, season, hist) for s in secs]
        flat = np.concatenate([c[0] for c in cands] or [np.zeros(0, dtype=np.int64)])
        if len(flat):
            idx = torch.as_tensor(flat, device=self.device)
            dots = (self.ref.emb[idx] @ u).cpu().numpy()
        else:
            dots = np.zeros(0, np.float32)
        r = self.ranker
        wa, wc, wp = (np.float32(r[k]) for k in ("again", "cooc", "popularity"))
        shown, at = set(), 0
        for sec, (prods, kws, ag, co) in zip(secs, cands):
            dot = dots[at:at + len(prods)]
            at += len(prods)
            fresh = np.fromiter((p not in shown for p in prods.tolist()), bool, len(prods))
            prods, kws, ag, co, dot = prods[fresh], kws[fresh], ag[fresh], co[fresh], dot[fresh]
            s = dot + wa * ag
            s = s + wc * co
            s = s + wp * a.log_pop[prods]
            best = np.lexsort((prods, -s))[:n_prod]  # descending score, then product index
            shown.update(prods[best].tolist())
            sec["products"] = [{"id": self.catalog.ids[p], "index": p, "score": float(x),
                                "keyword": k} for p, x, k in zip(prods[best].tolist(),
                                                                 s[best].tolist(),
                                                                 kws[best].tolist())]
        return {"sections": secs, "dropped_events": dropped}

    def history_features(self, events):
        """Cascade.history_features as sorted arrays: (again_ids, again, cooc_ids, cooc)."""
        a, cat = self.arrays, self.catalog
        d = np.float32(self.ranker["decay"])
        ps, ws = [], []
        w = np.float32(1.0)
        for e in reversed(events):
            p = cat.index.get(e["item"]) if e.get("item") is not None else None
            if p is None:
                continue
            ps.append(p)
            ws.append(w)
            w = np.float32(w * d)
        if not ps:
            z = np.zeros(0, dtype=np.int64)
            return z, np.zeros(0, np.float32), z, np.zeros(0, np.float32)
        ps, ws = np.asarray(ps, dtype=np.int64), np.asarray(ws, dtype=np.float32)
        aid, inv = np.unique(ps, return_inverse=True)
        again = np.zeros(len(aid), np.float32)
        np.add.at(again, inv, ws)
        lo, hi = a.rel_indptr[ps], a.rel_indptr[ps + 1]
        n = hi - lo
        if n.sum() == 0:
            return aid, again, np.zeros(0, dtype=np.int64), np.zeros(0, np.float32)
        rows = np.repeat(np.arange(len(ps)), n)  # which history item each entry belongs to
        ent = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
        cid, inv = np.unique(a.rel_q[ent], return_inverse=True)
        cooc = np.zeros(len(cid), np.float32)
        np.add.at(cooc, inv, ws[rows] * a.rel_wt[ent])
        return aid, again, cid, cooc

    def section_candidates(self, keywords, ex, region, season, hist):
        """Cascade.section_candidates as arrays (product, crediting keyword, again, cooc), in
        product order (the ranking is a total order on (score, product), so the candidates'
        order does not matter)."""
        a = self.arrays
        kids = [k["id"] for k in keywords if k["id"] >= 0]
        prods = [a.kw_prod[a.kw_indptr[k]:a.kw_indptr[k + 1]] for k in kids]
        credit = np.repeat(np.asarray(kids, dtype=np.int64), [len(p) for p in prods])
        prods = np.concatenate(prods) if prods else np.zeros(0, dtype=np.int64)
        prods, first = np.unique(prods, return_index=True)  # credited to its first keyword
        credit = credit[first]
        ok = a.stock_ok[prods] & a.region_ok[prods, region] & a.season_ok[prods, season]
        if len(ex):
            ok &= ~np.isin(prods, ex)
        prods, credit = prods[ok], credit[ok]
        aid, again, cid, cooc = hist
        return prods, credit, lookup(aid, again, prods), lookup(cid, cooc, prods)

    # ---- beam search ------------------------------------------------------------------------
    def beam_search(self, xkv, owner, prefixes, trie, widths, n_best):
        """S searches at once. owner[s]: the request (row of xkv) search s decodes for;
        prefixes[s]: its prefix tokens; trie: TrieTensors; widths[s], n_best[s] as in
        Cascade.beam_search. -> per search, a list of (score, phrase id), best first."""
        S = len(prefixes)
        if S == 0:
            return []
        m, dev = self.fast, self.device
        cfg = m.cfg
        emb = m.tok_emb.weight  # (V, C)
        V = emb.shape[0]
        NB, W = max(n_best), max(widths)
        lt = dict(dtype=torch.int64, device=dev)
        own = torch.as_tensor(owner, **lt)
        xk = [k.index_select(0, own) for k, _ in xkv]  # per layer (S, NH, Q, HS)
        xv = [v.index_select(0, own) for _, v in xkv]
        # the prefixes, left-padded to P: K/V (S, NH, P, HS) per layer, h of the last token
        P = max(len(p) for p in prefixes)
        plen = torch.as_tensor([len(p) for p in prefixes], **lt)
        toks = torch.as_tensor([[0] * (P - len(p)) + p for p in prefixes], **lt)
        pmask = torch.arange(P, device=dev).unsqueeze(0) >= (P - plen).unsqueeze(1)  # (S, P)
        h, kp, vp = prefix_forward(m, toks, plen, pmask, xk, xv)
        h = h.unsqueeze(1)  # (S, 1, C): one beam, the prefix
        kg = vg = None  # generated tokens' K/V per layer, (S, W, NH, t, HS)
        # the grid: live beams in rank order
        score = torch.zeros(S, 1, dtype=torch.float32, device=dev)
        node = torch.zeros(S, 1, **lt)
        live = torch.ones(S, 1, dtype=torch.bool, device=dev)
        pos = plen.clone()  # where the next token is fed, per search
        act = torch.arange(S, **lt)  # the grid's rows: which searches are still running
        width = torch.as_tensor(widths, **lt)
        nbest = torch.as_tensor(n_best, **lt)
        fin_score = torch.full((S, NB), NEG, dtype=torch.float32, device=dev)
        fin_pid = torch.full((S, NB), BIG_ID, **lt)
        E = trie.n_entries
        while True:
            # children of every live beam by CSR gather, padded to the widest (K)
            nd = torch.where(live, node, torch.zeros_like(node))
            lo = trie.indptr[nd]
            deg = torch.where(live, trie.indptr[nd + 1] - lo, torch.zeros_like(nd))
            K = int(deg.max())
            if K == 0:
                break
            ks = torch.arange(K, device=dev)
            valid = ks < deg.unsqueeze(-1)  # (Sa, Wg, K)
            e = (lo.unsqueeze(-1) + ks).clamp(max=E - 1)
            ctok, cchild = trie.token[e], trie.child[e]
            if self.logits == "dense" or (self.logits == "auto" and K * 8 > V):
                logits = torch.gather(self.out_proj(h), -1, ctok)  # (Sa, Wg, V) -> (Sa, Wg, K)
            else:
                logits = (emb[ctok] @ h.unsqueeze(-1)).squeeze(-1)
            logits = logits.masked_fill(~valid, NEG)
            logp = torch.log_softmax(logits, dim=-1)  # NaN on dead beams: masked next
            cand = (score.unsqueeze(-1) + logp).masked_fill(~valid, NEG)
            Sa, Wg = score.shape
            cand = cand.reshape(Sa, Wg * K)
            n_sel = min(W, Wg * K)
            order = torch.sort(-cand, dim=1, stable=True).indices[:, :n_sel]
            sc = cand.gather(1, order)  # (Sa, n_sel), descending
            ok = (sc > NEG) & (torch.arange(n_sel, device=dev) < width.unsqueeze(1))
            stok = ctok.reshape(Sa, -1).gather(1, order)
            schild = cchild.reshape(Sa, -1).gather(1, order)
            parent = torch.div(order, K, rounding_mode="floor")
            fin = ok & (stok == trie.terminator)
            liv = ok & ~fin
            # finished: merge into the n_best buffer, ranked by (-score, phrase id)
            fs = torch.cat([fin_score[act], torch.where(fin, sc, torch.full_like(sc, NEG))], 1)
            fp = torch.cat([fin_pid[act], torch.where(fin, trie.phrase[schild],
                                                      torch.full_like(schild, BIG_ID))], 1)
            o = torch.sort(fp, dim=1, stable=True).indices
            fs, fp = fs.gather(1, o), fp.gather(1, o)
            o = torch.sort(-fs, dim=1, stable=True).indices[:, :NB]
            fs, fp = fs.gather(1, o), fp.gather(1, o)
            fin_score[act], fin_pid[act] = fs, fp
            # stop rules: n_best finished and the best live below the n_best-th; max_dec_len
            kth = fs.gather(1, (nbest - 1).unsqueeze(1)).squeeze(1)
            best_live = torch.where(liv, sc, torch.full_like(sc, NEG)).max(1).values
            stop = ((kth > NEG) & (best_live < kth)) | (pos >= cfg.max_dec_len - 1)
            liv = liv & ~stop.unsqueeze(1)
            n_live = liv.sum(1)
            keep = torch.nonzero(n_live > 0).squeeze(1)
            Wn = int(n_live.max())
            if Wn == 0:
                break
            # pack the live beams to the front of their rows, in selection order
            slot = torch.where(liv, liv.cumsum(1) - 1, torch.full_like(order, Wn))  # Wn: dropped

            def grid(x):
                return torch.zeros(Sa, Wn + 1, dtype=x.dtype, device=dev).scatter(
                    1, slot, x)[:, :Wn]
            tok, score, node, parent = grid(stok), grid(sc), grid(schild), grid(parent)
            live = torch.arange(Wn, device=dev) < n_live.unsqueeze(1)
            if len(keep) < Sa:  # searches that stopped leave the grid
                tok, score, node, parent, live = (x[keep] for x in (tok, score, node, parent,
                                                                     live))
                act, pos, width, nbest = act[keep], pos[keep], width[keep], nbest[keep]
                xk, xv = [x[keep] for x in xk], [x[keep] for x in xv]
                kp, vp, pmask = [x[keep] for x in kp], [x[keep] for x in vp], pmask[keep]
            if kg is not None:  # each beam's cache from its parent's (in the uncompacted grid)
                src = keep.unsqueeze(1)
                kg = [x[src, parent] for x in kg]
                vg = [x[src, parent] for x in vg]
            h, kg, vg = self.decoder(tok, pos, kp, vp, pmask, kg, vg, xk, xv)
            pos = pos + 1
        scores, pids = fin_score.cpu().tolist(), fin_pid.cpu().tolist()
        return [[(s, p) for s, p in zip(scores[i][:n_best[i]], pids[i][:n_best[i]]) if s > NEG]
                for i in range(S)]


# ---- the decoder, batched ------------------------------------------------------------------
class StepLayer(nn.Module):
    """One decoder layer's modules, flat (what DecoderStep reads)."""

    def __init__(self, layer):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = layer.ln1, layer.ln2, layer.ln3
        self.qkv, self.sproj = layer.self_attn.qkv, layer.self_attn.proj
        self.cq, self.cproj = layer.cross_attn.q, layer.cross_attn.proj
        self.fc1, self.fc2 = layer.ffn.fc1, layer.ffn.fc2


class DecoderStep(nn.Module):
    """One decoder step for a grid of beams, and the dense output projection; holds the model's
    own modules (or those of its MKLDNN copy), so it is model.decode_step's arithmetic.
    TorchScript-able (step="script")."""

    def __init__(self, model):
        super().__init__()
        self.layers = nn.ModuleList(StepLayer(layer) for layer in model.dec)
        self.tok_emb, self.pos_emb, self.ln_dec = model.tok_emb, model.pos_emb, model.ln_dec
        self.n_heads = model.cfg.n_heads

    def forward(self, tok: torch.Tensor, pos: torch.Tensor, kp: List[torch.Tensor],
                vp: List[torch.Tensor], pmask: torch.Tensor, kg: Optional[List[torch.Tensor]],
                vg: Optional[List[torch.Tensor]], xk: List[torch.Tensor],
                xv: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor],
                                                 List[torch.Tensor]]:
        """tok (S, W) the token each beam feeds, at position pos (S,) of its search; kp, vp per
        layer (S, NH, P, HS) the prefix's K/V with pmask (S, P) True on real tokens; kg, vg per
        layer (S, W, NH, t, HS) the beams' generated tokens' K/V (None at the first step); xk, xv
        per layer (S, NH, Q, HS) the memory's. -> h (S, W, C) after ln_dec, and kg, vg with this
        token appended (t + 1). A search's beams share its prefix's keys (never copied)."""
        S, W = tok.shape[0], tok.shape[1]
        nh = self.n_heads
        C = self.tok_emb.weight.shape[1]
        hs = C // nh
        scale = 1.0 / math.sqrt(hs)
        y = self.tok_emb(tok) + self.pos_emb.weight[pos].unsqueeze(1)  # (S, W, C)
        pad = (~pmask)[:, None, None, :]  # (S, 1, 1, P)
        P = pmask.shape[1]
        new_kg: List[torch.Tensor] = []
        new_vg: List[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.ln1(y)).chunk(3, dim=-1)
            q = q.reshape(S, W, nh, hs)
            k = k.reshape(S, W, nh, 1, hs)
            v = v.reshape(S, W, nh, 1, hs)
            if kg is not None and vg is not None:
                k = torch.cat([kg[i], k], dim=3)  # (S, W, NH, t+1, HS)
                v = torch.cat([vg[i], v], dim=3)
            new_kg.append(k)
            new_vg.append(v)
            qh = q.transpose(1, 2)  # (S, NH, W, HS)
            sp = (qh @ kp[i].transpose(-1, -2)) * scale  # (S, NH, W, P)
            sp = sp.masked_fill(pad, -3.4028234663852886e38)  # -FLT_MAX, as Attention.attend
            sg = (q.unsqueeze(3) @ k.transpose(-1, -2)) * scale  # (S, W, NH, 1, t+1)
            att = torch.softmax(torch.cat([sp, sg.squeeze(3).transpose(1, 2)], dim=-1), dim=-1)
            o = (att[..., :P] @ vp[i]).transpose(1, 2)  # (S, W, NH, HS)
            o = o + (att[..., P:].transpose(1, 2).unsqueeze(3) @ v).squeeze(3)
            y = y + layer.sproj(o.reshape(S, W, C))
            cq = layer.cq(layer.ln2(y)).reshape(S, W, nh, hs).transpose(1, 2)  # (S, NH, W, HS)
            ca = torch.softmax((cq @ xk[i].transpose(-1, -2)) * scale, dim=-1) @ xv[i]
            y = y + layer.cproj(ca.transpose(1, 2).reshape(S, W, C))
            y = y + layer.fc2(F.gelu(layer.fc1(layer.ln3(y))))
        return self.ln_dec(y), new_kg, new_vg


def prefix_forward(m, toks, plen, pmask, xk, xv):
    """Prefixes (S, P) left-padded (pmask (S, P) True on real tokens; plen their lengths) ->
    h of the last token (S, C) and per layer the prefix's K, V (S, NH, P, HS)."""
    S, P = toks.shape
    dev = toks.device
    pos = (torch.arange(P, device=dev).unsqueeze(0) - (P - plen).unsqueeze(1)).clamp(min=0)
    y = m.tok_emb(toks) + m.pos_emb(pos)  # (S, P, C)
    causal = torch.tril(torch.ones(P, P, dtype=torch.bool, device=dev))
    mask = causal[None, None] & pmask[:, None, None, :]  # (S, 1, P, P)
    ks, vs = [], []
    for li, layer in enumerate(m.dec):
        a = layer.self_attn
        q, k, v = a.qkv(layer.ln1(y)).chunk(3, dim=-1)
        k, v = a.heads(k), a.heads(v)
        ks.append(k)
        vs.append(v)
        y = y + a.attend(a.heads(q), k, v, None, mask)
        ca = layer.cross_attn
        y = y + ca.attend(ca.heads(ca.q(layer.ln2(y))), xk[li], xv[li])
        y = y + layer.ffn(layer.ln3(y))
    return m.ln_dec(y[:, -1]), ks, vs

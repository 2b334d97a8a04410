import numpy as np
import pytest
import torch

from train import shop as shop_mod
from train.calendar import season_of
from train.cascade import Cascade
from train.data import ACTIONS, RequestError, make_request
from train.vocab import BOS, EOS, SEP


def random_request(rng, shop, catalog, max_events):
    n = int(rng.integers(0, max_events + 6))
    now = int(1735689600 + rng.integers(0, 400 * 86400))
    events = []
    for _ in range(n):
        a = ACTIONS[int(rng.integers(4))]
        e = {"action": a, "ts": int(now - rng.integers(-3600, 90 * 86400))}
        if a == "search":
            e["query"] = " ".join(rng.choice(["wool", "scarf", "tent", "zzz", "mug"], size=2))
        else:
            e["item"] = catalog.ids[int(rng.integers(len(catalog.ids)))] \
                if rng.random() < 0.9 else "unknown-%d" % rng.integers(100)
        events.append(e)
    return {"now": now, "region": shop["regions"][int(rng.integers(4))]["name"], "events": events,
            "sections": int(rng.integers(1, 5)), "keywords_per_section": int(rng.integers(1, 5)),
            "products_per_section": int(rng.integers(1, 8)),
            "exclude": [catalog.ids[int(i)] for i in rng.integers(0, len(catalog.ids), size=5)]}


def test_random_requests_never_leave_the_tries(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    cascade = Cascade(model, tables, catalog)
    rng = np.random.default_rng(0)
    for _ in range(40):
        req = random_request(rng, shop, catalog, model.cfg.max_events)
        front = cascade.recommend(req)
        assert len(front["sections"]) == req["sections"]
        assert front["dropped_events"] == max(0, len(req["events"]) - model.cfg.max_events)
        themes = [s["theme"]["id"] for s in front["sections"]]
        assert len(set(themes)) == len(themes), "one distinct theme per section"
        r = tables.regions[tables.region_index[req["region"]]]
        season = season_of(req["now"], r["season_offset"], r["fixed_season"])
        shown = []
        for sec in front["sections"]:
            tid = sec["theme"]["id"]
            assert 0 <= tid < len(tables.theme_texts)
            assert tables.theme_trie.contains(tables.theme_tokens[tid] + [SEP]) == tid
            assert sec["theme"]["text"] == tables.theme_texts[tid]
            assert len(sec["keywords"]) == req["keywords_per_section"]
            kw_ids = [k["id"] for k in sec["keywords"]]
            for k in kw_ids:
                assert tables.keyword_trie.contains(tables.keyword_tokens[k] + [EOS]) == k
            scores = [k["score"] for k in sec["keywords"]]
            assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
            assert len(sec["products"]) <= req["products_per_section"]
            pscores = [p["score"] for p in sec["products"]]
            assert pscores == sorted(pscores, reverse=True)
            for p in sec["products"]:
                i = catalog.index[p["id"]]
                assert p["keyword"] in kw_ids and p["keyword"] in catalog.keywords[i]
                assert p["id"] not in req["exclude"] and catalog.stock[i] > 0
                assert tables.region_index[req["region"]] in catalog.regions[i]
                assert season in catalog.seasons[i]
                shown.append(p["id"])
        assert len(shown) == len(set(shown)), "no product twice on a page"
        assert cascade.recommend(req) == front, "deterministic"


def phrase_logprob(model, mem, prefix, phrase, trie):
    """log P(phrase | prefix) under the trie-normalised softmax, by teacher forcing."""
    seq = prefix + phrase
    with torch.no_grad():
        logits = model.decode_train(mem, torch.tensor([seq[:-1]]))[0]
    total = torch.tensor(0.0)
    node = 0
    for i in range(len(prefix) - 1, len(seq) - 1):
        toks, kids = trie.children(node)
        lp = torch.log_softmax(logits[i, toks], dim=-1)
        j = toks.index(seq[i + 1])
        total = total + lp[j]
        node = kids[j]
    return float(total)


def test_wide_beam_equals_exhaustive_ranking(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    n_themes = len(tables.theme_texts)
    cascade = Cascade(model, tables, catalog, theme_beam=n_themes, keyword_beam=64)
    s = [x for x in shop["shoppers"] if x["split"] == "eval"][0]
    hist, now, _ = shop_mod.holdout(s)
    req = make_request(hist, now, shop["regions"][s["region"]]["name"], catalog,
                       sections=n_themes, kws=3, prods=2)
    front = cascade.recommend(req)
    from train.data import collate, featurize_one, validate_request
    events, _ = validate_request(req, tables, model.cfg)
    with torch.no_grad():
        mem = model.encode(collate([featurize_one(events, now, req["region"], tables, catalog,
                                                  model.cfg)]))
    brute = sorted(((phrase_logprob(model, mem, [BOS], tables.theme_tokens[t] + [SEP],
                                    tables.theme_trie), t) for t in range(n_themes)),
                   key=lambda x: (-x[0], x[1]))
    assert [sec["theme"]["id"] for sec in front["sections"]] == [t for _, t in brute]
    for sec, (lp, _) in zip(front["sections"], brute):
        assert sec["theme"]["score"] == pytest.approx(lp, abs=1e-4)
    sec = front["sections"][0]
    prefix = [BOS] + tables.theme_tokens[sec["theme"]["id"]] + [SEP]
    kb = sorted(((phrase_logprob(model, mem, prefix, tables.keyword_tokens[k] + [EOS],
                                 tables.keyword_trie), k)
                 for k in range(len(tables.keyword_texts))), key=lambda x: (-x[0], x[1]))
    assert [k["id"] for k in sec["keywords"]] == [k for _, k in kb[:3]]


def test_unconstrained_decoding_reports_phrases_outside_the_tables(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    cascade = Cascade(model, tables, catalog)
    rng = np.random.default_rng(1)
    seen_outside = False
    for _ in range(10):
        front = cascade.recommend(random_request(rng, shop, catalog, 10), constrained=False)
        for sec in front["sections"]:
            for ph, trie, term, texts in ((sec["theme"], tables.theme_trie, SEP,
                                           tables.theme_texts),)+tuple(
                    (k, tables.keyword_trie, EOS, tables.keyword_texts) for k in sec["keywords"]):
                if ph["id"] >= 0:
                    assert ph["text"] == texts[ph["id"]]
                else:
                    seen_outside = True
                    assert trie.contains(tables.vocab.encode(ph["text"]) + [term]) == -1
    assert seen_outside, "an untrained model decoding freely invents phrases"


@pytest.mark.parametrize("patch, message", [
    ({"now": -5}, "now is negative"),
    ({"now": 0}, "now is missing or 0"),
    ({"now": 2 ** 53}, "now is above 9007199254740991"),
    ({"now": 1.5}, "now must be an integer"),
    ({"region": "mars"}, "unknown region 'mars'"),
    ({"sections": 0}, "sections is missing or 0: it must be an integer in 1..16"),
    ({"sections": 99}, "sections must be an integer in 1..16"),
    ({"keywords_per_section": -1}, "keywords_per_section"),
    ({"products_per_section": "4"}, "products_per_section"),
    ({"events": [{"action": "like", "ts": 5}]}, r"events\[0\].action must be one of"),
    ({"events": [{"action": "view", "ts": -1}]}, r"events\[0\].ts is negative"),
    ({"events": [{"action": "view"}]}, r"events\[0\].ts is missing or 0"),
    ({"events": [{"ts": 5}]}, r"events\[0\].action is missing"),
    ({"region": "eu\x00x"}, r"region contains a NUL character \(at byte 2\)"),
    ({"shopper_id": "\u00e9\udc80"}, r"shopper_id is not valid UTF-8 \(at byte 2\)"),
    ({"exclude": ["p1", 7]}, r"exclude\[1\] must be a string"),
    ({}, None),
    ({"events": [{"action": "search", "ts": 1, "query": "x" * 5000}]}, r"events\[0\].query"),
    ({"events": {"a": 1}}, "events must be a list"),
])
def test_bad_requests_are_refused_with_a_message(tiny_world, patch, message):
    shop, tables, catalog, model, _ = tiny_world
    req = {"now": 1735689600, "region": "eu", "events": [], "sections": 2,
           "keywords_per_section": 2, "products_per_section": 2, "exclude": []}
    req.update(patch)
    if message is None:  # the empty request
        req, message = {}, "empty request"
    with pytest.raises(RequestError, match=message):
        Cascade(model, tables, catalog).recommend(req)


def test_too_many_sections_for_the_themes(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    req = {"now": 1735689600, "region": "eu", "events": [], "sections": 7,
           "keywords_per_section": 2, "products_per_section": 2, "exclude": []}
    with pytest.raises(RequestError, match="at most 6"):
        Cascade(model, tables, catalog).recommend(req)


def test_ranker_features_reorder_products(tiny_world):
    """A large 'again' weight puts a product the shopper already bought first in its section;
    without it the retrieval head decides; a bought product that is a candidate carries again=1."""
    shop, tables, catalog, model, _ = tiny_world
    req = {"now": 1750000000, "region": "eu", "events": [], "sections": 1,
           "keywords_per_section": 2, "products_per_section": 50, "exclude": []}
    c = Cascade(model, tables, catalog)
    got = []
    c.recommend(req, collect=got)
    u, (cands,) = got[0]
    assert len(cands) >= 3 and all(ag == 0 and co == 0 for _, _, ag, co in cands)
    plain = c.pick(cands, set(), 50, u)
    target = plain[-1]["index"]  # the head's least favourite candidate
    bought = [(p, kw, np.float32(1.0) if p == target else ag, co) for p, kw, ag, co in cands]
    assert c.pick(bought, set(), 50, u)[0]["index"] != target
    again = c.pick(bought, set(), 50, u, dict(c.ranker, again=100.0))
    assert again[0]["index"] == target
    assert again[0]["score"] == pytest.approx(plain[-1]["score"] + 100.0, rel=1e-5)
    shown = {again[0]["index"]}
    assert target not in [p["index"] for p in c.pick(bought, shown, 50, u)], "de-duplicated"


def test_history_features_decay_newest_first(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    c = Cascade(model, tables, catalog, {"decay": 0.5})
    a, b = catalog.ids[0], catalog.ids[1]
    events = [{"action": "view", "ts": 1, "item": a}, {"action": "search", "ts": 2, "query": "x"},
              {"action": "view", "ts": 3, "item": "unknown"}, {"action": "view", "ts": 4, "item": b},
              {"action": "cart", "ts": 5, "item": b}]
    again, cooc = c.history_features(events)
    assert again[1] == np.float32(1.5) and again[0] == np.float32(0.25)
    want = {}
    for p, w in ((1, 1.0), (1, 0.5), (0, 0.25)):
        for q, wt in catalog.related[p]:
            want[q] = want.get(q, 0.0) + w * wt
    assert set(cooc) == set(want)
    for q in want:
        assert cooc[q] == pytest.approx(want[q], rel=1e-6)


def test_tuning_reranker_matches_the_cascade(tiny_world):
    """train.tune re-ranks precomputed arrays; it must pick what Cascade.pick picks, bit for bit."""
    from train.tune import candidate_arrays, fast_pick
    shop, tables, catalog, model, _ = tiny_world
    c = Cascade(model, tables, catalog)
    rng = np.random.default_rng(4)
    for trial in range(10):
        req = random_request(rng, shop, catalog, 20)
        req["products_per_section"] = 5
        got = []
        c.recommend(req, collect=got)
        u, sections = got[0]
        ranker = dict(c.ranker, again=float(rng.uniform(0, 5)), cooc=float(rng.uniform(0, 40)),
                      popularity=float(rng.uniform(0, 2)))
        shown_a, shown_b = set(), np.zeros(len(catalog.ids), dtype=bool)
        for cands in sections:
            a = [(p["index"], p["score"]) for p in c.pick(cands, shown_a, 5, u, ranker)]
            b = fast_pick(candidate_arrays(c, cands, u), shown_b, 5, ranker)
            assert a == b


def test_batched_encoder_gives_the_same_storefronts(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    c = Cascade(model, tables, catalog, {"again": 1.0, "cooc": 3.0, "popularity": 0.2})
    rng = np.random.default_rng(7)
    reqs = [random_request(rng, shop, catalog, model.cfg.max_events) for _ in range(12)]
    many = c.recommend_many(reqs)
    for req, got in zip(reqs, many):
        one = c.recommend(req)
        assert [s["theme"]["id"] for s in got["sections"]] == \
            [s["theme"]["id"] for s in one["sections"]]
        assert [[p["id"] for p in s["products"]] for s in got["sections"]] == \
            [[p["id"] for p in s["products"]] for s in one["sections"]]

"""The learned ranker: its reference scoring (train/cascade.py LearnedRanker), the batched
cascade's use of it, the bundle's checks, and train.ranker end to end on the tiny shop."""
import json

import numpy as np
import pytest

from train import ranker as ranker_mod
from train.bundle import export_bundle
from train.cascade import RANKER_FEATURES, Cascade, LearnedRanker
from train.cascade_batched import BatchedCascade
from train.data import validate_request
from train.tests.test_cascade import random_request

F = len(RANKER_FEATURES)


def one_feature(name, decay=0.5, cooc_half=0.25):
    w2 = [0.0] * F
    w2[RANKER_FEATURES.index(name)] = 1.0
    return {"kind": "learned", "decay": decay, "features": list(RANKER_FEATURES),
            "cooc_half": cooc_half, "hidden": 0, "w1": [], "b1": [], "w2": w2, "b2": 0.0}


def mlp(seed=3, hidden=5):
    rng = np.random.default_rng(seed)
    return {"kind": "learned", "decay": 0.7, "features": list(RANKER_FEATURES),
            "cooc_half": 0.1, "hidden": hidden,
            "w1": rng.normal(size=(hidden, F)).tolist(), "b1": rng.normal(size=hidden).tolist(),
            "w2": rng.normal(size=hidden).tolist(), "b2": 0.25}


def test_a_learned_dot_ranks_as_the_head_alone(tiny_world):
    """A learned linear ranker that is the feature `dot` picks what the weights' mix at zero
    picks, scores included (the same float32 dot)."""
    shop, tables, catalog, model, _ = tiny_world
    head = Cascade(model, tables, catalog, {"again": 0.0, "cooc": 0.0, "popularity": 0.0})
    dot = Cascade(model, tables, catalog, one_feature("dot"))
    rng = np.random.default_rng(1)
    for _ in range(10):
        req = random_request(rng, shop, catalog, model.cfg.max_events)
        a, b = head.recommend(req), dot.recommend(req)
        assert [[(p["index"], p["score"]) for p in s["products"]] for s in a["sections"]] == \
            [[(p["index"], p["score"]) for p in s["products"]] for s in b["sections"]]


def test_features_follow_their_definitions(tiny_world):
    """Each feature alone is the score: recency, keyword rank, section and the history's
    counts as their definitions say (kernels/decode.h vt_ranker_model)."""
    shop, tables, catalog, model, _ = tiny_world
    rng = np.random.default_rng(2)
    for _ in range(6):
        req = random_request(rng, shop, catalog, model.cfg.max_events)
        c = Cascade(model, tables, catalog, one_feature("recency"))
        kept, _ = validate_request(req, tables, model.cfg)
        events = [e for e in kept if e.get("item") in catalog.index]
        got = []
        front = c.recommend(req, features=got)
        for si, (sec, (idx, X)) in enumerate(zip(front["sections"], got[0])):
            assert (X[:, RANKER_FEATURES.index("section")] == si).all()
            assert (X[:, RANKER_FEATURES.index("theme_score")] ==
                    np.float32(sec["theme"]["score"])).all()
            again, cooc = c.history_features(kept)
            for p, x in zip(idx.tolist(), X):
                k = next((k for k, e in enumerate(reversed(events))
                          if catalog.index[e["item"]] == p or
                          p in [q for q, _ in catalog.related[catalog.index[e["item"]]]]), None)
                assert x[RANKER_FEATURES.index("recency")] == (0 if k is None else
                                                               np.float32(1) / np.float32(k + 1))
                assert x[RANKER_FEATURES.index("again")] == again.get(p, 0)
                assert x[RANKER_FEATURES.index("in_history")] == (p in again)
                assert x[RANKER_FEATURES.index("cooc")] == cooc.get(p, 0)
                rank = int(x[RANKER_FEATURES.index("keyword_rank")])
                kw = sec["keywords"][rank]
                assert p in catalog.kw_products[kw["id"]]
                assert all(p not in catalog.kw_products[k["id"]] for k in sec["keywords"][:rank])
                assert x[RANKER_FEATURES.index("keyword_score")] == np.float32(kw["score"])
            for p in sec["products"]:
                assert p["score"] == float(X[list(idx).index(p["index"]),
                                             RANKER_FEATURES.index("recency")])


def test_batched_cascade_serves_a_learned_ranker_as_the_reference(tiny_world):
    shop, tables, catalog, model, _ = tiny_world
    ref = Cascade(model, tables, catalog, mlp())
    bat = BatchedCascade(model, tables, catalog, mlp())
    rng = np.random.default_rng(5)
    reqs = [random_request(rng, shop, catalog, model.cfg.max_events) for _ in range(8)]
    want = [ref.recommend(r) for r in reqs]
    got = bat.storefronts(reqs)
    for g, w in zip(got, want):
        assert [[p["index"] for p in s["products"]] for s in g["sections"]] == \
            [[p["index"] for p in s["products"]] for s in w["sections"]]


@pytest.mark.parametrize("bad, field", [
    ({"features": list(RANKER_FEATURES)[::-1]}, "features"),
    ({"hidden": 40}, "hidden"),
    ({"cooc_half": 0.0}, "cooc_half"),
    ({"w2": [1.0, 2.0]}, "w2"),
    ({"kind": "forest"}, "kind")])
def test_export_refuses_a_malformed_learned_ranker(tiny_world, tmp_path, bad, field):
    shop, tables, catalog, model, _ = tiny_world
    with pytest.raises(ValueError, match=field):
        export_bundle(str(tmp_path / "b"), model, tables, ranker=dict(mlp(), **bad))


def test_score_sums_in_the_engines_order():
    """LearnedRanker's MLP: float32 operation by operation, as kernels/ranker.h sums it."""
    r = LearnedRanker(mlp(hidden=4))
    X = np.random.default_rng(0).normal(size=(20, F)).astype(np.float32)
    for x, got in zip(X, r.score(X)):
        s = np.float32(r.b2)
        for j in range(4):
            h = np.float32(r.b1[j])
            for i in range(F):
                h = np.float32(h + np.float32(r.w1[j, i] * x[i]))
            s = np.float32(s + np.float32(r.w2[j] * max(h, np.float32(0))))
        assert got == s


def ranker_inputs(tiny_world, tmp_path, monkeypatch, mix):
    """train.ranker's inputs: the tiny shop with its eval shoppers made validation ones (it has
    few of those), the model behind its checkpoint loader, and a tuned ranker.json of this mix."""
    shop, _, _, model, _ = tiny_world
    import copy
    shop = copy.deepcopy(shop)
    for s in shop["shoppers"]:
        if s["split"] == "eval":
            s["split"] = "valid"
    shop_path = tmp_path / "shop.json"
    shop_path.write_text(json.dumps(shop))
    monkeypatch.setattr(ranker_mod, "load_checkpoint", lambda p: (model, None))
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"ranker": dict(mix, decay=0.6),
                                 "storefront": {"sections": 4, "keywords": 4, "products": 4,
                                                "ranking": "score"}}))
    return ["--checkpoint", str(tmp_path / "m.pt"), "--shop", str(shop_path), "--tuned",
            str(tuned)]


def test_train_ranker_end_to_end(tiny_world, tmp_path, monkeypatch):
    """train.ranker on the tiny shop's validation shoppers writes a ranker the bundle takes and
    the cascade serves; the held-out metrics it reports are those of the exported weights."""
    shop, tables, catalog, model, _ = tiny_world
    import torch
    from train.shop import holdout
    args = ranker_inputs(tiny_world, tmp_path, monkeypatch,
                         {"again": 1.0, "cooc": 2.0, "popularity": 0.1})
    out = tmp_path / "learned.json"
    torch.manual_seed(0)
    assert ranker_mod.main(args + ["--out", str(out), "--hidden", "0,4", "--epochs", "2",
                                   "--holdout", "0.3"]) == 0
    res = json.loads(out.read_text())
    r = res["ranker"]
    assert r["kind"] == "learned" and r["decay"] == 0.6 and r["hidden"] in (0, 4)
    assert set(res["models"]) == {"0", "4"}
    m = export_bundle(str(tmp_path / "bundle"), model, tables, ranker=r)
    assert m["ranker"]["kind"] == "learned" and "again" not in m["ranker"]
    c = Cascade(model, tables, catalog, m["ranker"])
    s = [x for x in shop["shoppers"] if x["split"] == "valid"][0]
    hist, now, _ = holdout(s)
    from train.data import make_request
    front = c.recommend(make_request(hist, now, shop["regions"][s["region"]]["name"], catalog,
                                     2, 2, 4))
    assert front["sections"] and all(len(sec["products"]) <= 4 for sec in front["sections"])


def test_dropped_features_are_exported_as_zero(tiny_world, tmp_path, monkeypatch, capsys):
    """--drop cooc,cooc_sat (the ablation without co-occurrence): every model trained gives those
    features no weight, so the engine's raw co-occurrence cannot move a score; and a mix that
    weighs a dropped feature is refused before any decoding, naming it."""
    import torch
    args = ranker_inputs(tiny_world, tmp_path, monkeypatch,
                         {"again": 1.0, "cooc": 0.0, "popularity": 0.1})
    out = tmp_path / "learned.json"
    for hidden in ("0", "4"):
        torch.manual_seed(0)
        assert ranker_mod.main(args + ["--out", str(out), "--hidden", hidden, "--epochs", "2",
                                       "--holdout", "0.3", "--drop", "cooc,cooc_sat"]) == 0
        res = json.loads(out.read_text())
        r = res["ranker"]
        assert res["dropped_features"] == ["cooc", "cooc_sat"] and r["hidden"] == int(hidden)
        gone = [RANKER_FEATURES.index("cooc"), RANKER_FEATURES.index("cooc_sat")]
        rows = r["w1"] if r["hidden"] else [r["w2"]]
        for row in rows:
            assert [row[j] for j in gone] == [0.0, 0.0]
        kept = [j for j in range(F) if j not in gone]
        assert any(row[j] != 0.0 for row in rows for j in kept)
        # the reference scoring agrees: co-occurrence changed, the score is the same bits
        X = np.random.default_rng(int(hidden)).uniform(0, 3, size=(6, F)).astype(np.float32)
        Y = X.copy()
        Y[:, gone] = np.float32(50.0)
        lr = LearnedRanker(r)
        assert np.array_equal(lr.score(X), lr.score(Y))
    capsys.readouterr()
    args = ranker_inputs(tiny_world, tmp_path, monkeypatch,
                         {"again": 1.0, "cooc": 2.0, "popularity": 0.1})
    out.unlink()
    assert ranker_mod.main(args + ["--out", str(out), "--drop", "cooc"]) == 2
    assert "weighs cooc" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        ranker_mod.main(args + ["--out", str(out), "--drop", "nope"])
    assert "no ranker feature nope" in capsys.readouterr().err


def test_cache_is_reused_only_for_the_same_inputs(tiny_world, tmp_path, monkeypatch, capsys):
    """--cache: a second run on the same inputs decodes nothing; one with another page shape
    collects its own candidates instead of training on the first run's."""
    mix = {"again": 1.0, "cooc": 0.0, "popularity": 0.1}
    args = ranker_inputs(tiny_world, tmp_path, monkeypatch, mix)
    cache, out = tmp_path / "c.npz", tmp_path / "learned.json"
    run = args + ["--out", str(out), "--hidden", "0", "--epochs", "1", "--holdout", "0.3",
                  "--cache", str(cache)]
    assert ranker_mod.main(run) == 0 and cache.exists()
    first = json.loads(out.read_text())
    real_collect = ranker_mod.collect
    monkeypatch.setattr(ranker_mod, "collect", lambda *a, **k: pytest.fail("decoded again"))
    assert ranker_mod.main(run) == 0
    assert json.loads(out.read_text())["ranker"] == first["ranker"]
    calls = []
    monkeypatch.setattr(ranker_mod, "collect",
                        lambda *a, **k: calls.append(a[3]) or real_collect(*a, **k))
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    tuned["storefront"]["sections"] = 2
    (tmp_path / "tuned.json").write_text(json.dumps(tuned))
    capsys.readouterr()
    assert ranker_mod.main(run) == 0
    assert calls and calls[0]["sections"] == 2
    assert "candidates of other inputs" in capsys.readouterr().err

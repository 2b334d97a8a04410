"""The batched cascade (train/cascade_batched.py) answers what the reference (train/cascade.py)
answers: the same theme, keyword and product ids in the same order, scores to float rounding."""
import copy
import itertools

import numpy as np
import pytest
import torch

from train.cascade import Cascade
from train.cascade_batched import BatchedCascade
from train.data import Catalog, RequestError, Tables
from train.golden import golden_requests
from train.model import Config, Model
from train.tests.conftest import TINY
from train.tests.test_cascade import random_request

RANKER = {"again": 1.0, "cooc": 3.0, "popularity": 0.2}  # every ranking feature in play


def ids(front):
    return [(s["theme"]["id"], [k["id"] for k in s["keywords"]],
             [(p["id"], p["index"], p["keyword"]) for p in s["products"]])
            for s in front["sections"]], front["dropped_events"]


def assert_same(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert ids(g) == ids(w), "request %d" % i
        for sg, sw in zip(g["sections"], w["sections"]):
            assert sg["theme"]["text"] == sw["theme"]["text"]
            assert sg["theme"]["score"] == pytest.approx(sw["theme"]["score"], abs=1e-5)
            for a, b in zip(sg["keywords"] + sg["products"], sw["keywords"] + sw["products"]):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5, rel=1e-5)
            assert [k["text"] for k in sg["keywords"]] == [k["text"] for k in sw["keywords"]]


def branching_world(shop, flat=False, max_dec_len=16):
    """The tiny shop with theme and keyword phrases renamed so that the tries branch at every
    level and phrases end at several depths (the tiny shop's tries branch at the root only, so
    its later steps have one child each and never test the KV cache or the beam bookkeeping),
    and a model with sharpened weights; flat: every word embeds to 0, so every step's logits
    are equal and only the tie rules decide (stable order, then phrase id); max_dec_len: the
    decoder's positions (a short one cuts keywords off, as the reference does)."""
    rng = np.random.default_rng(2)

    def phrases(n, levels):
        pool = sorted({" ".join(p[:k]) for p in itertools.product(*levels)
                       for k in range(1, len(levels) + 1)})
        return [pool[i] for i in rng.choice(len(pool), n, replace=False)]

    shop = copy.deepcopy(shop)
    for t, name in zip(shop["themes"], phrases(len(shop["themes"]),
                                               [["ta", "tb"], ["ua", "ub", "uc"], ["va", "vb"]])):
        t["name"] = name
    for k, text in zip(shop["keywords"], phrases(len(shop["keywords"]), [
            ["ka", "kb", "kc"], ["la", "lb", "lc"], ["ma", "mb"]])):
        k["text"] = text
    torch.manual_seed(0)
    tables = Tables.from_shop(shop)
    cfg = Config(vocab_size=len(tables.vocab), n_regions=len(tables.regions),
                 **dict(TINY, max_dec_len=max_dec_len))
    catalog = Catalog.from_shop(shop, cfg.code_levels, cfg.codebook)
    model = Model(cfg)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
        if flat:
            model.tok_emb.weight[5:] = 0
    return shop, tables, catalog, model


@pytest.fixture(scope="module")
def branching(tiny_shop):
    return branching_world(tiny_shop)


@pytest.fixture(scope="module", params=["tiny", "branching", "ties"])
def golden(request, tiny_world):
    """(world, golden requests, the reference's storefronts) for three worlds."""
    torch.set_num_threads(1)
    shop, tables, catalog, model, _ = tiny_world
    if request.param != "tiny":
        shop, tables, catalog, model = branching_world(shop, request.param == "ties")
    reqs = golden_requests(shop, catalog, model.cfg.max_events, 40)
    ref = Cascade(model, tables, catalog, RANKER)
    with torch.no_grad():
        want = [ref.recommend(r) for r in reqs]
    if request.param == "ties":
        assert any(len({k["score"] for k in s["keywords"]}) < len(s["keywords"])
                   for f in want for s in f["sections"]), "equal scores decided by the tie rules"
    return (shop, tables, catalog, model), reqs, want


def batches(reqs, size):
    return [reqs[i:i + size] for i in range(0, len(reqs), size)]


@pytest.mark.parametrize("size", [1, 7, "all"])
def test_golden_requests_batched_give_the_reference_ids(golden, size):
    (shop, tables, catalog, model), reqs, want = golden
    bc = BatchedCascade(model, tables, catalog, RANKER)
    got = [f for b in batches(reqs, len(reqs) if size == "all" else size)
           for f in bc.storefronts(b)]
    assert_same(got, want)


@pytest.mark.parametrize("options", [dict(step="eager", encode_chunk=0),
                                     dict(step="eager", encode_chunk=5), dict(step="frozen"),
                                     dict(mkldnn=True)])
def test_golden_requests_other_options(golden, options):
    """The speed options (bench_batched.py): no TorchScript, encoder chunks, a frozen step,
    MKLDNN Linear layers."""
    (shop, tables, catalog, model), reqs, want = golden
    assert_same(BatchedCascade(model, tables, catalog, RANKER, **options).storefronts(reqs), want)


@pytest.mark.parametrize("logits", ["dense", "sparse"])
def test_random_requests_both_logit_paths(branching, logits):
    """Random shapes (1-4 sections and keywords, histories over the maximum, exclusions) and
    both ways of computing the children's logits; narrow beams so that searches stop early."""
    shop, tables, catalog, model = branching
    rng = np.random.default_rng(5)
    reqs = [random_request(rng, shop, catalog, model.cfg.max_events) for _ in range(24)]
    for tb, kb in ((8, 8), (2, 3)):
        ref = Cascade(model, tables, catalog, RANKER, theme_beam=tb, keyword_beam=kb)
        with torch.no_grad():
            want = [ref.recommend(r) for r in reqs]
        bc = BatchedCascade(model, tables, catalog, RANKER, theme_beam=tb, keyword_beam=kb,
                            logits=logits)
        assert_same(bc.storefronts(reqs), want)


def test_bad_requests_in_a_batch(golden):
    (shop, tables, catalog, model), reqs, want = golden
    bad = dict(reqs[0], region="mars")
    bc = BatchedCascade(model, tables, catalog, RANKER)
    with pytest.raises(RequestError, match="unknown region 'mars'"):
        bc.storefronts([reqs[1], bad])
    got = bc.storefronts([reqs[1], bad, {}, reqs[2]], errors=True)
    assert isinstance(got[1], RequestError) and isinstance(got[2], RequestError)
    assert_same([got[0], got[3]], [want[1], want[2]])
    assert all(isinstance(x, RequestError) for x in bc.storefronts([bad], errors=True))
    assert bc.storefronts([]) == []


def test_wide_beam_and_more_sections_than_the_beam(branching):
    """Every theme as a section (sections > theme_beam) and wide keyword beams."""
    shop, tables, catalog, model = branching
    n = len(tables.theme_texts)
    reqs = [dict(r, sections=n, keywords_per_section=5)
            for r in golden_requests(shop, catalog, model.cfg.max_events, 12)]
    ref = Cascade(model, tables, catalog, RANKER, theme_beam=3, keyword_beam=16)
    with torch.no_grad():
        want = [ref.recommend(r) for r in reqs]
    bc = BatchedCascade(model, tables, catalog, RANKER, theme_beam=3, keyword_beam=16)
    assert_same(bc.storefronts(reqs), want)


def test_positions_run_out_as_in_the_reference(tiny_shop):
    """max_dec_len 7: after a 3-word theme ([BOS] + 3 + [SEP] = 5 positions) only 1-word
    keywords fit, after a 2-word theme 1- and 2-word ones; fewer keywords than asked for."""
    shop, tables, catalog, model = branching_world(tiny_shop, max_dec_len=7)
    reqs = [dict(r, sections=4, keywords_per_section=6)
            for r in golden_requests(shop, catalog, model.cfg.max_events, 8)]
    ref = Cascade(model, tables, catalog, RANKER)
    with torch.no_grad():
        want = [ref.recommend(r) for r in reqs]
    assert any(len(s["keywords"]) < 6 for f in want for s in f["sections"])
    assert_same(BatchedCascade(model, tables, catalog, RANKER).storefronts(reqs), want)


def test_every_tensor_is_made_on_the_model_device(branching, monkeypatch):
    """What breaks on CUDA, caught on the CPU (see test_device.py): a tensor factory called
    without device=, or a .numpy() without .cpu()."""
    import ast
    import inspect
    from train import cascade_batched
    from train.tests.test_device import SPIED, TorchSpy, off_device
    shop, tables, catalog, model = branching
    spy = TorchSpy()
    for mod in SPIED + (cascade_batched,):
        monkeypatch.setattr(mod, "torch", spy)
    bc = BatchedCascade(model, tables, catalog, RANKER, logits="sparse")
    bc.storefronts(golden_requests(shop, catalog, model.cfg.max_events, 12))
    bc.logits = "dense"
    bc.storefronts(golden_requests(shop, catalog, model.cfg.max_events, 12))
    assert any(c[2].startswith(cascade_batched.__file__) for c in spy.calls)
    assert not off_device(spy.calls, bc.device)
    for node in ast.walk(ast.parse(inspect.getsource(cascade_batched))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "numpy":
            inner = node.func.value
            assert isinstance(inner, ast.Call) and inner.func.attr == "cpu", node.lineno


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available to this torch")
@pytest.mark.parametrize("size", [1, 7, "all"])
def test_golden_requests_batched_on_cuda(golden, size):
    """On the GPU, against the reference on the GPU (the same device's kernels: CPU and CUDA
    rounding differ, and the reference itself is only shape-compared across devices)."""
    (shop, tables, catalog, model), reqs, _ = golden
    gpu = copy.deepcopy(model).to("cuda")
    ref = Cascade(gpu, tables, catalog, RANKER)
    with torch.no_grad():
        want = [ref.recommend(r) for r in reqs]
    bc = BatchedCascade(gpu, tables, catalog, RANKER)
    assert bc.device.type == "cuda" and bc.theme_trie.indptr.device == bc.device
    got = [f for b in batches(reqs, len(reqs) if size == "all" else size)
           for f in bc.storefronts(b)]
    assert_same(got, want)


def test_bench_batched_prints_a_line_per_variant_and_batch(tiny_world, tmp_path, capsys,
                                                           monkeypatch):
    import json
    from train import bench_batched
    from train.bundle import export_bundle, export_catalog
    shop, tables, catalog, model, _ = tiny_world
    b, c = str(tmp_path / "bundle"), str(tmp_path / "catalog")
    m = export_bundle(b, model, tables)
    export_catalog(c, catalog, tables, model, m["model_version"], "t")
    r = tmp_path / "requests.jsonl"
    r.write_text("".join(json.dumps(x) + "\n"
                         for x in golden_requests(shop, catalog, model.cfg.max_events, 8)))
    files = ["--bundle", b, "--catalog", c, "--requests", str(r)]
    assert bench_batched.main(files + ["--batches", "1,3", "--seconds", "0", "--rounds", "1",
                                       "--variants", "reference,default,eager"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["variant"], x["batch"]) for x in rows] == [
        (v, bs) for bs in (1, 3) for v in ("reference", "default", "eager")]
    for x in rows:
        assert x["requests_per_s"] > 0 and x["batches"] >= 2 and x["device"] == "cpu"
        assert x["engine"] == ("pytorch" if x["variant"] == "reference" else "pytorch-batched")
    assert bench_batched.main(files + ["--variants", "reference,turbo"]) == 2
    assert "unknown variant(s) turbo" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_batched.main(files + ["--device", "cuda"]) == 2
    assert "bench_batched: --device cuda asked for" in capsys.readouterr().err

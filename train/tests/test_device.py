"""The reference cascade runs on whatever device holds the model (train.bench_reference --device).

Why the tests check tensor *creation* rather than tensor devices: on a machine without a GPU every
tensor is on the CPU whatever the code says, so asserting `t.device == model device` after a CPU
run proves nothing, and the one device every machine has besides the CPU, `meta`, holds no values
(the beam search must read scores and orders back with .tolist() / float()). What breaks on CUDA is
a tensor created on the default device next to the model's (a `torch.zeros(n)`, a
`torch.tensor(ids)` used as an index_select index, a `torch.from_numpy` batch), or a CUDA tensor
read with `.numpy()`. So, during a whole CPU run of the cascade (constructor computing the product
embeddings, recommend with trace and collect, unconstrained decoding, recommend_many), the
`torch` name inside train.cascade, train.model and train.data is replaced by a spy that records
every call of a tensor factory with the `device=` it was given; the test fails on any call without
an explicit device equal to the model's. `torch.from_numpy` takes no device, so it always fails
there (use `torch.as_tensor(a, device=...)`). Factories that inherit their device
(`zeros_like`, `x.new_zeros`, ops on tensors) are not spied on: they are safe by construction.
Reads back to the host are checked from the source: every `.numpy()` must follow a `.cpu()`.
With a GPU (torch.cuda.is_available()), the same spy runs the cascade and the benchmark on cuda.
"""
import ast
import copy
import inspect
import json
import sys

import numpy as np
import pytest
import torch

from train import bench_reference, cascade as cascade_mod, data as data_mod, model as model_mod
from train.bundle import export_bundle, export_catalog
from train.cascade import Cascade
from train.golden import golden_requests

FACTORIES = ("tensor", "as_tensor", "from_numpy", "asarray", "zeros", "ones", "full", "empty",
             "arange", "range", "linspace", "logspace", "eye", "rand", "randn", "randint",
             "randperm", "tril_indices", "triu_indices", "scalar_tensor")
SPIED = (cascade_mod, model_mod, data_mod)


class TorchSpy:
    """Stands for the `torch` module; its tensor factories record (name, device, file:line)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        real = getattr(torch, name)
        if name not in FACTORIES:
            return real

        def factory(*args, **kw):
            f = sys._getframe(1)
            self.calls.append((name, kw.get("device"), "%s:%d" % (f.f_code.co_filename,
                                                                  f.f_lineno)))
            return real(*args, **kw)
        return factory


@pytest.fixture
def spy(monkeypatch):
    s = TorchSpy()
    for mod in SPIED:
        monkeypatch.setattr(mod, "torch", s)
    return s


def off_device(calls, device):
    """The recorded calls that did not name `device` explicitly."""
    return [c for c in calls if c[1] is None or torch.device(c[1]) != device]


def run_everything(model, tables, catalog, shop):
    """Every path of the cascade, on the model's device; returns (cascade, storefronts)."""
    c = Cascade(model, tables, catalog.with_embeddings(None))  # computes the product vectors
    reqs = golden_requests(shop, catalog, model.cfg.max_events, 12)
    fronts = []
    for r in reqs[:6]:
        trace, got = [], []
        fronts.append(c.recommend(r, trace, collect=got))
        assert trace and got
    fronts.append(c.recommend(reqs[6], constrained=False))
    fronts += c.recommend_many(reqs)
    with torch.no_grad():  # and the teacher-forced decoder (training), on the same device
        f = data_mod.featurize_one([], reqs[0]["now"], reqs[0]["region"], tables, catalog,
                                   model.cfg)
        mem = model.encode(data_mod.collate([f, f], c.device))
        model.decode_train(mem, torch.zeros(2, 5, dtype=torch.int64, device=c.device))
    return c, fronts


def test_the_spy_catches_a_tensor_made_without_a_device(spy):
    cascade_mod.torch.zeros(3)
    model_mod.torch.from_numpy(np.zeros(2))
    data_mod.torch.arange(4, device=torch.device("cpu"))
    bad = off_device(spy.calls, torch.device("cpu"))
    assert [c[0] for c in bad] == ["zeros", "from_numpy"]
    assert bad[0][2].startswith(__file__ + ":")


def test_cascade_creates_every_tensor_on_the_model_device(tiny_world, spy):
    shop, tables, catalog, model, _ = tiny_world
    c, fronts = run_everything(model, tables, catalog, shop)
    assert c.device == model.tok_emb.weight.device
    files = {call[2].rsplit(":", 1)[0] for call in spy.calls}
    assert {m.__file__ for m in SPIED} <= files, "the spy saw the factories of every module"
    bad = off_device(spy.calls, c.device)
    assert not bad, "tensors made without device=<the model's>: %s" % bad


def test_host_reads_go_through_cpu():
    for mod in (cascade_mod, model_mod):
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "numpy":
                inner = node.func.value
                assert isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) \
                    and inner.func.attr == "cpu", \
                    "%s:%d: .numpy() without .cpu() fails on a CUDA tensor" % (mod.__file__,
                                                                               node.lineno)


@pytest.fixture
def bench_files(tiny_world, tmp_path):
    shop, tables, catalog, model, _ = tiny_world
    b, c = str(tmp_path / "bundle"), str(tmp_path / "catalog")
    m = export_bundle(b, model, tables)
    export_catalog(c, catalog, tables, model, m["model_version"], "t")
    r = tmp_path / "requests.jsonl"
    r.write_text("".join(json.dumps(x) + "\n"
                         for x in golden_requests(shop, catalog, model.cfg.max_events, 8)))
    return ["--bundle", b, "--catalog", c, "--requests", str(r), "--batches", "1,3",
            "--seconds", "0"]


def bench_rows(capsys, argv):
    assert bench_reference.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["engine"] == "pytorch" and r["batches"] >= 3 and r["requests_per_s"] > 0
    return rows


def test_bench_reference_on_cpu(bench_files, capsys):
    for r in bench_rows(capsys, bench_files):
        assert r["device"] == "cpu" and "device_name" not in r


def test_bench_reference_refuses_cuda_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # checked before anything is loaded: the paths need not exist
    assert bench_reference.main(["--bundle", "x", "--catalog", "y", "--requests", "z",
                                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda asked for, but CUDA is not available" in err
    assert bench_reference.main(["--bundle", "x", "--catalog", "y", "--requests", "z",
                                 "--device", "tpu"]) == 2
    assert "--device must be cpu, cuda or cuda:N" in capsys.readouterr().err


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
def test_cascade_on_cuda(tiny_world, spy):
    shop, tables, catalog, model, _ = tiny_world
    cpu_fronts = run_everything(model, tables, catalog, shop)[1]
    spy.calls.clear()
    c, fronts = run_everything(copy.deepcopy(model).to("cuda"), tables, catalog, shop)
    assert c.device.type == "cuda" and c.emb.device == c.device
    assert not off_device(spy.calls, c.device)
    # not bit-identical to the CPU (other kernels: near-ties may break differently), but the
    # same shape of answer
    assert [[len(s["keywords"]) for s in f["sections"]] for f in fronts] == \
        [[len(s["keywords"]) for s in f["sections"]] for f in cpu_fronts]


@needs_cuda
def test_bench_reference_on_cuda(bench_files, capsys):
    for r in bench_rows(capsys, bench_files + ["--device", "cuda"]):
        assert r["device"].startswith("cuda:") and r["device_name"]

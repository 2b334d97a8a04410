"""`make bundle-scale` (train/bundle_scale.py) at a tiny size: the bundle and catalogue it writes
are what the Python reader and every tool accept (`vitrine info/recommend/batch/serve`), with the
sizes asked for, and its requests are answered with products of the requested regions."""
import json
import os
import subprocess

import pytest

from conftest import ROOT, VITRINE, request_from_json

PY = "/usr/bin/python3"
SIZE = dict(words=300, keywords=900, themes=60, products=3000)


@pytest.fixture(scope="module")
def scale(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scale"))
    subprocess.run([PY, "-m", "train.bundle_scale", "--out", out, "--d-model", "48", "--heads",
                    "3", "--enc-layers", "2", "--dec-layers", "2", "--d-retrieval", "24",
                    "--max-events", "40", "--words", str(SIZE["words"]), "--keywords",
                    str(SIZE["keywords"]), "--themes", str(SIZE["themes"]), "--products",
                    str(SIZE["products"]), "--requests", "12", "--history", "40"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def test_the_python_reader_accepts_it_at_the_sizes_asked(scale):
    code = ("import sys, json; from train.bundle import load_bundle, load_catalog; "
            "b = load_bundle(sys.argv[1]); c = load_catalog(sys.argv[2], b[1], b[0].cfg)[0]; "
            "print(json.dumps([b[0].cfg.d_model, b[0].cfg.n_heads, b[0].cfg.n_enc_layers, "
            "b[0].cfg.n_dec_layers, len(b[1].theme_texts), len(b[1].keyword_texts), "
            "len(c.ids)]))")
    p = subprocess.run([PY, "-c", code, f"{scale}/bundle", f"{scale}/catalog"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout) == [48, 3, 2, 2, SIZE["themes"], SIZE["keywords"],
                                    SIZE["products"]]


def test_info_recommend_and_batch_run_on_it(scale):
    p = subprocess.run([VITRINE, "info", "--bundle", f"{scale}/bundle", "--catalog",
                        f"{scale}/catalog"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert str(SIZE["products"]) in p.stdout and str(SIZE["keywords"]) in p.stdout, p.stdout
    reqs = [json.loads(x) for x in open(f"{scale}/requests.jsonl")]
    assert len(reqs) == 12 and all(len(r["events"]) == 40 for r in reqs)
    p = subprocess.run([VITRINE, "recommend", "--bundle", f"{scale}/bundle", "--catalog",
                        f"{scale}/catalog", "--request", "-"], input=json.dumps(reqs[0]),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    one = json.loads(p.stdout)
    assert len(one["sections"]) == reqs[0]["sections"]
    p = subprocess.run([VITRINE, "batch", "--bundle", f"{scale}/bundle", "--catalog",
                        f"{scale}/catalog", "--requests", f"{scale}/requests.jsonl", "--batch",
                        "4"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    assert len(lines) == 12
    # the batch answers the first request as `recommend` does (ids)
    ids = lambda s: [[pr["id"] for pr in sec["products"]] for sec in s["sections"]]  # noqa: E731
    assert ids(lines[0]) == ids(one)


def test_serve_answers_its_requests(scale, server_factory):
    srv = server_factory(bundle=f"{scale}/bundle", catalog=f"{scale}/catalog")
    info = srv.info(__import__("conftest").pb.GetInfoRequest(), timeout=10)
    assert info.products == SIZE["products"] and info.keywords == SIZE["keywords"]
    n_products = 0
    for line in open(f"{scale}/requests.jsonl"):
        r = srv.recommend(request_from_json(json.loads(line)), timeout=30)
        assert len(r.sections) == 3
        n_products += sum(len(s.products) for s in r.sections)
    assert n_products > 0  # random weights, but the cascade still reaches products

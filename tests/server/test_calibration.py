"""The ranker's calibration (docs/AUDIT.md, kernels/calib.h): `vitrine batch --calibration L`
picks the same products as the Python reference (train/cascade.py Calibration) on the fixture,
strength 0 is today's page, pages move toward the history's categories as L grows, and bad values
are refused naming the problem."""
import json
import os
import shutil
import subprocess
import sys

from conftest import FIXTURE, ROOT, VITRINE

sys.path.insert(0, ROOT)


def _batch(reqs, tmp_path, *extra):
    path = tmp_path / "req.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    p = subprocess.run([VITRINE, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--requests", str(path), *extra],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in p.stdout.splitlines()]


def _ids(sf):
    return [[p["id"] for p in s["products"]] for s in sf["sections"]]


def test_calibration_matches_python_reference(fixture_requests, tmp_path):
    from train.bundle import load_bundle, load_catalog
    from train.cascade import Cascade
    model, tables, manifest = load_bundle(f"{FIXTURE}/bundle")
    catalog, _ = load_catalog(f"{FIXTURE}/catalog", tables, model.cfg, manifest["model_version"])
    reqs = fixture_requests[:16]
    plain = _batch(reqs, tmp_path)
    assert _batch(reqs, tmp_path, "--calibration", "0") == plain  # off: today's page, exactly
    changed = 0
    for strength in (0.5, 1.0):
        got = _batch(reqs, tmp_path, "--calibration", str(strength))
        cascade = Cascade.from_manifest(model, tables, catalog, manifest)
        cascade.ranker["calibration"] = strength
        for req, g, p in zip(reqs, got, plain):
            want = cascade.recommend(req)
            assert _ids(g) == [[x["id"] for x in s["products"]] for s in want["sections"]]
            # the products keep their scores: the same product, the same score as without
            score = {x["id"]: x["score"] for s in p["sections"] for x in s["products"]}
            for s in g["sections"]:
                for x in s["products"]:
                    if x["id"] in score:
                        assert abs(x["score"] - score[x["id"]]) <= 1e-4
            changed += _ids(g) != _ids(p)
    assert changed > 0, "calibration changed no page: the test checks nothing"


def test_calibration_refused_when_bad(tmp_path):
    for bad, why in (("2", "calibration must be in 0..1"), ("-0.1", "calibration must be in"),
                     ("x", "not a number")):
        p = subprocess.run([VITRINE, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                            f"{FIXTURE}/catalog", "--requests", "-", "--calibration", bad],
                           input="", capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "--calibration" in p.stderr and why in p.stderr, p.stderr
    # in the manifest: refused naming the file
    b = tmp_path / "bundle"
    shutil.copytree(f"{FIXTURE}/bundle", b)
    m = json.loads((b / "manifest.json").read_text())
    m.setdefault("ranker", {})["calibration"] = 1.5
    (b / "manifest.json").write_text(json.dumps(m))
    p = subprocess.run([VITRINE, "info", "--bundle", str(b), "--catalog", f"{FIXTURE}/catalog"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "manifest.json: ranker.calibration must be in 0..1" in p.stderr, p.stderr

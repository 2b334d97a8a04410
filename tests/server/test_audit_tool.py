"""`make audit`'s tool (train/audit.py) end to end on the fixture: the C engine at two calibration
strengths and the two baselines on the fixture shop's test shoppers, the tables written; and on a
served audit log (`vitrine serve --audit-log`)."""
import json
import subprocess

from conftest import FIXTURE, ROOT, VITRINE


def _audit(tmp_path, *extra, system=True):
    out, md = tmp_path / "audit.json", tmp_path / "audit.md"
    sysargs = ["--bundle", f"{FIXTURE}/bundle", "--catalog", f"{FIXTURE}/catalog"] if system else []
    p = subprocess.run(["/usr/bin/python3", "-m", "train.audit", *sysargs, "--vitrine", VITRINE,
                        "--out", str(out), "--markdown", str(md), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text()), md.read_text()


def test_audit_on_fixture_requests(tmp_path):
    res, md = _audit(tmp_path, "--shop", f"{FIXTURE}/shop.json", "--strengths", "0,1")
    n_products = len(json.load(open(f"{FIXTURE}/shop.json"))["products"])
    systems = res["systems"]
    assert set(systems) == {"cascade", "co-occurrence", "popularity"}
    for name, s in systems.items():
        assert 0 < s["coverage"] <= 1 and 0 <= s["gini"] < 1, name
        assert 0 <= s["recall@10"] <= 1 and 0 <= s["ndcg@10"] <= s["recall@10"], name
        for g in ("theme", "code0"):
            assert s["kl"][g]["all"]["mean"] >= 0, name
            assert set(s["kl"][g]["segments"]) == {"region", "activity", "history"}, name
    # popularity shows every user the same 10: that is its coverage, and its exposure is all on
    # those 10 (the Gini of 10 equal amounts among n products is 1 - 10 / n)
    pop = systems["popularity"]
    assert abs(pop["coverage"] - 10 / n_products) < 1e-9
    assert abs(pop["gini"] - (1 - 10 / n_products)) < 1e-9
    assert pop["gini"] > systems["cascade"]["gini"]
    # the trade-off table: strength 0 is the cascade row; pure calibration lowers the engine's
    # own miscalibration (the first semantic code's KL)
    off, full = res["tradeoff"]
    assert off["strength"] == 0 and full["strength"] == 1
    assert off["recall@10"] == systems["cascade"]["recall@10"]
    assert full["kl"]["code0"]["all"]["mean"] < off["kl"]["code0"]["all"]["mean"]
    assert "| cascade |" in md and "| popularity |" in md and "Calibration trade-off" in md


def test_audit_baselines_only(tmp_path):
    # without a bundle (Beauty before its system is trained): the baselines, the data's grouping
    res, md = _audit(tmp_path, "--shop", f"{FIXTURE}/shop.json", system=False)
    assert set(res["systems"]) == {"co-occurrence", "popularity"} and not res["tradeoff"]
    assert res["groupings"] == ["theme"] and "Calibration trade-off" not in md


def test_audit_on_a_log(tmp_path):
    # two records the way the server writes them (docs/SERVER.md "Audit log"), then a bad one
    with open(f"{FIXTURE}/catalog/products.tsv") as f:  # index, id, ... (docs/BUNDLE.md)
        ids = [line.split("\t")[1] for line in f.read().splitlines()[1:]]
    rec = lambda region, act, prods: json.dumps({  # noqa: E731
        "segment": {"region": region, "activity": act, "events": 3},
        "sections": [{"products": [{"id": ids[p], "score": 1.0} for p in prods]}]})
    log = tmp_path / "audit.jsonl"
    log.write_text(rec("eu", "light", [0, 1]) + "\n" + rec("us", "new", [1, 2]) + "\n")
    res, _ = _audit(tmp_path, "--log", str(log))
    n = len(ids)
    assert res["all"]["pages"] == 2 and abs(res["all"]["coverage"] - 3 / n) < 1e-12
    assert set(res["segments"]["region"]) == {"eu", "us"}
    assert res["segments"]["activity"]["new"]["pages"] == 1
    log.write_text(rec("eu", "light", [0]) + "\n{\"segment\": 1}\n")
    p = subprocess.run(["/usr/bin/python3", "-m", "train.audit", "--bundle", f"{FIXTURE}/bundle",
                        "--catalog", f"{FIXTURE}/catalog", "--log", str(log)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "audit.jsonl:2:" in p.stderr

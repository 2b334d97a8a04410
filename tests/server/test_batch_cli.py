"""`vitrine batch`: one storefront per request line, in order, the same as `vitrine recommend` gives
for each (ids exactly, scores to batching's rounding); a refused line answers in its place naming
the problem, the others are still answered, and the exit status says some were refused."""
import json
import subprocess

from conftest import FIXTURE, VITRINE


def _cli(req):
    out = subprocess.run([VITRINE, "recommend", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                          f"{FIXTURE}/catalog", "--request", "-"], input=json.dumps(req),
                         capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


def test_batch_matches_recommend_and_keeps_refusals_in_place(fixture_requests, tmp_path):
    reqs = fixture_requests[:20]
    lines = [json.dumps(r) for r in reqs]
    lines.insert(7, json.dumps({"now": 5, "region": reqs[0]["region"]}))  # no sections
    lines.insert(12, "")  # blank lines are skipped
    lines.insert(15, "{not json")
    path = tmp_path / "req.jsonl"
    path.write_text("\n".join(lines) + "\n")
    p = subprocess.run([VITRINE, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--requests", str(path), "--batch", "6"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "20 answered, 2 refused" in p.stderr
    out = [json.loads(l) for l in p.stdout.splitlines()]
    assert len(out) == 22
    assert out[7] == {"line": 8, "error": out[7]["error"]} and "sections" in out[7]["error"]
    assert out[14]["line"] == 16 and out[14]["error"]
    answers = [o for o in out if "error" not in o]
    for req, got in zip(reqs, answers):
        want = _cli(req)
        assert [[p["id"] for p in s["products"]] for s in got["sections"]] == \
            [[p["id"] for p in s["products"]] for s in want["sections"]]
        assert [s["theme"]["id"] for s in got["sections"]] == \
            [s["theme"]["id"] for s in want["sections"]]
        for s, w in zip(got["sections"], want["sections"]):
            assert all(abs(a["score"] - b["score"]) <= 1e-3 for a, b in zip(s["products"],
                                                                           w["products"]))


def test_batch_refuses_bad_arguments():
    for extra in (["--batch", "0"], ["--batch", "x"]):
        p = subprocess.run([VITRINE, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                            f"{FIXTURE}/catalog", "--requests", "-", *extra], input="",
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "--batch must be" in p.stderr
    p = subprocess.run([VITRINE, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--requests", "/nonexistent.jsonl"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "/nonexistent.jsonl" in p.stderr

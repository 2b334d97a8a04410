"""bench/sweep.py in its tiny mode (--quick) and bench_sgemm: every requested row is there and its
numbers hang together (shares, the ratio, the encoder's FLOPs counted at every SGEMM equal the
docstring's formula, the decoder's are whole beam rows, GFLOP/s positive and possible), the
page-shape requests are byte for byte what the generator writes, generated bundles are reused,
the tables are printed and the plots written."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BUILD, PY, ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import sweep as S  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
# one dimension that generates bundles, one that only rewrites the base's requests
DIMS = ("history", "sections")
# no CPU core does more than 2 AVX-512 FMA units x 16 lanes x 2 FLOPs x ~5 GHz = 320 GFLOP/s
MAX_GFLOPS_PER_THREAD = 320


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    out, cache = tmp / "out", tmp / "cache"
    p = subprocess.run([PY, "bench/sweep.py", "--quick", "--dims", ",".join(DIMS), "--build",
                        BUILD, "--out", str(out), "--cache", str(cache)], cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    with open(out / "results.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return dict(out=out, cache=cache, rows=rows, stdout=p.stdout, stderr=p.stderr)


def test_every_requested_row_is_there(sweep):
    want = [(d, v) for d in DIMS for v in S.QUICK_VALUES[d]]
    assert [(r["dim"], r["value"]) for r in sweep["rows"]] == want
    assert all("error" not in r for r in sweep["rows"])
    # the base configuration is in both dimensions and measured once
    base = [r for r in sweep["rows"] if r["config"] == S.QUICK_BASE]
    assert len(base) == 2 and sum(bool(r.get("same_as_earlier_row")) for r in base) == 1


def test_the_numbers_hang_together(sweep):
    for r in sweep["rows"]:
        assert r["c_requests_per_s"] > 0 and r["torch_requests_per_s"] > 0
        assert r["c_over_torch"] == pytest.approx(r["c_requests_per_s"] /
                                                  r["torch_requests_per_s"], rel=1e-12)
        assert r["c_over_torch_cpu"] == pytest.approx(r["c_requests_per_cpu_s"] /
                                                      r["torch_requests_per_cpu_s"], rel=1e-12)
        # one thread each: a process's CPU time is at most about its wall time
        assert r["c_requests_per_cpu_s"] >= 0.9 * r["c_requests_per_s"] > 0
        for sh in (r["shares"], r["torch_shares"]):
            assert sorted(sh) == sorted(S.PHASES) and all(0 <= v <= 1 for v in sh.values())
            assert sum(sh.values()) == pytest.approx(1, abs=0.01)
        # the phases' mean times fit in the mean batch (they are per batch, not per run)
        mean_ms = 1e3 * r["batch"] / r["c_requests_per_s"]
        assert 0 < sum(r["ms"].values()) <= mean_ms * 1.02, (r["ms"], mean_ms)
        # the formula's encoder FLOPs are exactly what the engine's SGEMM calls did
        assert r["enc_gflop_counted"] == pytest.approx(r["enc_gflop"], rel=1e-6, abs=2e-9)
        assert r["enc_rows_per_batch"] == r["batch"] * (r["config"]["history"] + 1)
        # the decoder's FLOPs are a whole number of beam rows, at least one per step (the
        # per-batch mean is printed to 1 FLOP: that rounding, times the batches, is allowed)
        total_rows = r["dec_rows_per_batch"] * r["c_batches"]
        slack = r["c_batches"] / S.flop(S.dec_gemms(r["config"], 1))
        assert slack < 0.2 and total_rows == pytest.approx(round(total_rows), abs=slack)
        assert r["dec_rows_per_batch"] >= r["steps_per_batch"] > 0
        for k in ("enc_gflops", "dec_gflops", "sgemm_enc_gflops", "sgemm_dec_gflops",
                  "sgemm_1024_gflops"):
            assert 0 < r[k] < MAX_GFLOPS_PER_THREAD * r["threads"], (k, r[k])
        assert r["enc_attn_gflop"] > 0


def test_more_history_costs_more_encoder_and_more_sections_more_decoder(sweep):
    rows = {(r["dim"], r["value"]): r for r in sweep["rows"]}
    h = [rows[("history", v)] for v in S.QUICK_VALUES["history"]]
    assert h[0]["enc_gflop"] < h[1]["enc_gflop"]
    s = [rows[("sections", v)] for v in S.QUICK_VALUES["sections"]]
    assert s[0]["dec_rows_per_batch"] < s[1]["dec_rows_per_batch"]


def test_page_shape_requests_are_the_generators_own(sweep, tmp_path):
    """The sections rows share the base's bundle; their requests file is what train.bundle_scale
    writes when asked for that page shape (same seed, same events)."""
    rows = [r for r in sweep["rows"] if r["dim"] == "sections"]
    assert len({r["key"] for r in rows}) == 1
    r = next(r for r in rows if r["value"] != S.QUICK_BASE["sections"])
    c = r["config"]
    args = S.generator_args(c) + ["--sections", c["sections"], "--kw-per-section",
                                  c["kw_per_section"], "--products-per-section",
                                  c["products_per_section"]]
    subprocess.run([PY, "-m", "train.bundle_scale", "--out", str(tmp_path)] +
                   [str(a) for a in args], cwd=ROOT, check=True, capture_output=True,
                   timeout=120)
    with open(tmp_path / "requests.jsonl", "rb") as f:
        want = f.read()
    with open(os.path.join(ROOT, r["requests"]), "rb") as f:
        assert f.read() == want


def test_bundles_are_generated_once_and_reused(sweep):
    keys = {r["key"] for r in sweep["rows"]}
    assert sorted(os.listdir(sweep["cache"])) == sorted(keys) and len(keys) == 2
    assert sweep["stderr"].count("sweep: generating") == 2
    c = S.with_value(S.QUICK_BASE, "history", S.QUICK_VALUES["history"][0])
    d, seconds = S.ensure_bundle(str(sweep["cache"]), c, tuple(c[k] for k in S.PAGE))
    assert seconds == 0.0 and os.path.basename(d) in keys


def test_tables_come_last_and_plots_are_written(sweep):
    text = sweep["stdout"]
    for d in DIMS:
        i = text.index("### %s " % d)
        lines = text[i:].split("\n\n")[1].splitlines()
        assert len(lines) == 2 + len(S.QUICK_VALUES[d])
        assert all(ln.count("|") == lines[0].count("|") for ln in lines)
        data = (sweep["out"] / ("sweep-%s.png" % d)).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert text.rstrip().endswith(lines[-1])
    with open(sweep["out"] / "tables.md") as f:
        assert f.read().strip() == text.strip()


def test_bench_sgemm(tmp_path):
    exe = os.path.join(BUILD, "bench_sgemm")
    p = subprocess.run([exe, "--shapes", "64x48x32,8x16x4", "--seconds", "0.02", "--samples",
                        "3"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(r["m"], r["n"], r["k"]) for r in rows] == [(64, 48, 32), (8, 16, 4)]
    assert all(0 < r["gflops"] <= r["gflops_best"] and r["calls"] >= 3 for r in rows)
    for bad in ("64x48", "0x1x1", "4x4x4;8x8x8"):
        p = subprocess.run([exe, "--shapes", bad], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "bad shape" in p.stderr, (bad, p.stderr)


def test_a_spent_budget_skips_rows_and_says_so(tmp_path):
    p = subprocess.run([PY, "bench/sweep.py", "--quick", "--dims", "width", "--budget-min",
                        "1e-6", "--build", BUILD, "--out", str(tmp_path / "out"), "--cache",
                        str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr[-2000:]
    with open(tmp_path / "out" / "results.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["value"] for r in rows] == S.QUICK_VALUES["width"]
    assert all(r["error"].startswith("skipped: the 1e-06-minute budget") for r in rows)
    assert p.stdout.count("| skipped: the 1e-06-minute budget was spent |") == len(rows)
    assert not os.listdir(tmp_path / "cache")  # nothing generated

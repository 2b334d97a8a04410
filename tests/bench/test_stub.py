"""vitrine-bench against bench/stub_server.py, whose answers are known: a fixed delay, errors on
every Nth call, a periodic stall. Bounds are one-sided where physics allows (no call can be
faster than the stub's delay) and generous on the other side (a loaded 2-core machine adds
scheduling noise to every call)."""
import csv
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BENCH, FAST, PY, Proc, run_bench, step

# Closed loop, 8 in flight: 80 calls/s in theory. The delay is long enough that the stub's own
# overhead (Python, a few ms per call, more on a loaded machine) stays well inside the bounds.
DELAY_MS = 100.0
CONC = 8


@pytest.fixture(scope="module")
def delay_run(tmp_path_factory, requests_file):
    """Closed loop, CONC in flight, then open loop at half that throughput (constant gaps)."""
    stub = Proc([PY, "bench/stub_server.py", "--port", "0", "--delay-ms", str(DELAY_MS)],
                r"\bport=(\d+)")
    try:
        out = str(tmp_path_factory.mktemp("delay"))
        p, res = run_bench(stub.target, requests_file, "--concurrency", str(CONC), "--rate",
                           "0.5x", "--arrivals", "constant", "--label", "stub", *FAST, out=out)
    finally:
        stub.kill()
    return p, res, out


def test_closed_loop_latency_and_throughput_match_the_delay(delay_run):
    p, res, _ = delay_run
    s = step(res, "c=%d" % CONC)
    lat = s["latency_ms"]
    assert s["errors"] == 0 and s["discarded_errors"] == 0
    assert lat["n"] >= 100
    # every call waits the delay: nothing can be reported faster
    assert lat["min"] >= DELAY_MS
    # the median is the delay plus the stub's overhead; the tail (p99 of ~150 calls: the 2nd
    # slowest) is at the mercy of the machine's scheduler, hence the wider bound
    assert DELAY_MS <= lat["p50"] <= DELAY_MS + 10, lat
    assert DELAY_MS <= lat["p99"] <= DELAY_MS + 100, lat
    assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    # throughput = concurrency / delay, and Little's law with the measured mean latency
    assert s["ok_per_s"] == pytest.approx(CONC / (DELAY_MS / 1000), rel=0.15)
    assert s["ok_per_s"] * lat["mean"] / 1000 == pytest.approx(CONC, rel=0.1)
    # the server-side split is read from each answer's Timing
    srv = s["server"]
    assert srv["answers_with_timing"] == lat["n"] == s["calls_ok"]
    assert srv["compute_us"]["p50"] == srv["compute_us"]["p99"] == DELAY_MS * 1000
    assert srv["queue_us"]["max"] == 0
    assert srv["batch_size"]["mean"] == 1
    assert s["max_in_flight"] == CONC
    # the histogram holds the same samples
    assert sum(b[2] for b in s["histogram"]["buckets"]) == lat["n"]
    assert all(b[0] >= DELAY_MS * 1000 * 0.88 for b in s["histogram"]["buckets"])
    # the table row
    assert any(line.startswith("c=%d " % CONC) for line in p.stdout.splitlines()), p.stdout


def test_relative_open_loop_rate_follows_the_closed_loop_result(delay_run):
    _, res, _ = delay_run
    closed, open_ = step(res, "c=%d" % CONC), res["steps"][1]
    assert open_["mode"] == "open" and open_["arrivals"] == "constant"
    assert open_["rate"] == pytest.approx(0.5 * closed["ok_per_s"], rel=1e-4)
    assert open_["ok_per_s"] == pytest.approx(open_["rate"], rel=0.05)
    assert open_["latency_ms"]["min"] >= DELAY_MS
    assert open_["errors"] == 0 and open_["generator"]["dropped"] == 0


def test_csv_has_every_step(delay_run):
    _, res, out = delay_run
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == [s["step"] for s in res["steps"]]
    assert all(r["label"] == "stub" for r in rows)
    assert float(rows[0]["lat_p99_ms"]) == pytest.approx(res["steps"][0]["latency_ms"]["p99"])
    assert res["params"]["concurrency"] == str(CONC) and res["params"]["rate"] == "0.5x"
    assert res["server"]["model_version"] == "stub"


def test_errors_are_counted_by_status_and_excluded_from_ok(servers, requests_file, tmp_path):
    stub = servers("stub", "--delay-ms", "10", "--fail-every", "5", "--fail-code",
                   "RESOURCE_EXHAUSTED")
    p, res = run_bench(stub.target, requests_file, "--concurrency", "4", *FAST,
                       out=str(tmp_path))
    s = step(res, "c=4")
    # exactly every 5th call fails: 1/5 of the calls, give or take the window's edges
    assert set(s["errors_by_status"]) == {"RESOURCE_EXHAUSTED"}
    assert s["errors"] == s["errors_by_status"]["RESOURCE_EXHAUSTED"]
    assert s["calls"] >= 200
    assert s["errors"] / s["calls"] == pytest.approx(0.2, abs=0.02)
    assert s["error_rate"] == pytest.approx(s["errors"] / s["calls"], rel=1e-4)
    # OK counts and latencies exclude them
    assert s["calls_ok"] == s["calls"] - s["errors"] == s["latency_ms"]["n"]
    assert s["server"]["answers_with_timing"] == s["calls_ok"]
    assert s["ok_per_s"] * s["duration_s"] == pytest.approx(s["calls_ok"], abs=8)
    # the warm-up's errors are not lost either
    assert s["discarded_errors"] > 0
    assert set(s["discarded_errors_by_status"]) == {"RESOURCE_EXHAUSTED"}
    # in the table and the CSV
    assert "RESOURCE_EXHAUSTED %d" % s["errors"] in p.stdout
    with open(tmp_path / "results.csv") as f:
        row = next(csv.DictReader(f))
    assert row["errors_by_status"] == "RESOURCE_EXHAUSTED=%d" % s["errors"]
    assert int(row["errors"]) == s["errors"]


def test_records_hold_every_call_on_the_monotonic_clock(servers, requests_file, tmp_path):
    stub = servers("stub", "--delay-ms", "10", "--fail-every", "4", "--fail-code", "UNAVAILABLE")
    before = time.monotonic_ns()
    p, res = run_bench(stub.target, requests_file, "--concurrency", "2", "--rate", "50",
                       "--records", str(tmp_path / "rec"), *FAST, out=str(tmp_path))
    after = time.monotonic_ns()
    for n, s in enumerate(res["steps"], 1):
        with open(tmp_path / "rec" / ("records-%d.csv" % n)) as f:
            head = f.readline()
            rows = list(csv.DictReader(f))
        t0 = int(head.split("=")[1])
        assert head.startswith("# t0_monotonic_ns=") and before <= t0 <= after
        # every call of the step: the measured ones, the warm-up's and those after the windows
        codes = [r["status"] for r in rows]
        assert set(codes) == {"OK", "UNAVAILABLE"}, set(codes)
        assert codes.count("UNAVAILABLE") >= s["errors"] + s["discarded_errors"]
        assert codes.count("OK") >= s["calls_ok"]
        assert codes.count("UNAVAILABLE") == pytest.approx(len(rows) / 4, abs=3)
        for r in rows:
            assert 0 <= int(r["intended_ns"]) <= int(r["sent_ns"]) <= int(r["done_ns"])
            assert t0 + int(r["done_ns"]) <= after
            if r["status"] == "OK":  # the stub's delay, and its Timing
                assert int(r["done_ns"]) - int(r["sent_ns"]) >= 10e6
                assert int(r["compute_us"]) == 10000 and int(r["batch"]) == 1


def test_open_loop_constant_rate_is_kept(servers, requests_file):
    stub = servers("stub", "--delay-ms", "10")
    _, res = run_bench(stub.target, requests_file, "--rate", "200", "--arrivals", "constant",
                       *FAST)
    s = step(res, "r=200")
    g = s["generator"]
    assert g["target_per_s"] == 200
    assert g["scheduled_per_s"] == pytest.approx(200, rel=0.01)
    assert g["sent_per_s"] == pytest.approx(200, rel=0.03)
    assert s["ok_per_s"] == pytest.approx(200, rel=0.03)
    assert g["dropped"] == 0 and s["errors"] == 0
    assert s["latency_ms"]["min"] >= 10
    # every call scheduled in the windows is accounted for, the ones still in flight at the end
    # of the last window included (the drain waits for them)
    assert s["calls"] == g["scheduled"] == s["latency_ms"]["n"]


def test_open_loop_sees_a_stall_that_closed_loop_hides(servers, requests_file):
    """The stub holds every answer that becomes ready in the first 100 ms of each 500 ms. In open
    loop a fifth of the calls wait, up to 100 ms (p90 ~50 ms, p99 ~95 ms in theory); a closed
    loop of one call only ever has one call waiting per stall, so its p90 stays near the 5 ms
    delay: the coordinated omission that measuring from the intended send time avoids."""
    stub = servers("stub", "--delay-ms", "5", "--stall-every-ms", "500", "--stall-ms", "100")
    _, res = run_bench(stub.target, requests_file, "--concurrency", "1", "--rate", "100",
                       "--arrivals", "constant", *FAST)
    closed, open_ = step(res, "c=1"), step(res, "r=100")
    assert open_["latency_ms"]["p90"] >= 30, open_["latency_ms"]
    assert open_["latency_ms"]["p99"] >= 75, open_["latency_ms"]
    assert closed["latency_ms"]["p90"] <= 25, closed["latency_ms"]
    assert closed["latency_ms"]["max"] >= 50  # the stall is there, only rarely sampled


def test_open_loop_drops_beyond_the_in_flight_cap_are_counted(servers, requests_file):
    """400 calls/s scheduled, each held 100 ms, at most 10 in flight: about 100/s can go, the
    rest are dropped by the generator, and said so (never silently delayed or re-timed)."""
    stub = servers("stub", "--delay-ms", "100")
    p, res = run_bench(stub.target, requests_file, "--rate", "400", "--arrivals", "constant",
                       "--max-outstanding", "10", *FAST)
    s = step(res, "r=400")
    g = s["generator"]
    assert s["max_in_flight"] == 10
    assert g["scheduled_per_s"] == pytest.approx(400, rel=0.01)
    assert g["issued"] == pytest.approx(g["scheduled"], abs=2)  # the schedule was kept
    assert g["dropped"] + g["sent"] == pytest.approx(g["scheduled"], abs=12)
    assert g["dropped"] + s["calls"] == g["scheduled"]
    assert g["dropped"] / g["scheduled"] == pytest.approx(0.75, abs=0.1)
    assert s["ok_per_s"] == pytest.approx(100, rel=0.2)
    assert s["errors"] == 0 and s["latency_ms"]["min"] >= 100
    assert "DROPPED %d" % g["dropped"] in p.stdout


def test_open_loop_charges_a_generator_pause_to_the_calls_it_delayed(servers, requests_file,
                                                                      tmp_path):
    """The load generator itself is frozen (SIGSTOP) for 300 ms inside the measured windows, as
    a client machine's hiccup would: the ~30 calls scheduled during the pause go out late, and
    their latency runs from their scheduled time, so they show in the tail (p99 ~280 ms, p90
    ~100 ms in theory), the lag is reported and the generator flagged as behind. Measured from
    the send time instead, every call would look like the stub's 10 ms."""
    stub = servers("stub", "--delay-ms", "10")
    proc = subprocess.Popen([BENCH, "--target", stub.target, "--requests", requests_file,
                             "--rate", "100", "--arrivals", "constant", "--warmup", "0.3",
                             "--window", "1", "--max-windows", "2", "--quiet", "--out",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = []
    try:
        for line in proc.stdout:  # the table header comes just before the step starts
            out.append(line)
            if line.startswith("step"):
                break
        time.sleep(0.6)  # into the first measured window (0.3 .. 1.3 s)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        proc.send_signal(signal.SIGCONT)
        out.append(proc.stdout.read())  # (stderr is near-empty with --quiet)
        err = proc.stderr.read()
        assert proc.wait(60) == 0, err
        assert "Sanitizer" not in err and "runtime error:" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(tmp_path / "results.json") as f:
        s = step(json.load(f), "r=100")
    lat, g = s["latency_ms"], s["generator"]
    assert lat["p99"] >= 150, lat
    assert lat["p90"] >= 50, lat
    assert g["lag_ms"]["max"] >= 200, g
    assert g["behind"] is True
    assert s["calls"] == g["scheduled"] and g["dropped"] == 0
    assert "GENERATOR BEHIND" in "".join(out)

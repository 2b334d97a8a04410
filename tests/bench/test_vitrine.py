"""vitrine-bench against a real `vitrine serve` on the fixture bundle, and against the peer
(bench/peer_server.py) on the same bundle: no errors, and a server-side split that agrees with
what the client measured."""
from conftest import run_bench, step

# these check consistency, not stability: short windows
QUICK = ["--warmup", "0.3", "--window", "0.5", "--max-windows", "3", "--quiet"]


def check_split(s, max_batch):
    """Timing fields consistent with themselves and with the client's latency."""
    lat, srv = s["latency_ms"], s["server"]
    assert s["errors"] == 0 and s["discarded_errors"] == 0, s["errors_by_status"]
    assert srv["answers_with_timing"] == lat["n"] == s["calls_ok"] > 0
    assert srv["compute_us"]["p50"] > 0
    assert srv["queue_us"]["p50"] >= 0
    # per call, total (arrival to answer encoded) >= compute, and <= what the client waited
    assert srv["total_us"]["p50"] >= srv["compute_us"]["p50"]
    assert srv["total_us"]["p50"] / 1000 <= lat["p50"]
    assert srv["total_us"]["mean"] / 1000 <= lat["mean"]
    assert 1 <= srv["batch_size"]["p50"] <= srv["batch_size"]["max"] <= max_batch


def test_vitrine_serve_closed_loop(servers, requests_file):
    srv = servers("vitrine")
    p, res = run_bench(srv.target, requests_file, "--concurrency", "1,4", *QUICK)
    assert res["server"]["model_version"].startswith("fixture-")
    assert res["server"]["max_batch"] == 16
    one, four = step(res, "c=1"), step(res, "c=4")
    check_split(one, 1)   # one call in flight: every batch holds exactly one request
    check_split(four, 4)  # never more requests in a batch than calls in flight
    assert one["server"]["batch_size"]["mean"] == 1
    assert four["max_in_flight"] == 4
    assert four["ok_per_s"] > 0 and one["ok_per_s"] > 0
    assert "ERRORS" not in p.stdout


def test_peer_server(servers, requests_file):
    peer = servers("peer")
    _, res = run_bench(peer.target, requests_file, "--concurrency", "2", *QUICK)
    assert res["server"]["max_batch"] == 1
    assert res["server"]["model_version"].startswith("fixture-")
    s = step(res, "c=2")
    check_split(s, 1)
    # two calls in flight, one compute slot: a call waits about one compute for its slot
    assert s["server"]["queue_us"]["mean"] > 0.2 * s["server"]["compute_us"]["mean"]


def served_ok(proc):
    """Recommend calls a `vitrine serve` answered OK, from its metrics port."""
    import re
    import urllib.request
    port = next(re.search(r"metrics_port=(\d+)", ln).group(1) for ln in proc.lines
                if "serving" in ln and "metrics_port=" in ln)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'vitrine_requests_total\{method="/vitrine.v1.Storefront/Recommend",'
                  r'code="OK"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_a_fleet_target_round_robin(servers, requests_file):
    a = servers("vitrine", "--metrics-listen", "127.0.0.1:0")
    b = servers("vitrine", "--metrics-listen", "127.0.0.1:0")
    _, res = run_bench(f"{a.target},{b.target}", requests_file, "--concurrency", "4", *QUICK)
    s = step(res, "c=4")
    assert s["errors"] == 0 and s["calls_ok"] > 0
    na, nb = served_ok(a), served_ok(b)
    # round robin: both replicas answered, about half each (GetInfo and warm-up aside)
    assert na > 0 and nb > 0, (na, nb)
    assert abs(na - nb) <= 0.2 * (na + nb), (na, nb)


def test_a_fleet_target_of_names_is_refused(requests_file):
    from conftest import BENCH
    import subprocess
    p = subprocess.run([BENCH, "--target", "vitrine-0:50051,vitrine-1:50051", "--requests",
                        requests_file, "--concurrency", "1"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "use dns:NAME:PORT" in p.stderr, p.stderr

"""Lifecycle: drain on SIGTERM (health NOT_SERVING, every accepted request finishes or gets a
clean status, exit 0), the drain timeout, catalogue reload on SIGHUP without dropping a request,
options from flags and VITRINE_* variables, JSON logs, and the metrics endpoint's format."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import (FIXTURE, VITRINE, health_pb2, metric_value, pb, request_from_json)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_not_serving_until_loaded_and_warmed_up(server_factory, fixture_requests):
    # the warm-up batch is made to take 1.5 s: meanwhile the port answers, but not as SERVING
    srv = server_factory("--compute-delay-us", "1500000", ready=r"\blistening\b")
    assert srv.health() == NOT_SERVING
    try:
        srv.recommend(request_from_json(fixture_requests[0]), timeout=5)
        raise AssertionError("must be refused while starting")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "starting" in e.details()
    assert metric_value(srv.metrics(), "vitrine_serving") == 0
    assert not any(" serving " in ln for ln in srv.lines)
    srv.wait_for(r"\bserving\b", 20)
    assert srv.health() == SERVING
    assert metric_value(srv.metrics(), "vitrine_serving") == 1
    assert srv.stop() == 0


def test_sigterm_under_load_drains(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "4", "--max-queue-delay-us", "1000",
                         "--compute-delay-us", "40000", "--drain-timeout-ms", "20000")
    assert srv.health() == SERVING
    from test_parity import watch_stream
    watched, watch_end = [], []

    def watch():
        try:
            for msg in watch_stream(srv):
                watched.append(msg.status)
        except grpc.RpcError as e:
            watch_end.append(e.code())

    watcher = threading.Thread(target=watch)
    watcher.start()
    futs = [srv.recommend.future(request_from_json(fixture_requests[i % 16]), timeout=25)
            for i in range(80)]
    # wait until the server has accepted all 80 (in flight or answered), then SIGTERM
    end = time.monotonic() + 10
    while True:
        m = srv.metrics()
        accepted = metric_value(m, "vitrine_inflight_requests") + metric_value(
            m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend", code="OK")
        if accepted == 80 or time.monotonic() > end:
            break
        time.sleep(0.01)
    assert accepted == 80
    assert metric_value(m, "vitrine_inflight_requests") > 10  # enough left to drain
    srv.sigterm()
    # health turns NOT_SERVING while the accepted requests are still being answered
    seen = []
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            st = srv.health(timeout=2)
        except grpc.RpcError:
            break
        seen.append(st)
        if st == NOT_SERVING:
            break
        time.sleep(0.01)
    assert seen and seen[-1] == NOT_SERVING, seen
    # a new call during the drain is refused cleanly
    try:
        srv.recommend(request_from_json(fixture_requests[0]), timeout=5)
        late = "OK"
    except grpc.RpcError as e:
        late = e.code()
    assert late in (grpc.StatusCode.UNAVAILABLE, "OK")  # OK only if it raced the signal
    ok = refused = 0
    for f in futs:
        try:
            r = f.result()
            assert len(r.sections) > 0
            ok += 1
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
            refused += 1
    assert (ok, refused) == (80, 0)  # every accepted request completed
    assert srv.proc.wait(20) == 0
    srv.wait_for(r"\bstopped\b.*drain_timed_out=false", 1)
    # the Watch stream saw SERVING, then NOT_SERVING, and was ended cleanly at shutdown
    watcher.join(10)
    assert watched == [SERVING, NOT_SERVING], watched
    assert watch_end == [grpc.StatusCode.UNAVAILABLE], watch_end


def test_drain_timeout_answers_the_rest_unavailable(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "300000", "--drain-timeout-ms", "100")
    futs = [srv.recommend.future(request_from_json(fixture_requests[i]), timeout=25)
            for i in range(6)]
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.sigterm()
    assert srv.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3  # not 6 x 300 ms
    codes = []
    for f in futs:
        try:
            f.result()
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code())
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.details()
    assert codes.count("OK") >= 1 and grpc.StatusCode.UNAVAILABLE in codes, codes
    srv.wait_for(r"\bstopped\b.*drain_timed_out=true", 1)


def test_sighup_reloads_catalogue_without_dropping(server_factory, fixture_requests, tmp_path):
    cat = tmp_path / "catalog"
    shutil.copytree(os.path.join(FIXTURE, "catalog"), cat)
    srv = server_factory("--catalog", str(cat), "--max-batch", "8")
    stop = threading.Event()
    errors, done = [], [0]

    def load():
        i = 0
        while not stop.is_set():
            try:
                srv.recommend(request_from_json(fixture_requests[i % 32]), timeout=10)
                done[0] += 1
            except grpc.RpcError as e:
                errors.append((e.code(), e.details()))
            i += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(3):
            time.sleep(0.3)
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while sum("reloaded" in ln for ln in srv.lines) < k + 1:
                assert time.monotonic() < deadline, srv.lines[-5:]
                time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors[:3]
    assert done[0] > 20
    m = srv.metrics()
    assert metric_value(m, "vitrine_catalog_reloads_total", result="ok") == 3
    # a broken catalogue is refused and the old one keeps serving
    os.remove(cat / "manifest.json")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for(r"reload_failed", 10)
    assert metric_value(srv.metrics(), "vitrine_catalog_reloads_total", result="failed") == 1
    assert srv.health() == SERVING
    srv.recommend(request_from_json(fixture_requests[0]), timeout=10)
    assert srv.stop() == 0


def test_metrics_endpoint_is_prometheus_text(server_factory, fixture_requests):
    srv = server_factory()
    for r in fixture_requests[:5]:
        srv.recommend(request_from_json(r), timeout=10)
    try:
        srv.recommend_raw(b"\xff", timeout=5)
    except grpc.RpcError:
        pass
    text = srv.metrics()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in [("vitrine_requests", "counter"), ("vitrine_queue_duration_seconds", "histogram"),
                       ("vitrine_compute_duration_seconds", "histogram"),
                       ("vitrine_request_duration_seconds", "histogram"),
                       ("vitrine_batch_size", "histogram"), ("vitrine_queue_depth", "gauge"),
                       ("vitrine_inflight_requests", "gauge"), ("vitrine_model_info", "gauge"),
                       ("vitrine_serving", "gauge")]:
        assert name in fams and fams[name].type == kind, name
    reqs = {(s.labels["method"], s.labels["code"]): s.value for s in fams["vitrine_requests"].samples
            if s.name == "vitrine_requests_total"}
    assert reqs[("/vitrine.v1.Storefront/Recommend", "OK")] == 5
    assert reqs[("/vitrine.v1.Storefront/Recommend", "INVALID_ARGUMENT")] == 1
    for h in ("vitrine_queue_duration_seconds", "vitrine_request_duration_seconds"):
        buckets = [s for s in fams[h].samples if s.name == h + "_bucket"]
        vals = [s.value for s in buckets]
        assert vals == sorted(vals) and buckets[-1].labels["le"] == "+Inf" and vals[-1] == 5
    info = srv.info(pb.GetInfoRequest(), timeout=5)
    mi = fams["vitrine_model_info"].samples[0].labels
    assert mi == {"model_version": info.model_version, "catalog_version": info.catalog_version,
                  "rules_version": info.rules_version}
    assert info.rules_version == ""  # the fixture's catalogue has no rules.txt
    assert metric_value(text, "vitrine_serving") == 1
    # anything but /metrics is a 404
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/nope", timeout=5)
        raise AssertionError("404 expected")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_workers_default_to_one_per_usable_cpu(server_factory):
    """--workers 0, the default: one engine per CPU the process may use (its affinity mask and
    cgroup CPU limit), as GetInfo and the start-up lines say; pinned to one CPU, one engine."""
    import conftest
    srv = server_factory(workers=None)
    want = conftest.usable_cpus()
    assert srv.info(pb.GetInfoRequest(), timeout=5).workers == want
    assert sum(1 for ln in srv.lines if re.search(r"\bengine\b.*\bworker\b", ln)) == want
    assert srv.stop() == 0
    one = {min(os.sched_getaffinity(0))}
    srv = server_factory("--workers", "0", cpus=one)  # the flag, explicitly
    assert srv.info(pb.GetInfoRequest(), timeout=5).workers == conftest.usable_cpus(one) == 1
    assert srv.stop() == 0


def test_options_from_env_and_flags_and_json_logs(server_factory):
    srv = server_factory("--max-batch", "5", "--log-format", "json",
                         env={"VITRINE_MAX_BATCH": "3", "VITRINE_WORKERS": "2",
                              "VITRINE_MAX_REQUEST_EVENTS": "77"}, workers=None)
    info = srv.info(pb.GetInfoRequest(), timeout=5)
    assert (info.max_batch, info.workers, info.max_request_events) == (5, 2, 77)  # flag wins
    assert srv.stop() == 0
    for line in srv.lines:
        rec = json.loads(line)  # one JSON object per line
        assert {"ts", "level", "event"} <= rec.keys()
    events = [json.loads(ln)["event"] for ln in srv.lines]
    # listening, one line per engine (worker and device), the scheduler's threads, serving
    assert events[:5] == ["listening", "engine", "engine", "engine_threads", "serving"] and \
        "draining" in events
    assert [json.loads(ln)["device"] for ln in srv.lines[1:3]] == ["cpu", "cpu"]
    assert json.loads(srv.lines[3])["workers"] == 2
    assert events[-1] == "stopped"
    assert isinstance(json.loads(srv.lines[4])["grpc_port"], int)


def test_max_message_size_option(server_factory, fixture_requests):
    srv = server_factory("--max-message-bytes", "2048", "--log-requests", "--log-format", "json")
    small = request_from_json(fixture_requests[0])
    assert small.ByteSize() < 2048
    assert len(srv.recommend(small, timeout=10).sections) > 0
    big = request_from_json(fixture_requests[0])
    big.shopper_id = "12345"  # a numeric-looking id stays a string in JSON logs
    big.exclude.extend(["p%05d" % i for i in range(400)])
    assert big.ByteSize() > 2048
    try:
        srv.recommend(big, timeout=10)
        raise AssertionError("a message over --max-message-bytes must be refused")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert srv.health() == SERVING
    big.ClearField("exclude")
    assert len(srv.recommend(big, timeout=10).sections) > 0
    assert srv.stop() == 0
    recs = [json.loads(ln) for ln in srv.lines]
    answered = [r for r in recs if r["event"] == "recommend"]
    assert len(answered) == 2 and all(r["code"] == 0 for r in answered)
    assert answered[1]["shopper"] == "12345"
    assert all(isinstance(r["queue_us"], int) and r["batch"] == 1 for r in answered)


def test_help_and_bad_options():
    out = subprocess.run([VITRINE, "serve", "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    for flag in ("--bundle", "--catalog", "--listen", "--metrics-listen", "--workers",
                 "--max-batch", "--max-queue-delay-us", "--queue-capacity", "--max-message-bytes",
                 "--drain-timeout-ms", "--log-format"):
        assert flag in out.stdout
        env = "VITRINE_" + flag[2:].upper().replace("-", "_")
        assert env in out.stdout, env
    bad = subprocess.run([VITRINE, "serve", "--bundle", "x", "--catalog", "y", "--workers", "-2"],
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--workers must be an integer" in bad.stderr
    missing = subprocess.run([VITRINE, "serve", "--bundle", "/nonexistent", "--catalog", "/x",
                              "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
                             capture_output=True, text=True, timeout=10)
    assert missing.returncode == 2 and "load_failed" in missing.stderr


def test_signals_always_reach_the_main_loop(server_factory):
    # library threads started before main (OpenBLAS) do not block the signals; a SIGTERM the kernel
    # hands to one of them must still drain and exit 0, never kill the process (-15)
    for i in range(12):
        srv = server_factory("--workers", "2")
        if i % 3 == 2:
            srv.proc.send_signal(signal.SIGHUP)
            srv.wait_for(r"\breloaded\b", 10)
        sig = signal.SIGINT if i % 2 else signal.SIGTERM
        srv.proc.send_signal(sig)
        assert srv.proc.wait(15) == 0, i
        srv.wait_for(r"\bstopped\b", 2)


def test_second_sigterm_stops_the_drain(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "300000", "--drain-timeout-ms", "60000")
    futs = [srv.recommend.future(request_from_json(fixture_requests[i]), timeout=25)
            for i in range(8)]
    time.sleep(0.1)
    srv.sigterm()
    srv.wait_for(r"\bdraining\b", 5)
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.sigterm()  # impatient operator: stop waiting for the queue
    assert srv.proc.wait(10) == 0
    assert time.monotonic() - t0 < 2  # not the 2 s the queue needs
    srv.wait_for(r"\bstopped\b.*forced=true", 1)
    codes = []
    for f in futs:
        try:
            f.result()
            codes.append("OK")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
            codes.append("UNAVAILABLE")
    assert "OK" in codes and "UNAVAILABLE" in codes, codes

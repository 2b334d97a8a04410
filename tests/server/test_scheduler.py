"""Dynamic batching, priorities, deadlines, cancellation and overload against a real server."""
import json
import os
import re
import time

import grpc

from conftest import (assert_same_storefront, cli_storefront, health_pb2, metric_value, pb,
                      request_from_json)

SERVING = health_pb2.HealthCheckResponse.SERVING
N_CONCURRENT = int(os.environ.get("VT_LOAD_N", "400"))


def still_healthy(srv, fixture_requests):
    assert srv.health() == SERVING
    r = srv.recommend(request_from_json(fixture_requests[1]), timeout=10)
    assert len(r.sections) == fixture_requests[1]["sections"]


def test_hundreds_concurrent_all_answered_in_batches(server_factory, fixture_requests):
    srv = server_factory("--workers", "2", "--max-batch", "16", "--max-queue-delay-us", "3000")
    reqs = [request_from_json(fixture_requests[i % len(fixture_requests)])
            for i in range(N_CONCURRENT)]
    t0 = time.monotonic()
    futs = [srv.recommend.future(r, timeout=25) for r in reqs]
    resps = [f.result() for f in futs]  # raises if any call failed
    wall = time.monotonic() - t0
    assert len(resps) == N_CONCURRENT
    # batched answers equal the CLI's one-at-a-time answers
    cli = {}
    for i, r in enumerate(resps):
        k = i % len(fixture_requests)
        if k not in cli:
            cli[k] = cli_storefront(fixture_requests[k])
        if i < 2 * len(fixture_requests):
            assert_same_storefront(r, cli[k])
    sizes = [r.timing.batch_size for r in resps]
    m = srv.metrics()
    batches = metric_value(m, "vitrine_batch_size_count")
    total = metric_value(m, "vitrine_batch_size_sum")
    ok = metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                      code="OK")
    assert ok == N_CONCURRENT and total == N_CONCURRENT
    assert max(sizes) > 1 and batches < N_CONCURRENT, (batches, max(sizes))
    assert metric_value(m, "vitrine_batch_size_bucket", le="1") < batches
    # both engines took batches (a free worker pulls the next batch: the least loaded one)
    per_worker = [metric_value(m, "vitrine_worker_batches_total", worker=w) for w in ("0", "1")]
    assert all(n and n > 0 for n in per_worker) and sum(per_worker) == batches, per_worker
    print(f"\n{N_CONCURRENT} concurrent Recommend: {wall:.2f} s, {N_CONCURRENT / wall:.0f} req/s, "
          f"{int(batches)} batches, mean {total / batches:.1f}, max {max(sizes)}")
    assert metric_value(m, "vitrine_inflight_requests") == 0
    assert metric_value(m, "vitrine_queue_depth") == 0
    still_healthy(srv, fixture_requests)


def test_high_priority_served_first(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "200000")
    blocker = srv.recommend.future(request_from_json(fixture_requests[0]), timeout=20)
    time.sleep(0.05)  # the blocker is computing
    normal = [srv.recommend.future(request_from_json(fixture_requests[i]), timeout=20)
              for i in range(1, 5)]
    time.sleep(0.05)  # all normals queued before the high one arrives
    high_req = request_from_json(fixture_requests[5])
    high_req.priority = pb.PRIORITY_HIGH
    high = srv.recommend.future(high_req, timeout=20)
    blocker.result()
    h = high.result()
    queued = [f.result().timing.queue_us for f in normal]
    # the high-priority request ran right after the blocker, before every normal one
    assert h.timing.queue_us < min(queued) - 50000, (h.timing.queue_us, queued)


def test_expired_request_dropped_before_compute(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "400000")
    blocker = srv.recommend.future(request_from_json(fixture_requests[0]), timeout=20)
    time.sleep(0.05)
    late = srv.recommend.future(request_from_json(fixture_requests[1]), timeout=0.15)
    try:
        late.result()
        raise AssertionError("must expire")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.result()
    deadline = time.monotonic() + 5
    while True:  # the server drops it when the worker gets to it (after the blocker)
        m = srv.metrics()
        exp = metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                           code="DEADLINE_EXCEEDED")
        if exp or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert exp == 1
    assert metric_value(m, "vitrine_batch_size_count") == 1  # only the blocker was computed
    still_healthy(srv, fixture_requests)


def test_deadline_passing_during_compute(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "300000")
    try:
        srv.recommend(request_from_json(fixture_requests[0]), timeout=0.1)
        raise AssertionError("must expire")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while True:
        m = srv.metrics()
        exp = metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                           code="DEADLINE_EXCEEDED")
        if exp or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert exp == 1  # counted as expired, not as answered
    assert metric_value(m, "vitrine_batch_size_count") == 1  # it was computing when it expired
    assert metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                        code="OK") == 0
    still_healthy(srv, fixture_requests)


def test_cancelled_request_dropped(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "400000")
    blocker = srv.recommend.future(request_from_json(fixture_requests[0]), timeout=20)
    time.sleep(0.05)
    doomed = srv.recommend.future(request_from_json(fixture_requests[1]), timeout=20)
    time.sleep(0.05)
    assert doomed.cancel()
    blocker.result()
    deadline = time.monotonic() + 5
    while True:
        m = srv.metrics()
        n = metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                         code="CANCELLED")
        if n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert n == 1
    assert metric_value(m, "vitrine_batch_size_count") == 1  # the cancelled one never computed
    assert metric_value(m, "vitrine_inflight_requests") == 0
    still_healthy(srv, fixture_requests)


def test_overload_sheds_with_unavailable(server_factory, fixture_requests):
    srv = server_factory("--max-batch", "1", "--max-queue-delay-us", "0",
                         "--compute-delay-us", "150000", "--queue-capacity", "4")
    futs = [srv.recommend.future(request_from_json(fixture_requests[i % 8]), timeout=20)
            for i in range(24)]
    ok = shed = 0
    for f in futs:
        try:
            f.result()
            ok += 1
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
            assert "queue is full" in e.details()
            shed += 1
    assert ok + shed == 24
    assert ok >= 4 and shed >= 12, (ok, shed)  # at most capacity + one running get in at once
    m = srv.metrics()
    assert metric_value(m, "vitrine_requests_total", method="/vitrine.v1.Storefront/Recommend",
                        code="UNAVAILABLE") == shed
    still_healthy(srv, fixture_requests)


def test_openblas_runs_one_thread_per_worker_unless_told(server_factory, fixture_requests):
    # OpenBLAS's own default (a spinning thread per core) took half the server's CPU under load
    srv = server_factory("--workers", "2")
    line = srv.wait_for(r"\bengine_threads\b", 5)
    assert re.search(r"\bworkers\W+2\b", line) and \
        re.search(r"\bblas_threads_per_worker\W+1\b", line), line
    assert srv.recommend(request_from_json(fixture_requests[0]), timeout=10).sections
    srv = server_factory(env={"OPENBLAS_NUM_THREADS": "2"})
    line = srv.wait_for(r"\bengine_threads\b", 5)
    assert re.search(r"\bblas_threads_per_worker\W+2\b", line), line

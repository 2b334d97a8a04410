"""The client settings of docs/CLIENTS.md (deploy/clients/service_config.json and
channel_args.json), used as they are by a Python grpcio client against real `vitrine serve`
processes: retries of UNAVAILABLE with backoff, round robin over several addresses, client-side
health checking during a drain, keepalive within what the server allows, and the catalogue
swap of docs/DEPLOY.md (deploy/k8s/tools/swap-catalog.sh) reloading a watching server."""
import json
import os
import re
import shutil
import subprocess
import time

import grpc
import pytest

from vt_deploy import (ROOT, FIXTURE, health_check, health_pb2, info_stub, pb, recommend_stub,
                      small_request)

CLIENTS = os.path.join(ROOT, "deploy", "clients")


def service_config():
    with open(os.path.join(CLIENTS, "service_config.json")) as f:
        return json.load(f)


def channel_args():
    with open(os.path.join(CLIENTS, "channel_args.json")) as f:
        return json.load(f)


def configured_channel(target, config=None, **extra):
    """A channel set up as docs/CLIENTS.md says: the channel arguments and the service config."""
    opts = dict(channel_args())
    opts["grpc.service_config"] = json.dumps(config if config is not None else service_config())
    opts.update(extra)
    return grpc.insecure_channel(target, options=list(opts.items()))


def fire(channel, n, timeout=None):
    """n concurrent Recommend calls; their status codes."""
    rec = recommend_stub(channel)
    futs = [rec.future(small_request(), timeout=timeout) for _ in range(n)]
    codes = []
    for f in futs:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    return codes


def test_service_config_is_what_the_docs_say():
    """The file the docs point to: round robin, health checking on the readiness service, a
    backstop deadline for every Storefront call, retries of UNAVAILABLE only (never of
    INVALID_ARGUMENT, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED: docs/SERVER.md says retrying them
    does not help), with backoffs short enough for a storefront's deadline."""
    sc = service_config()
    assert sc["loadBalancingConfig"] == [{"round_robin": {}}]
    assert sc["healthCheckConfig"]["serviceName"] == "vitrine.v1.Storefront"
    (mc,) = sc["methodConfig"]
    assert mc["name"] == [{"service": "vitrine.v1.Storefront"}]  # every method of the API
    sec = lambda s: float(s.rstrip("s"))  # noqa: E731
    # a backstop only: the call's own deadline is the budget; grpcio shortens a service-config
    # timeout by up to ~2 s (grpc/grpc#34547), so it must stay well above that
    assert re.fullmatch(r"\d+(\.\d+)?s", mc["timeout"]) and sec(mc["timeout"]) >= 5
    rp = mc["retryPolicy"]
    assert rp["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= rp["maxAttempts"] <= 5  # gRPC caps it at 5
    # every retry starts within 200 ms (backoff grows by the multiplier, +-20% jitter), inside
    # the 300 ms deadline docs/CLIENTS.md recommends
    b, total = sec(rp["initialBackoff"]), 0.0
    for _ in range(rp["maxAttempts"] - 1):
        total += min(b, sec(rp["maxBackoff"]))
        b *= rp["backoffMultiplier"]
    assert total * 1.2 < 0.2, total
    assert sc["retryThrottling"]["maxTokens"] >= 10
    with open(os.path.join(ROOT, "docs", "CLIENTS.md")) as f:
        doc = f.read()
    assert "deploy/clients/service_config.json" in doc and "deploy/clients/channel_args.json" in doc


def test_the_call_deadline_governs(server_factory):
    """With the service config's backstop in place, each call's own deadline is the one that
    holds: 1 s is enough for a 300 ms compute, 100 ms is not."""
    srv = server_factory("--compute-delay-us", "300000")
    ch = configured_channel(srv.target)
    rec = recommend_stub(ch)
    assert rec(small_request(), timeout=1.0).sections
    with pytest.raises(grpc.RpcError) as ei:
        rec(small_request(), timeout=0.1)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ch.close()


def test_retries_turn_overload_into_answers(server_factory):
    """A server that can hold one request in its queue, computing one at a time for 60 ms: of 3
    concurrent calls at least one is refused UNAVAILABLE (queue full) without the retry policy;
    with it every call ends OK, and the server's metrics show the refused attempts that the
    client retried."""
    srv = server_factory("--queue-capacity", "1", "--max-batch", "1", "--workers", "1",
                         "--compute-delay-us", "60000")
    bare = grpc.insecure_channel(srv.target)
    codes = fire(bare, 3, timeout=5)
    bare.close()
    assert grpc.StatusCode.UNAVAILABLE in codes, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    refused_before = srv.requests_total("UNAVAILABLE")
    assert refused_before >= 1

    ch = configured_channel(srv.target)
    grpc.channel_ready_future(ch).result(timeout=10)
    codes = fire(ch, 3, timeout=2)
    ch.close()
    assert codes == [grpc.StatusCode.OK] * 3, codes
    assert srv.requests_total("UNAVAILABLE") > refused_before  # retries happened


def test_round_robin_over_every_address(server_factory):
    """One channel over two servers' addresses (what the headless Service's DNS name resolves
    to): calls alternate between them."""
    a, b = server_factory(), server_factory()
    ch = configured_channel(f"ipv4:{a.target},{b.target}")
    rec = recommend_stub(ch)
    # both subchannels connected and reported SERVING by health checking
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rec(small_request())
        if a.requests_total("OK") and b.requests_total("OK"):
            break
        time.sleep(0.05)
    base_a, base_b = a.requests_total("OK"), b.requests_total("OK")
    for _ in range(20):
        rec(small_request())
    ch.close()
    da, db = a.requests_total("OK") - base_a, b.requests_total("OK") - base_b
    assert da + db == 20 and abs(da - db) <= 2, (da, db)


def test_drain_moves_calls_to_the_other_server(server_factory):
    """SIGTERM on one of two servers: its health turns NOT_SERVING at once, the client's health
    checking (healthCheckConfig) stops picking it during the linger, and every call keeps ending
    OK on the other one while the first drains and exits 0. (A synchronous grpcio client reads
    the health update only while it has a call in progress, so the first call after a quiet
    moment may still go to the lingering server, which answers it: that is what the linger is
    for. Without healthCheckConfig, half the calls go there.)"""
    a = server_factory("--drain-linger-ms", "3000", "--log-requests")
    b = server_factory()
    ch = configured_channel(f"ipv4:{a.target},{b.target}")
    rec = recommend_stub(ch)
    deadline = time.monotonic() + 10
    while not (a.requests_total("OK") and b.requests_total("OK")):
        assert time.monotonic() < deadline, "round robin never reached both servers"
        rec(small_request(), timeout=2)

    def a_answered():
        with a.cv:
            return sum(1 for ln in a.lines if re.search(r"\brecommend\b", ln))

    a.sigterm()
    a.wait_for(r"\blingering\b", 10)
    time.sleep(0.2)
    b_ok, a_before = b.requests_total("OK"), a_answered()
    codes = []
    end = time.monotonic() + 1.5  # inside the 3 s linger: a would still answer if picked
    while time.monotonic() < end:
        try:
            rec(small_request(), timeout=2)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    time.sleep(0.2)  # a's last log lines
    # round robin would pick a for about every other call: 20 calls miss it by chance 2^-20
    # (a loaded machine answered 42 in the 1.5 s, an idle one 50+)
    assert len(codes) >= 20 and set(codes) == {grpc.StatusCode.OK}, codes
    to_a = a_answered() - a_before
    assert to_a <= 1, f"the lingering server was still picked for {to_a} of {len(codes)} calls"
    assert b.requests_total("OK") - b_ok == len(codes) - to_a
    # past the linger a refuses new calls and exits; the channel goes on with b
    assert a.proc.wait(30) == 0
    for _ in range(10):
        rec(small_request(), timeout=2)
    ch.close()


def test_keepalive_within_what_the_server_allows(server_factory):
    """The server sets no keepalive or ping policy (serve/server.c), so gRPC's defaults hold: it
    answers a client that pings more often than every 5 minutes with GOAWAY too_many_pings after
    2 strikes. channel_args.json pings no more often than that; a client pinging every second
    has its long call (a Watch stream) cut."""
    with open(os.path.join(ROOT, "serve", "server.c")) as f:
        server_c = f.read()
    assert not re.search(r"GRPC_ARG_(KEEPALIVE|HTTP2_MIN_RECV_PING|HTTP2_MAX_PING_STRIKES)",
                         server_c), "the server now sets a ping policy: update docs/CLIENTS.md"
    args = channel_args()
    assert args["grpc.keepalive_time_ms"] >= 300000  # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
    assert args["grpc.keepalive_permit_without_calls"] == 0  # the server does not permit them

    srv = server_factory()
    ch = grpc.insecure_channel(srv.target, options=[
        ("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 0)])
    watch = ch.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    stream = watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        for _ in stream:
            pass
    took = time.monotonic() - t0
    ch.close()
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, ei.value
    assert "too many pings" in (ei.value.details() or "").lower(), ei.value
    assert took < 10, f"cut after {took:.1f} s"

    # the documented settings on the same kind of call: the stream stays open
    ch = configured_channel(srv.target)
    stream = ch.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)(
            health_pb2.HealthCheckRequest(service=""), timeout=5)  # the 1 s pinger was cut at 3 s
    with pytest.raises(grpc.RpcError) as ei:
        for _ in stream:
            pass
    ch.close()
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ei.value


def test_catalogue_swap_reloads_a_watching_server(server_factory, tmp_path):
    """docs/DEPLOY.md's catalogue update: versions side by side, `current` a symlink swapped by
    deploy/k8s/tools/swap-catalog.sh; the server (--catalog .../current, --watch-catalog-ms)
    reloads a good one and refuses a broken one, keeping the last good one serving."""
    root = tmp_path / "catalog"
    root.mkdir()
    shutil.copytree(os.path.join(FIXTURE, "catalog"), root / "v1")
    shutil.copytree(os.path.join(FIXTURE, "catalog"), root / "v2")
    m = json.loads((root / "v2" / "manifest.json").read_text())
    m["catalog_version"] = "fixture-swapped"
    (root / "v2" / "manifest.json").write_text(json.dumps(m))
    shutil.copytree(os.path.join(FIXTURE, "catalog"), root / "v3-broken")
    (root / "v3-broken" / "products.tsv").write_text("truncated\n")
    swap = os.path.join(ROOT, "deploy", "k8s", "tools", "swap-catalog.sh")
    run = lambda v: subprocess.run(["sh", swap, str(root), v], check=True,  # noqa: E731
                                   capture_output=True, text=True)
    run("v1")
    srv = server_factory("--watch-catalog-ms", "200", catalog=str(root / "current"))
    ch = grpc.insecure_channel(srv.target)
    info = info_stub(ch)

    def version():
        return info(pb.GetInfoRequest(), timeout=5).catalog_version

    assert version() == "fixture-1"

    assert "was v1" in run("v2").stdout
    end = time.monotonic() + 15
    while version() != "fixture-swapped":
        assert time.monotonic() < end, "the swap was not picked up:\n" + "\n".join(srv.lines[-10:])
        time.sleep(0.1)
    run("v3-broken")
    srv.wait_for(r"reload_failed", 15)
    assert version() == "fixture-swapped"
    assert health_check(ch, "vitrine.v1.Storefront") == health_pb2.HealthCheckResponse.SERVING
    assert recommend_stub(ch)(small_request(), timeout=5).sections
    ch.close()
    # what the script refuses
    for bad in ("current", "../x", ".hidden", "missing"):
        p = subprocess.run(["sh", swap, str(root), bad], capture_output=True, text=True)
        assert p.returncode != 0, bad

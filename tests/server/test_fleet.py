"""Running vitrine as a fleet (issue #14): TLS and mutual TLS on the gRPC port, the linger before
the drain, the liveness service, a catalogue reloaded when its (Kubernetes-style) volume changes,
and three replicas rolled under load by a client with round robin and retries."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from conftest import FIXTURE, Server, health_pb2, metric_value, pb, request_from_json

RECOMMEND = "/vitrine.v1.Storefront/Recommend"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs():
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by it,
    and a second CA (with its own client certificate) that the server does not trust."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    d = tempfile.mkdtemp(prefix="vt-tls-")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN=vitrine test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "other-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{name}.key", "-out", f"{name}.csr", cwd=d)
        extra = ["-extfile", "san.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)
    yield {k: os.path.join(d, k) for k in os.listdir(d)}
    shutil.rmtree(d, ignore_errors=True)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def tls_stub(srv, root, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(read(root), read(key) if key else None,
                                         read(cert) if cert else None)
    ch = grpc.secure_channel(srv.target, creds)
    return ch, ch.unary_unary(RECOMMEND, request_serializer=pb.RecommendRequest.SerializeToString,
                              response_deserializer=pb.RecommendResponse.FromString)


def tls_server(certs, *extra):
    # the harness's own plaintext channel cannot talk to it; the tests make their own
    return Server("--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"], *extra)


def test_tls_and_refused_handshakes(certs, base):
    srv = tls_server(certs)
    try:
        assert srv.wait_for(r"\blistening\b.*tls\W+on", 5)
        assert http_status(srv, "/readyz") == 200  # plain HTTP probes beside gRPC on TLS
        ch, rec = tls_stub(srv, certs["ca.pem"])
        assert rec(base, timeout=10).sections  # a TLS client is served
        # a plaintext client fails cleanly (UNAVAILABLE), as does one that trusts another CA
        with pytest.raises(grpc.RpcError) as e:
            srv.recommend(base, timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch2, untrusting = tls_stub(srv, certs["other-ca.pem"])
        with pytest.raises(grpc.RpcError) as e:
            untrusting(base, timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch2.close()
        m = srv.metrics()
        assert metric_value(m, "vitrine_tls_handshakes_refused_total") >= 1
        assert rec(base, timeout=10).sections  # still serving after the refusals
        ch.close()
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_mutual_tls_refuses_a_client_without_a_good_certificate(certs, base):
    srv = tls_server(certs, "--tls-client-ca", certs["ca.pem"])
    try:
        assert srv.wait_for(r"\blistening\b.*tls\W+mutual", 5)
        ch, rec = tls_stub(srv, certs["ca.pem"], certs["client.pem"], certs["client.key"])
        assert rec(base, timeout=10).sections
        for cert, key in ((None, None), (certs["rogue.pem"], certs["rogue.key"])):
            c2, bad = tls_stub(srv, certs["ca.pem"], cert, key)
            with pytest.raises(grpc.RpcError) as e:
                bad(base, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            c2.close()
        assert metric_value(srv.metrics(), "vitrine_tls_handshakes_refused_total") >= 2
        assert rec(base, timeout=10).sections
        ch.close()
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_tls_options_checked_at_start(certs, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    for args, needle in (
            (["--tls-cert", certs["server.pem"]], "--tls-cert and --tls-key go together"),
            (["--tls-client-ca", certs["ca.pem"]], "--tls-client-ca needs --tls-cert"),
            (["--tls-cert", str(bad), "--tls-key", certs["server.key"]],
             f"--tls-cert {bad}: not a PEM file"),
            (["--tls-cert", certs["server.pem"], "--tls-key", str(tmp_path / "missing.key")],
             "missing.key: cannot read")):
        p = subprocess.run([os.environ.get("VT_BUILD", "build") + "/vitrine", "serve", "--bundle",
                            f"{FIXTURE}/bundle", "--catalog", f"{FIXTURE}/catalog", "--listen",
                            "127.0.0.1:0", "--metrics-listen", "off", *args],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and needle in p.stderr, (args, p.returncode, p.stderr)


@pytest.fixture(scope="module")
def base(fixture_requests):
    return request_from_json(fixture_requests[0])


# ---- the linger before the drain, and liveness ----
def http_status(srv, path):
    """The metrics port's HTTP status for path (plain HTTP, also when gRPC is on TLS)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_linger_not_serving_but_answering_then_draining(server_factory, base):
    srv = server_factory("--drain-linger-ms", "1500", "--max-batch", "1",
                         "--compute-delay-us", "2000000")
    assert srv.health() == health_pb2.HealthCheckResponse.SERVING
    assert srv.health("liveness") == health_pb2.HealthCheckResponse.SERVING
    assert http_status(srv, "/readyz") == 200 and http_status(srv, "/livez") == 200
    slow = srv.recommend.future(base, timeout=30)  # in flight across the whole drain
    time.sleep(0.2)
    srv.sigterm()
    srv.wait_for(r"\blingering\b", 5)
    t0 = time.monotonic()
    assert srv.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert srv.health("vitrine.v1.Storefront") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert srv.health("liveness") == health_pb2.HealthCheckResponse.SERVING
    # the same for probes that cannot speak gRPC over TLS: HTTP on the metrics port
    assert http_status(srv, "/readyz") == 503 and http_status(srv, "/livez") == 200
    during = srv.recommend.future(base, timeout=30)  # accepted while lingering
    srv.wait_for(r"\bdraining\b", 5)
    assert time.monotonic() - t0 >= 1.0
    with pytest.raises(grpc.RpcError) as e:
        srv.recommend(base, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in e.value.details()
    assert srv.health("liveness") == health_pb2.HealthCheckResponse.SERVING
    assert slow.result().sections and during.result().sections  # nothing accepted is lost
    assert srv.proc.wait(15) == 0


def test_unknown_health_service_names_the_known_ones(shared_server):
    with pytest.raises(grpc.RpcError) as e:
        shared_server.health("nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "liveness" in e.value.details()


# ---- a catalogue on a Kubernetes-style volume: ..data swapped atomically ----
def k8s_volume(root, versions):
    """root/..<v> directories and root/..data -> the current one; root/<file> -> ..data/<file>,
    the layout kubelet gives a ConfigMap or projected volume."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(os.path.join(FIXTURE, "catalog")):
        os.symlink(os.path.join("..data", name), os.path.join(root, name))


def add_version(root, tag, catalog_version, corrupt=False):
    d = os.path.join(root, f"..{tag}")
    shutil.copytree(os.path.join(FIXTURE, "catalog"), d)
    mpath = os.path.join(d, "manifest.json")
    with open(mpath) as f:
        m = json.load(f)
    m["catalog_version"] = catalog_version
    with open(mpath, "w") as f:
        json.dump(m, f)
    if corrupt:
        with open(os.path.join(d, "products.tsv"), "ab") as f:
            f.write(b"garbage\n")


def swap(root, tag):
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(f"..{tag}", tmp)
    os.rename(tmp, os.path.join(root, "..data"))  # atomic, as kubelet does


def catalog_version(srv):
    info = srv.channel.unary_unary("/vitrine.v1.Storefront/GetInfo",
                                   request_serializer=pb.GetInfoRequest.SerializeToString,
                                   response_deserializer=pb.GetInfoResponse.FromString)
    return info(pb.GetInfoRequest(), timeout=5).catalog_version


def test_catalog_watch_follows_a_volume_swap_and_refuses_a_broken_one(server_factory, tmp_path,
                                                                     base):
    root = str(tmp_path / "catalog")
    k8s_volume(root, [])
    add_version(root, "v1", "watch-1")
    swap(root, "v1")
    srv = server_factory("--watch-catalog-ms", "100", catalog=root)
    assert catalog_version(srv) == "watch-1"
    add_version(root, "v2", "watch-2")
    swap(root, "v2")
    srv.wait_for(r"\breloaded\b.*watch-2", 10)
    assert catalog_version(srv) == "watch-2"
    add_version(root, "v3", "watch-3", corrupt=True)
    swap(root, "v3")
    srv.wait_for(r"\breload_failed\b", 10)
    assert catalog_version(srv) == "watch-2"  # the old one kept
    assert srv.recommend(base, timeout=10).sections
    m = srv.metrics()
    assert metric_value(m, "vitrine_catalog_reloads_total", result="failed") == 1
    time.sleep(0.5)  # the broken state is not retried until it changes again
    assert metric_value(srv.metrics(), "vitrine_catalog_reloads_total", result="failed") == 1
    shutil.rmtree(os.path.join(root, "..v3"))
    add_version(root, "v4", "watch-4")
    swap(root, "v4")
    srv.wait_for(r"\breloaded\b.*watch-4", 10)


# ---- three replicas rolled under load ----
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": "vitrine.v1.Storefront"}],
        "timeout": "5s",
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}


class Load:
    """n threads sending Recommend calls back to back through one round-robin channel."""

    def __init__(self, target, requests, n=4):
        self.ch = grpc.insecure_channel(target, options=[
            ("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(SERVICE_CONFIG))])
        self.rec = self.ch.unary_unary(RECOMMEND,
                                       request_serializer=pb.RecommendRequest.SerializeToString,
                                       response_deserializer=pb.RecommendResponse.FromString)
        self.reqs = requests
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.lat, self.fail, self.marks = [], [], []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, i):
        k = i
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.rec(self.reqs[k % len(self.reqs)], timeout=5)
                with self.lock:
                    self.lat.append((t0, time.monotonic() - t0))
            except grpc.RpcError as e:
                with self.lock:
                    self.fail.append((t0, e.code().name, e.details()))
            k += len(self.threads)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.ch.close()


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else None


def test_rolling_restart_loses_no_call_and_a_kill_loses_only_its_calls(fixture_requests):
    reqs = [request_from_json(d) for d in fixture_requests]
    opts = ("--drain-linger-ms", "1000", "--max-queue-delay-us", "200")
    reps = [Server(*opts) for _ in range(3)]
    ports = [r.port for r in reps]
    load = Load("ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports), reqs)
    answered = [0, 0, 0]
    try:
        time.sleep(2)
        t_roll = time.monotonic()
        for i in (0, 1):  # roll two replicas, one after the other, on the same port
            answered[i] += metric_value(reps[i].metrics(), "vitrine_requests_total",
                                        method=RECOMMEND, code="OK") or 0
            reps[i].sigterm()
            assert reps[i].proc.wait(30) == 0
            reps[i].kill()
            reps[i] = Server(*opts, "--listen", f"127.0.0.1:{ports[i]}")
            time.sleep(2)
        roll_end = time.monotonic()
        time.sleep(1)
        with load.lock:
            fails_roll = list(load.fail)
            roll = [lat for t0, lat in load.lat if t_roll <= t0 <= roll_end]
        assert fails_roll == [], fails_roll[:5]
        for i in range(3):
            answered[i] += metric_value(reps[i].metrics(), "vitrine_requests_total",
                                        method=RECOMMEND, code="OK") or 0
        assert all(a > 0 for a in answered), answered
        # a hard kill: only the calls in flight on it may fail (4 client threads at most)
        n_before = len(load.lat)
        reps[2].proc.kill()
        reps[2].proc.wait(5)
        time.sleep(3)
        with load.lock:
            fails_kill = list(load.fail)
            after = len(load.lat) - n_before
        assert len(fails_kill) <= 4, fails_kill
        assert after > 50  # the others carry on
        print(f"\nfleet roll: {len(roll)} calls during the roll, p99 {1000 * p99(roll):.1f} ms, "
              f"0 failed; SIGKILL: {len(fails_kill)} failed, {after} answered in the next 3 s; "
              f"answered per replica {answered}")
        out = os.environ.get("VT_BUILD")
        if out:
            with open(os.path.join(out, "fleet-roll.json"), "w") as f:
                json.dump({"roll_calls": len(roll), "roll_p99_ms": 1000 * p99(roll),
                           "roll_failed": len(fails_roll), "kill_failed": len(fails_kill),
                           "answered_per_replica": answered}, f)
    finally:
        load.close()
        for r in reps:
            r.kill()


def test_max_connection_age_reconnects_without_failing_a_call(server_factory, base):
    """--max-connection-age-ms: the client is sent GOAWAY and reconnects (so it would spread over
    replicas added since), and no call fails on the way."""
    srv = server_factory("--max-connection-age-ms", "500")
    states = []
    ch = grpc.insecure_channel(srv.target)
    ch.subscribe(states.append, try_to_connect=True)
    rec = ch.unary_unary(RECOMMEND, request_serializer=pb.RecommendRequest.SerializeToString,
                         response_deserializer=pb.RecommendResponse.FromString)
    end, n = time.monotonic() + 3, 0
    while time.monotonic() < end:
        assert rec(base, timeout=10).sections
        n += 1
    ch.close()
    ready = [i for i, s in enumerate(states) if s == grpc.ChannelConnectivity.READY]
    # connected more than once: each connection was aged out and replaced
    assert len(ready) >= 2, states
    assert n > 10

"""Fixtures for the server tests: protobuf classes generated at test time with protoc, and a real
`vitrine serve` process on loopback (free ports chosen by the server: --listen 127.0.0.1:0),
always killed at the end."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VT_BUILD", os.path.join(ROOT, "build"))
FIXTURE = os.environ.get("VT_FIXTURE", os.path.join(BUILD, "fixture"))
VITRINE = os.path.join(BUILD, "vitrine")
VITRINE_EMU = os.path.join(BUILD, "vitrine-emu")  # the same, on the CUDA emulator's devices
GRPC_PROTO = "/usr/share/grpc-proto"
# the binaries are an AddressSanitizer + UBSan build (make check-asan): tests that need valgrind
# or exact timing skip there, with the reason
SANITIZED = os.environ.get("VT_SANITIZED") == "1"
# start-up and shutdown waits are this many times longer there (ASan: 2-5x slower, more at exit)
SLOW = 4 if SANITIZED else 1
# what ASan, LeakSanitizer (at exit) and UBSan write to stderr when they find something
SANITIZER_REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")

_gen_dir = tempfile.mkdtemp(prefix="vt-pb-")
# health.proto is compiled under another module path: the Python package "grpc" is grpcio's
os.makedirs(os.path.join(_gen_dir, "vt_health"))
with open(os.path.join(GRPC_PROTO, "grpc/health/v1/health.proto")) as f_in, \
        open(os.path.join(_gen_dir, "vt_health", "health.proto"), "w") as f_out:
    f_out.write(f_in.read())
subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "-I", _gen_dir,
                "--python_out", _gen_dir, "vitrine/v1/storefront.proto", "vt_health/health.proto"],
               check=True)
sys.path.insert(0, _gen_dir)
from vitrine.v1 import storefront_pb2 as pb  # noqa: E402
from vt_health import health_pb2  # noqa: E402


def usable_cpus(cpus=None):
    """What `--workers 0` (the default) counts: the CPUs of the affinity mask (`cpus`, or this
    process's), fewer where the cgroup v2 `cpu.max` quota allows less (rounded up)."""
    n = len(cpus if cpus is not None else os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


class Server:
    """A `vitrine serve` child process. stderr lines are collected in self.lines."""

    def __init__(self, *extra, bundle=None, catalog=None, env=None, ready=r"\bserving\b",
                 binary=None, cpus=None, workers=1):
        # one engine worker unless a test says otherwise (workers=None: the server's default, one
        # per CPU): the timing tests reason about a single busy engine, on any machine
        if workers is not None and "--workers" not in extra:
            extra = ("--workers", str(workers)) + tuple(extra)
        self.args = [binary or VITRINE, "serve", "--bundle", bundle or os.path.join(FIXTURE, "bundle"),
                     "--catalog", catalog or os.path.join(FIXTURE, "catalog"),
                     "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                     # no linger unless a test asks (it times the drain itself)
                     "--drain-linger-ms", "0", *extra]
        e = dict(os.environ)
        e.update(env or {})
        # a byte that is not UTF-8 must never reach a log line; if one does, it shows as a lone
        # surrogate (U+DC80..U+DCFF) instead of killing the reader
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=e, text=True, errors="surrogateescape", preexec_fn=pin)
        self.lines = []
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        line = self.wait_for(ready, 20 * SLOW)
        self.port = int(re.search(r"grpc_port\W+(\d+)", line).group(1))
        self.metrics_port = int(re.search(r"metrics_port\W+(\d+)", line).group(1))
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.recommend = self.channel.unary_unary(
            "/vitrine.v1.Storefront/Recommend",
            request_serializer=pb.RecommendRequest.SerializeToString,
            response_deserializer=pb.RecommendResponse.FromString)
        self.recommend_raw = self.channel.unary_unary("/vitrine.v1.Storefront/Recommend")
        self.info = self.channel.unary_unary(
            "/vitrine.v1.Storefront/GetInfo",
            request_serializer=pb.GetInfoRequest.SerializeToString,
            response_deserializer=pb.GetInfoResponse.FromString)
        self.check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)

    def _read(self):
        for line in self.proc.stderr:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, pattern, timeout):
        """The first stderr line matching pattern; fails after timeout seconds or on exit."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no log line /{pattern}/; log:\n" +
                                         "\n".join(self.lines[-30:]))
                self.cv.wait(min(left, 0.2))

    def health(self, service="", timeout=5):
        return self.check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status

    def metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return r.read().decode()

    def sigterm(self):
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=15):
        """SIGTERM and wait; returns the exit status. Fails on a sanitizer report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout * SLOW)
        finally:
            self.kill()

    def kill(self):
        """SIGKILL if still running, then fails on a sanitizer report in the whole log."""
        try:
            self.channel.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.assert_no_sanitizer_report()

    def assert_no_sanitizer_report(self):
        """Only once the process has exited (LeakSanitizer reports at exit) and its stderr has
        been read to the end."""
        assert self.proc.poll() is not None
        self.reader.join(10 * SLOW)
        bad = [ln for ln in self.lines if SANITIZER_REPORT.search(ln)]
        assert not bad, "sanitizer report in the server's stderr:\n" + "\n".join(self.lines[-60:])


@pytest.fixture
def server_factory():
    started = []

    def make(*extra, **kw):
        s = Server(*extra, **kw)
        started.append(s)
        return s

    yield make
    reports = []
    for s in started:  # every one is killed, then any sanitizer report fails the test
        try:
            s.kill()
        except AssertionError as e:
            reports.append(str(e))
    assert not reports, "\n\n".join(reports)


@pytest.fixture(scope="module")
def shared_server():
    """One server for the read-only tests of a module (fast, 2 CQ threads, 1 worker)."""
    s = Server()
    yield s
    assert s.stop() == 0  # stop() fails on a sanitizer report


def metric_value(text, name, **labels):
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            return float(m.group(4))
    return None


def request_from_json(d):
    """The protobuf form of a JSON request (train/demo_request.json's shape)."""
    actions = {"view": pb.ACTION_VIEW, "search": pb.ACTION_SEARCH, "cart": pb.ACTION_CART,
               "purchase": pb.ACTION_PURCHASE}
    r = pb.RecommendRequest(now=d["now"], region=d["region"], shopper_id=d.get("shopper_id", ""),
                            sections=d["sections"],
                            keywords_per_section=d["keywords_per_section"],
                            products_per_section=d["products_per_section"],
                            exclude=d.get("exclude", []))
    for e in d.get("events", []):
        r.events.add(action=actions[e["action"]], ts=e["ts"], item=e.get("item") or "",
                     query=e.get("query") or "")
    return r


def cli_storefront(req_json, bundle=None, catalog=None):
    """`vitrine recommend`'s answer to a JSON request."""
    out = subprocess.run([VITRINE, "recommend", "--bundle", bundle or os.path.join(FIXTURE, "bundle"),
                          "--catalog", catalog or os.path.join(FIXTURE, "catalog"),
                          "--request", "-"], input=json.dumps(req_json), capture_output=True,
                         text=True, check=True, timeout=30)
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def fixture_requests():
    """64 realistic JSON requests from the fixture shop's held-out shoppers (train.requests)."""
    out = os.path.join(tempfile.mkdtemp(prefix="vt-req-"), "requests.jsonl")
    subprocess.run(["/usr/bin/python3", "-m", "train.requests", "--shop",
                    os.path.join(FIXTURE, "shop.json"), "--out", out, "--n", "64", "--sections",
                    "2", "--keywords", "3", "--products", "4"], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)
    with open(out) as f:
        return [json.loads(line) for line in f]


def f32(x):
    """x rounded to float32, as the protobuf float fields carry it."""
    import struct
    return struct.unpack("f", struct.pack("f", x))[0]


def assert_same_storefront(resp, cli, rel=None):
    """The gRPC answer equals `vitrine recommend`'s JSON: ids, texts and order exactly; scores
    exactly (as float32) when the request ran alone (batch of 1, like the CLI), and within 1e-3 when
    it ran in a larger batch (the engine's contract: batching changes GEMM shapes, hence rounding,
    never ids or order; tests/test_parity.c checks the same). rel: scores within that relative
    difference instead (a CUDA engine against the CPU's CLI: sums in another order)."""
    exact = resp.timing.batch_size == 1 and rel is None

    def same(a, b):
        if rel is not None:
            return abs(a - b) <= rel * (1 + abs(b))
        return a == f32(b) if exact else abs(a - b) <= 1e-3

    assert resp.dropped_events == cli["dropped_events"]
    assert len(resp.sections) == len(cli["sections"])
    for s, c in zip(resp.sections, cli["sections"]):
        assert (s.theme.id, s.theme.text) == (c["theme"]["id"], c["theme"]["text"])
        assert same(s.theme.score, c["theme"]["score"]), (s.theme.score, c["theme"]["score"])
        assert [(k.id, k.text) for k in s.keywords] == [(k["id"], k["text"]) for k in c["keywords"]]
        assert all(same(a.score, b["score"]) for a, b in zip(s.keywords, c["keywords"]))
        assert [(p.id, p.index, p.keyword) for p in s.products] == \
            [(p["id"], p["index"], p["keyword"]) for p in c["products"]]
        assert all(same(a.score, b["score"]) for a, b in zip(s.products, c["products"]))
        texts = {k.id: k.text for k in s.keywords}
        for p in s.products:
            assert p.keyword_text == texts[p.keyword]  # retrieved by one of the section's keywords

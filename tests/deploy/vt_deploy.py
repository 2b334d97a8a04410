"""Shared by tests/deploy: paths (VT_BUILD, VT_FIXTURE), protobuf classes generated at test
time, and a `vitrine serve` child process on loopback (the minimum of tests/server/conftest.py's
Server, copied so that the two test directories stay independent). A module name of its own, not
conftest: tests/server's test files import `conftest` too, and one pytest session running both
directories would hand them the same module."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VT_BUILD", os.path.join(ROOT, "build"))
FIXTURE = os.environ.get("VT_FIXTURE", os.path.join(BUILD, "fixture"))
VITRINE = os.path.join(BUILD, "vitrine")
GRPC_PROTO = "/usr/share/grpc-proto"

_gen_dir = tempfile.mkdtemp(prefix="vt-deploy-pb-")
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


def need_fixture():
    for d in ("bundle", "catalog"):
        if not os.path.isfile(os.path.join(FIXTURE, d, "manifest.json")):
            pytest.skip(f"no fixture at {FIXTURE} (ctest's fixture_bundle makes it)")


def need_vitrine():
    if not os.access(VITRINE, os.X_OK):
        pytest.skip(f"no {VITRINE} (build it: make build)")


class Server:
    """A `vitrine serve` child process on 127.0.0.1 with free ports; stderr lines in self.lines."""

    def __init__(self, *extra, binary=None, bundle=None, catalog=None, env=None,
                 ready=r"\bserving\b", timeout=30):
        self.args = [binary or VITRINE, "serve",
                     "--bundle", bundle or os.path.join(FIXTURE, "bundle"),
                     "--catalog", catalog or os.path.join(FIXTURE, "catalog"),
                     "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *extra]
        e = dict(os.environ) if env is None else dict(env)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=e, text=True, errors="surrogateescape")
        self.lines = []
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            line = self.wait_for(ready, timeout)
        except AssertionError:
            self.kill()
            raise
        self.port = int(re.search(r"grpc_port\W+(\d+)", line).group(1))
        self.metrics_port = int(re.search(r"metrics_port\W+(\d+)", line).group(1))
        self.target = f"127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stderr:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, pattern, timeout):
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

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def requests_total(self, code):
        """vitrine_requests_total for Recommend with this status code name."""
        for line in self.metrics().splitlines():
            if line.startswith("vitrine_requests_total{") and \
                    'method="/vitrine.v1.Storefront/Recommend"' in line and \
                    f'code="{code}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def sigterm(self):
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)


def health_check(channel, service="", timeout=5):
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    return check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


def recommend_stub(channel):
    return channel.unary_unary(
        "/vitrine.v1.Storefront/Recommend",
        request_serializer=pb.RecommendRequest.SerializeToString,
        response_deserializer=pb.RecommendResponse.FromString)


def info_stub(channel):
    return channel.unary_unary(
        "/vitrine.v1.Storefront/GetInfo",
        request_serializer=pb.GetInfoRequest.SerializeToString,
        response_deserializer=pb.GetInfoResponse.FromString)


def small_request():
    """A valid request for the fixture shop (its products p00000..., region sg): one section."""
    now = 1748040600
    r = pb.RecommendRequest(now=now, region="sg", shopper_id="deploy-test", sections=1,
                            keywords_per_section=1, products_per_section=2)
    r.events.add(action=pb.ACTION_VIEW, ts=now - 300, item="p00000")
    r.events.add(action=pb.ACTION_CART, ts=now - 120, item="p00001")
    return r

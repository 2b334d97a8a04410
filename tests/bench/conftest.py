"""Fixtures for the vitrine-bench tests: servers started on free loopback ports (the stub and the
peer print "port=N", `vitrine serve` its "serving grpc_port=N" line), always killed at the end,
and a runner for build/vitrine-bench that returns its results.json."""
import json
import os
import re
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VT_BUILD", os.path.join(ROOT, "build"))
FIXTURE = os.environ.get("VT_FIXTURE", os.path.join(BUILD, "fixture"))
BENCH = os.path.join(BUILD, "vitrine-bench")
PY = "/usr/bin/python3"

# short steps: enough windows to check stability, the whole suite well under a minute
FAST = ["--warmup", "0.5", "--window", "1", "--max-windows", "3", "--quiet"]


class Proc:
    """A server child process; waits for the stderr line that gives its port."""

    def __init__(self, args, port_pattern, timeout=30):
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        rx = re.compile(port_pattern)
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                m = next((rx.search(ln) for ln in self.lines if rx.search(ln)), None)
                if m:
                    self.port = int(m.group(1))
                    break
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.kill()
                    raise AssertionError("%s did not start:\n%s" % (args[:3],
                                                                    "\n".join(self.lines[-20:])))
                self.cv.wait(0.1)
        self.target = "127.0.0.1:%d" % self.port

    def _read(self):
        for line in self.proc.stderr:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def servers():
    """start(kind, *args): kind "stub" (bench/stub_server.py), "peer" (bench/peer_server.py on
    the fixture bundle) or "vitrine" (`vitrine serve` on the fixture bundle)."""
    started = []

    def start(kind, *args):
        if kind == "stub":
            p = Proc([PY, "bench/stub_server.py", "--port", "0", *args], r"\bport=(\d+)")
        elif kind == "peer":
            p = Proc([PY, "bench/peer_server.py", "--bundle", os.path.join(FIXTURE, "bundle"),
                      "--catalog", os.path.join(FIXTURE, "catalog"), "--port", "0", *args],
                     r"\bport=(\d+)")
        else:
            p = Proc([os.path.join(BUILD, "vitrine"), "serve", "--bundle",
                      os.path.join(FIXTURE, "bundle"), "--catalog",
                      os.path.join(FIXTURE, "catalog"), "--listen", "127.0.0.1:0",
                      "--metrics-listen", "off", *args], r"\bserving grpc_port=(\d+)")
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
    for p in started:  # `vitrine serve` from a sanitizer build reports on stderr
        bad = [ln for ln in p.lines if "Sanitizer" in ln or "runtime error:" in ln]
        assert not bad, "\n".join(p.lines[-40:])


@pytest.fixture(scope="session")
def requests_file():
    """64 JSON requests from the fixture shop's held-out shoppers (train.requests)."""
    out = os.path.join(tempfile.mkdtemp(prefix="vt-bench-req-"), "requests.jsonl")
    subprocess.run([PY, "-m", "train.requests", "--shop", os.path.join(FIXTURE, "shop.json"),
                    "--out", out, "--n", "64", "--sections", "2", "--keywords", "3",
                    "--products", "4"], cwd=ROOT, check=True, capture_output=True, timeout=120)
    return out


def run_bench(target, requests, *args, out=None, check=True):
    """Runs vitrine-bench; returns (completed process, results.json or None)."""
    out = out or tempfile.mkdtemp(prefix="vt-bench-out-")
    p = subprocess.run([BENCH, "--target", target, "--requests", requests, "--out", out, *args],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    # a sanitizer build (-DVITRINE_SANITIZE=ON, `make check-asan`) reports on stderr
    assert "Sanitizer" not in p.stderr and "runtime error:" not in p.stderr, p.stderr
    path = os.path.join(out, "results.json")
    res = None
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
    return p, res


def step(res, name):
    """The step called name ("c=4", "r=200") of a results.json."""
    for s in res["steps"]:
        if s["step"] == name:
            return s
    raise AssertionError("no step %s in %s" % (name, [s["step"] for s in res["steps"]]))


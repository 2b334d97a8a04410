"""The GPU pack (tests/gpu/pack.py): made from this build's CUDA binaries and the fixture, it holds
every binary run.sh runs and every library they need outside the base set, fits its size limit,
and the check catches a pack that lacks a library or whose files do not match the manifest."""
import io
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VT_BUILD", os.path.join(ROOT, "build"))
FIXTURE = os.environ.get("VT_FIXTURE", os.path.join(BUILD, "fixture"))
PACK = [sys.executable, os.path.join(ROOT, "tests", "gpu", "pack.py")]
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
import pack  # noqa: E402


def _cuda_built():
    p = os.path.join(BUILD, "test_cuda_ops")
    if not os.path.exists(p):
        return False
    out = subprocess.run(["ldd", p], capture_output=True, text=True).stdout
    return "libcudart" in out


pytestmark = pytest.mark.skipif(not _cuda_built(),
                                reason="this build has no CUDA binaries (VITRINE_CUDA=OFF or no nvcc)")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pack") / "vitrine-gpu.tar.xz")
    r = subprocess.run(PACK + ["--build", BUILD, "--fixture", FIXTURE, "--out", out, "--level",
                               "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _names(path):
    with tarfile.open(path) as t:
        return {m.name: m for m in t.getmembers()}


def test_the_pack_is_complete_and_small_enough(made):
    names = _names(made)
    for b in pack.BINARIES:
        assert f"bin/{b}" in names, b
    for f in ("fixture/bundle/manifest.json", "fixture/golden.safetensors", "MANIFEST"):
        assert f in names, f
    assert not any(n.startswith("lib/libc.so") or "libcudart" in n for n in names)  # base set
    assert os.path.getsize(made) <= pack.LIMIT
    r = subprocess.run(PACK + ["--check", made], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # every library a binary needs outside the base set is there
    with tarfile.open(made) as t:
        libs = {os.path.basename(n) for n in names if n.startswith("lib/")}
        exe = t.extractfile("bin/vitrine").read()
    assert "libgrpc.so.29" in libs and "libopenblas.so.0" in libs
    assert b"libgrpc.so.29" in exe


def _rewrite(src, dst, drop=None, corrupt=None):
    """A copy of pack src without member `drop`, or with member `corrupt` changed."""
    with tarfile.open(src) as t, tarfile.open(dst, "w:xz", preset=0) as o:
        for m in t.getmembers():
            if m.name == drop:
                continue
            data = t.extractfile(m).read()
            if m.name == corrupt:
                data = data[:-1] + bytes([data[-1] ^ 1])
            info = tarfile.TarInfo(m.name)
            info.size, info.mode = len(data), m.mode
            o.addfile(info, io.BytesIO(data))


def test_a_missing_library_fails_the_check(made, tmp_path):
    bad = str(tmp_path / "bad.tar.xz")
    _rewrite(made, bad, drop="lib/libcjson.so.1")
    r = subprocess.run(PACK + ["--check", bad], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "needs libcjson.so.1: neither packed nor in the base set" in r.stderr, r.stderr
    assert "lib/libcjson.so.1: missing" in r.stderr, r.stderr


def test_a_changed_file_fails_the_check(made, tmp_path):
    bad = str(tmp_path / "bad.tar.xz")
    _rewrite(made, bad, corrupt="fixture/bundle/manifest.json")
    r = subprocess.run(PACK + ["--check", bad], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "fixture/bundle/manifest.json: does not match MANIFEST" in r.stderr, r.stderr

"""deploy/Dockerfile's steps, run here as the scripts they are (Docker cannot run on the
development machines): the build context .dockerignore leaves configures; install-cuda.sh and
build.sh do what the build stage does; stage.sh puts the binary and exactly the libraries the
runtime base lacks into a staging root; the staged binary then runs `--help` and `serve` on the
fixture with only the staged libraries and those runtime-base-libs.txt says debian:12-slim has,
answering gRPC health checks and a Recommend, every mapped library accounted for."""
import os
import re
import shutil
import stat
import subprocess

import grpc
import pytest

from vt_deploy import (BUILD, ROOT, VITRINE, Server, health_check, health_pb2,
                       need_fixture, need_vitrine, recommend_stub, small_request)

IMAGE = os.path.join(ROOT, "deploy", "image")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
PREFIX = "opt/vitrine"  # stage.sh's, the Dockerfile's LD_LIBRARY_PATH and ENTRYPOINT
UID = 10001             # stage.sh's default, the Dockerfile's USER


def base_libs():
    """{soname: package} from runtime-base-libs.txt."""
    out = {}
    with open(os.path.join(IMAGE, "runtime-base-libs.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                soname, pkg = line.split()[:2]
                out[soname] = pkg
    return out


def dockerfile():
    """(instructions as (KEYWORD, args) with line continuations joined, ARG defaults)."""
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n", " ", f.read())
    ins = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kw, _, rest = line.partition(" ")
            ins.append((kw.upper(), rest.strip()))
    args = {}
    for kw, rest in ins:
        if kw == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args.setdefault(k, v)
    return ins, args


# ---- the Dockerfile and its context ----

def test_dockerfile_shape():
    ins, args = dockerfile()
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], r.split()[0])
             for k, r in ins if k == "FROM"]
    assert len(froms) == 2, froms
    for img in froms:  # pinned to a Debian 12 point release
        assert re.fullmatch(r"debian:12\.\d+(-slim)?", img), img
    assert froms[1].endswith("-slim") and froms[0] + "-slim" == froms[1]
    with open(os.path.join(IMAGE, "runtime-base-libs.txt")) as f:
        assert froms[1] in f.read(), "runtime-base-libs.txt names another base than the Dockerfile"
    # every RUN is one of the scripts this test runs
    runs = [r for k, r in ins if k == "RUN"]
    scripts = [re.search(r"((?:deploy/image|scripts)/[\w.-]+\.sh)", r).group(1) for r in runs]
    assert scripts == ["deploy/image/install-cuda.sh", "scripts/install-deps.sh",
                       "deploy/image/build.sh", "deploy/image/stage.sh"], runs
    for s in scripts:
        assert os.access(os.path.join(ROOT, s), os.X_OK), s
    runtime = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][1]:]
    kws = [k for k, _ in runtime]
    assert "RUN" not in kws, "the runtime stage only copies the staged root"
    assert [r for k, r in runtime if k == "COPY"] == ["--from=build /stage/ /"]
    (user,) = [r for k, r in runtime if k == "USER"]
    assert user == f"{UID}:{UID}"
    env = " ".join(r for k, r in runtime if k == "ENV")
    assert f"LD_LIBRARY_PATH=/{PREFIX}/lib" in env
    (entry,) = [r for k, r in runtime if k == "ENTRYPOINT"]
    assert entry == f'["/{PREFIX}/bin/vitrine", "serve"]'
    (vol,) = [r for k, r in runtime if k == "VOLUME"]
    assert vol == '["/models/bundle", "/models/catalog"]'
    (expose,) = [r for k, r in runtime if k == "EXPOSE"]
    assert expose.split() == ["50051", "9464"]  # VITRINE_LISTEN's and VITRINE_METRICS_LISTEN's defaults
    with open(os.path.join(IMAGE, "stage.sh")) as f:
        stage_sh = f.read()
    assert f"VITRINE_UID:-{UID}" in stage_sh and f"prefix=/{PREFIX}\n" in stage_sh


def dockerignore_rules():
    rules = []
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = line[1:] if neg else line
            rules.append((neg, pat.rstrip("/")))
    return rules


def _match(pat, path):
    """Docker's .dockerignore matching (moby/patternmatcher): the pattern matches the path or one
    of its parent directories; `*` stays within a path element, `**` spans any number."""
    rx = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            rx += "(?:.*/)?"
            i += 3
        elif pat.startswith("**", i):
            rx += ".*"
            i += 2
        elif pat[i] == "*":
            rx += "[^/]*"
            i += 1
        elif pat[i] == "?":
            rx += "[^/]"
            i += 1
        else:
            rx += re.escape(pat[i])
            i += 1
    parts = path.split("/")
    return any(re.fullmatch(rx, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def in_context(path, rules):
    keep = True
    for neg, pat in rules:
        if _match(pat, path):
            keep = neg
    return keep


def context_files():
    rules = dockerignore_rules()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    files = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for f in filenames:
            p = f if rel == "." else f"{rel}/{f}"
            if in_context(p, rules):
                files.add(p)
    return files, set(tracked)


def test_dockerignore_matcher():
    """The matcher above agrees with Docker's documented examples."""
    assert _match("*", "build/vitrine") and _match("build", "build/x/y")
    assert not _match("bench/*.c", "bench/loadgen/main.c") and _match("bench/*.c", "bench/a.c")
    assert _match("**/__pycache__", "a/b/__pycache__/x.pyc") and _match("**/*.pyc", "x.pyc")
    rules = [(False, "*"), (True, "cli"), (False, "**/*.pyc")]
    assert in_context("cli/main.c", rules) and not in_context("cli/x.pyc", rules)
    assert not in_context("train/x.py", rules)


def test_dockerignore_context(tmp_path):
    """The build context holds the sources CMake needs and no build tree, model or data; a CMake
    configure from exactly that context succeeds (the image's build.sh then builds from it)."""
    files, tracked = context_files()
    assert files, "empty build context"
    for p in files:
        top = p.split("/")[0]
        assert not top.startswith("build") and top not in (".git", "gpu-pack", "train", "docs"), p
        assert not p.endswith((".pyc", ".pt", ".safetensors")), p
    need = {"CMakeLists.txt", "scripts/install-deps.sh", "deploy/image/build.sh",
            "deploy/image/stage.sh", "deploy/image/install-cuda.sh",
            "deploy/image/runtime-base-libs.txt", "proto/vitrine/v1/storefront.proto"}
    need |= {p for p in tracked if p.startswith(("engine/", "serve/", "cli/", "kernels/", "cmake/"))}
    assert not need - files, sorted(need - files)
    ctx = tmp_path / "ctx"
    for p in files:
        if p in tracked:  # what a clean checkout has
            os.makedirs(ctx / os.path.dirname(p), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, p), ctx / p)
    out = subprocess.run(["cmake", "-S", str(ctx), "-B", str(tmp_path / "b"), "-DVITRINE_CUDA=OFF",
                          "-DVITRINE_CUDA_EMU=OFF"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


# ---- the build stage's scripts ----

def run_script(args, env=None, timeout=120):
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    e.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=e, timeout=timeout)


def test_install_cuda_step():
    """OFF (the CPU image): nothing to do. ON: with the toolkit already there (a development
    machine) it installs nothing and names the nvcc build.sh will use; bad settings are refused."""
    script = os.path.join(IMAGE, "install-cuda.sh")
    out = run_script([script])
    assert out.returncode == 0 and "no CUDA toolkit needed" in out.stdout, out
    for bad in ({"VITRINE_CUDA": "YES"}, {"VITRINE_CUDA": "ON", "CUDA_VERSION": "13"}):
        assert run_script([script], bad).returncode == 2, bad
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)
    if not nvcc:
        pytest.skip("no CUDA toolkit here: install-cuda.sh's ON path runs only in the image build")
    ver = re.search(r"release (\d+\.\d+),", subprocess.run([nvcc, "--version"], capture_output=True,
                                                           text=True).stdout).group(1)
    if not os.access(f"/usr/local/cuda-{ver}/bin/nvcc", os.X_OK):
        pytest.skip(f"nvcc {ver} is not at /usr/local/cuda-{ver} (where NVIDIA's packages put it)")
    out = run_script([script], {"VITRINE_CUDA": "ON", "CUDA_VERSION": ver})
    assert out.returncode == 0, out
    assert out.stdout.splitlines()[-1] == f"nvcc=/usr/local/cuda-{ver}/bin/nvcc"
    assert "already installed" in out.stdout
    missing = run_script([script, "--check"], {"VITRINE_CUDA": "ON", "CUDA_VERSION": "99.9"})
    assert missing.returncode == 1  # --check never installs


@pytest.mark.skipif(os.environ.get("VT_IMAGE_BUILD") != "1",
                    reason="set VT_IMAGE_BUILD=1 to run deploy/image/build.sh on VT_BUILD "
                           "(ctest does, right after `make build`, when it has nothing to do)")
def test_build_step():
    """build.sh on the build tree under test: install-deps (nothing missing), configure (the
    tree keeps its settings), build the binary (up to date)."""
    out = run_script([os.path.join(IMAGE, "build.sh"), BUILD], dict(os.environ), timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"build: {BUILD}/vitrine"
    assert os.access(VITRINE, os.X_OK)


# ---- the staged root ----

@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    need_vitrine()
    root = tmp_path_factory.mktemp("stage") / "root"
    out = run_script([os.path.join(IMAGE, "stage.sh"), VITRINE, str(root)])
    assert out.returncode == 0, out
    return root


def clean_env(root):
    """The runtime image's environment, as far as the loader is concerned."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": str(root / PREFIX / "lib")}


def ldd(binary, env):
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    res = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (.*?) \(0x", line)
        if m:
            res[m.group(1)] = m.group(2)
        elif "not found" in line:
            res[line.split()[0]] = None
    return res


def test_staged_tree_is_only_binary_libs_and_user(staged):
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if not p.is_dir())
    libs = [f for f in files if f.startswith(f"{PREFIX}/lib/")]
    assert set(files) - set(libs) == {f"{PREFIX}/bin/vitrine", "etc/passwd", "etc/group"}, files
    dirs = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_dir())
    assert dirs == ["etc", "opt", PREFIX, f"{PREFIX}/bin", f"{PREFIX}/lib"], dirs
    binary = staged / PREFIX / "bin" / "vitrine"
    assert binary.stat().st_mode & stat.S_IXOTH
    with open(binary, "rb") as a, open(VITRINE, "rb") as b:
        assert a.read() == b.read()
    # exactly the libraries ldd lists that the base lacks, each a shared object
    wanted = {s for s in ldd(VITRINE, dict(os.environ)) if s not in base_libs()}
    assert {os.path.basename(f) for f in libs} == wanted
    for f in libs:
        with open(staged / f, "rb") as fh:
            assert fh.read(4) == b"\x7fELF", f
    passwd = (staged / "etc/passwd").read_text().splitlines()
    (user,) = [ln for ln in passwd if ln.split(":")[2] == str(UID)]
    assert user.split(":")[3] == str(UID) and user.endswith("nologin"), user
    assert any(ln.split(":")[2] == str(UID) for ln in (staged / "etc/group").read_text().splitlines())


def test_staged_libraries_resolve(staged):
    """With only the staged library directory on LD_LIBRARY_PATH, every library resolves to it
    or is one the runtime base has."""
    base = base_libs()
    libdir = str(staged / PREFIX / "lib")
    res = ldd(staged / PREFIX / "bin" / "vitrine", clean_env(staged))
    assert res and None not in res.values(), res
    for soname, path in res.items():
        assert os.path.dirname(path) == libdir or soname in base, (soname, path)
    # the base set is what it claims on this Debian 12: each soname from the package named
    if shutil.which("dpkg"):
        for soname, path in res.items():
            if soname in base:
                owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True,
                                       text=True).stdout
                if not owner:  # /lib -> /usr/lib on merged-/usr systems
                    owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True).stdout
                assert owner.split(":")[0] == base[soname], (soname, owner)


def base_files(root):
    """The files (real paths) the runtime base provides of what the binary may load: the base
    libraries as ldd resolves them, the loader, and, with dpkg, every file of the packages
    runtime-base-libs.txt names (a library glibc loads itself, such as an NSS module, is there
    too)."""
    out = {os.path.realpath("/lib64/ld-linux-x86-64.so.2")}
    base = base_libs()
    for soname, path in ldd(root / PREFIX / "bin" / "vitrine", clean_env(root)).items():
        if soname in base:
            out.add(os.path.realpath(path))
    if shutil.which("dpkg"):
        for pkg in set(base.values()):
            listed = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout
            out |= {os.path.realpath(p) for p in listed.split()}
    return out


def test_staged_binary_runs_help(staged):
    out = subprocess.run([str(staged / PREFIX / "bin" / "vitrine"), "serve", "--help"],
                         capture_output=True, text=True, env=clean_env(staged), timeout=30)
    assert out.returncode == 0, out.stderr
    assert "VITRINE_LISTEN" in out.stdout


def test_staged_binary_serves(staged):
    """`vitrine serve` from the staged root on the fixture, with the loader limited to the staged
    libraries (and the base's): health SERVING for readiness and liveness, a storefront, every
    shared object it mapped accounted for, and a clean drain."""
    need_fixture()
    srv = Server(binary=str(staged / PREFIX / "bin" / "vitrine"), env=clean_env(staged))
    try:
        ch = grpc.insecure_channel(srv.target)
        SERVING = health_pb2.HealthCheckResponse.SERVING
        assert health_check(ch, "") == SERVING
        assert health_check(ch, "vitrine.v1.Storefront") == SERVING
        assert health_check(ch, "liveness") == SERVING
        assert recommend_stub(ch)(small_request(), timeout=10).sections
        ch.close()
        libdir = str(staged / PREFIX / "lib")
        allowed = base_files(staged)
        with open(f"/proc/{srv.proc.pid}/maps") as f:
            mapped = {ln.split()[-1] for ln in f if ".so" in ln.split()[-1]}
        assert any(os.path.dirname(p) == libdir for p in mapped), mapped
        for path in mapped:
            assert os.path.dirname(path) == libdir or os.path.realpath(path) in allowed, path
        assert srv.stop() == 0
    finally:
        srv.kill()


def test_stage_refuses_an_unresolved_library(tmp_path):
    """A binary whose library cannot be found is not staged half-way."""
    need_vitrine()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ""
    fake = tmp_path / "bin"
    shutil.copy2(VITRINE, fake)
    # patch the NEEDED name libcjson.so.1 into one that exists nowhere, same length
    data = fake.read_bytes().replace(b"libcjson.so.1\x00", b"libcjzzn.so.1\x00", 1)
    fake.write_bytes(data)
    out = run_script([os.path.join(IMAGE, "stage.sh"), str(fake), str(tmp_path / "root")])
    assert out.returncode != 0 and "libcjzzn.so.1" in out.stderr, out

"""The GPU pack: what a lent GPU machine needs to run tests/gpu/run.sh, in one compressed file.

    /usr/bin/python3 tests/gpu/pack.py --build build-gpu --out gpu-pack/vitrine-gpu.tar.xz \\
        [--demo build/demo] [--fixture build-gpu/fixture]
    /usr/bin/python3 tests/gpu/pack.py --check gpu-pack/vitrine-gpu.tar.xz

The GPU machine has CUDA 13 (runtime, cuBLAS, compute-sanitizer), CMake and Python with PyTorch,
but none of the project's Debian C libraries and no package registry, and at most 64 MiB travel
with a call. So the binaries are built here (`make gpu-pack`: CUDA on, sm_90) and packed with
every shared library `ldd` shows they need, except the base system set every Linux with CUDA has
(glibc, libstdc++, libgcc, the CUDA libraries; BASE below); plus the fixture and demo bundles.
Layout inside: bin/, lib/, fixture/, demo/, MANIFEST (name, bytes, sha256 per file).
run.sh unpacks it and runs the binaries with LD_LIBRARY_PATH=lib plus the machine's CUDA.

--check verifies a pack: every NEEDED entry of every ELF file in it (readelf -d) is satisfied
inside lib/ or by the base set, MANIFEST matches the files, and the file fits the size limit.
"""
import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile

BINARIES = ["vitrine", "vitrine-bench", "bench_engine", "bench_cuda_kernels", "test_cuda_ops",
            "test_backend", "test_decode_ops", "test_device_parity", "test_parity", "test_rules"]
# sonames every machine with glibc and the CUDA 13 toolkit or driver has
BASE = [r"linux-vdso\.so\.\d+", r"ld-linux-x86-64\.so\.2", r"libc\.so\.6", r"libm\.so\.6",
        r"libdl\.so\.2", r"libpthread\.so\.0", r"librt\.so\.1", r"libresolv\.so\.2",
        r"libstdc\+\+\.so\.6", r"libgcc_s\.so\.1", r"libcuda\.so\.1", r"libcudart\.so\.13",
        r"libcublas\.so\.13", r"libcublasLt\.so\.13", r"libnccl\.so\.2"]
LIMIT = 48 << 20  # bytes: the working tree travels in the same 64 MiB
# what run.sh reads of the fixture and demo directories (not the training leftovers)
KEEP = ("bundle", "catalog", "golden.safetensors", "requests.jsonl")


def is_base(soname):
    return any(re.fullmatch(p, soname) for p in BASE)


def needed(path):
    """The NEEDED sonames of an ELF file (empty for a file that is not one)."""
    r = subprocess.run(["readelf", "-d", path], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", r.stdout)


def resolved(path):
    """soname -> file for every library the loader finds for path, transitively (ldd)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and m.group(2) != "not":
            libs[m.group(1)] = m.group(2)
        elif "not found" in line:
            raise SystemExit(f"pack: {path}: {line.strip()}")
    return libs


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def make(a):
    files = {}  # name in the pack -> bytes
    libs = {}
    for b in BINARIES:
        p = os.path.join(a.build, b)
        if not os.path.exists(p):
            raise SystemExit(f"pack: {p} is missing (build it first: make gpu-pack)")
        files[f"bin/{b}"] = open(p, "rb").read()
        for soname, f in resolved(p).items():
            if not is_base(soname):
                libs[soname] = f
    for soname, f in sorted(libs.items()):
        files[f"lib/{soname}"] = open(os.path.realpath(f), "rb").read()
    for tree, prefix in ((a.fixture, "fixture"), (a.demo, "demo")):
        if not tree:
            continue
        for root, _, names in os.walk(tree):
            rel_root = os.path.relpath(root, tree)
            for n in names:
                rel = os.path.normpath(os.path.join(rel_root, n))
                if rel.split(os.sep)[0] in KEEP:
                    files[os.path.join(prefix, rel)] = open(os.path.join(root, n), "rb").read()
    manifest = "".join(f"{n}\t{len(d)}\t{sha256(d)}\n" for n, d in sorted(files.items()))
    files["MANIFEST"] = manifest.encode()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w:xz", preset=a.level) as t:
        for n, d in sorted(files.items()):
            info = tarfile.TarInfo(n)
            info.size = len(d)
            info.mode = 0o755 if n.startswith("bin/") else 0o644
            t.addfile(info, io.BytesIO(d))
    os.replace(tmp, a.out)
    raw = sum(len(d) for d in files.values())
    print(f"pack: {a.out}: {len(files)} files, {raw / 2**20:.1f} MiB unpacked, "
          f"{os.path.getsize(a.out) / 2**20:.1f} MiB packed ({len(libs)} libraries)")
    return check(a.out)


def check(pack):
    """0 when the pack is complete and small enough; else 1, with each problem printed."""
    problems = []
    size = os.path.getsize(pack)
    if size > LIMIT:
        problems.append(f"{size / 2**20:.1f} MiB is over the {LIMIT >> 20} MiB limit")
    tmp = pack + ".check"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(pack) as t:
        try:
            t.extractall(tmp, filter="data")
        except TypeError:  # Python before 3.11.4 has no filter (and needs none for our packs)
            t.extractall(tmp)
    try:
        listed = {}
        for line in open(os.path.join(tmp, "MANIFEST")):
            name, n, digest = line.rstrip("\n").split("\t")
            listed[name] = (int(n), digest)
        have = set()
        for root, _, names in os.walk(tmp):
            for n in names:
                rel = os.path.relpath(os.path.join(root, n), tmp)
                if rel != "MANIFEST":
                    have.add(rel)
        for name in sorted(have ^ set(listed)):
            problems.append(f"{name}: {'not in MANIFEST' if name in have else 'missing'}")
        for name in sorted(have & set(listed)):
            data = open(os.path.join(tmp, name), "rb").read()
            if (len(data), sha256(data)) != listed[name]:
                problems.append(f"{name}: does not match MANIFEST")
        packed = set(os.listdir(os.path.join(tmp, "lib"))) if os.path.isdir(
            os.path.join(tmp, "lib")) else set()
        if not any(n.startswith("bin/") for n in have):
            problems.append("no binaries")
        for name in sorted(have):
            if not (name.startswith("bin/") or name.startswith("lib/")):
                continue
            for soname in needed(os.path.join(tmp, name)):
                if soname not in packed and not is_base(soname):
                    problems.append(f"{name} needs {soname}: neither packed nor in the base set")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in problems:
        print(f"pack: {pack}: {p}", file=sys.stderr)
    if not problems:
        print(f"pack: {pack}: complete ({size / 2**20:.1f} MiB)")
    return 1 if problems else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", help="the CUDA build tree holding the binaries")
    ap.add_argument("--out", default="gpu-pack/vitrine-gpu.tar.xz")
    ap.add_argument("--fixture", help="the fixture bundle directory (train.fixture)")
    ap.add_argument("--demo", help="the demo directory (bundle/, catalog/, golden, requests)")
    ap.add_argument("--check", metavar="PACK", help="verify a pack instead of making one")
    ap.add_argument("--level", type=int, default=9, choices=range(10),
                    help="xz compression level (lower: faster, larger)")
    a = ap.parse_args(argv)
    if a.check:
        return check(a.check)
    if not a.build:
        ap.error("--build is required to make a pack")
    return make(a)


if __name__ == "__main__":
    sys.exit(main())

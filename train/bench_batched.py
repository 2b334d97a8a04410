"""Time the batched PyTorch cascade (train/cascade_batched.py) against the per-request reference
(train/cascade.py), by batch size, on the same requests, threads and device.

    /usr/bin/python3 -m train.bench_batched --bundle build/demo/bundle \\
        --catalog build/demo/catalog --requests build/demo/requests.jsonl \\
        [--batches 1,8,32,128] [--threads 1] [--device cpu|cuda|cuda:N] [--seconds 5] \\
        [--variants reference,default,eager,unchunked,frozen,mkldnn,sparse]

Variants (each a line per batch size):
    reference  Cascade.recommend_many: one padded encoder batch, then each request decoded alone
               (what bench_reference.py measures)
    default    BatchedCascade's defaults: the decoder step compiled by torch.jit.script, the
               encoder run on requests sorted by history length, 32 at a time (less padding),
               dense logits (h @ tok_emb^T, then the children's gathered)
and the defaults with one option changed:
    eager      the decoder step as plain PyTorch (no TorchScript)
    unchunked  the whole batch in one padded encoder pass (encode_chunk=0)
    frozen     the decoder step scripted, frozen and passed through
               torch.jit.optimize_for_inference
    mkldnn     every Linear layer an MKLDNN (oneDNN) one (torch.utils.mkldnn)
    sparse     the children's logits from their gathered embedding rows instead of the dense
               h @ tok_emb^T (pays when the vocabulary is large)

--threads sets torch's threads and, where torch's BLAS is OpenBLAS (Debian's), OpenBLAS's own
thread pool too (it ignores torch.set_num_threads and would otherwise take every core for the
larger GEMMs of a big batch); each line says which ("blas_threads", null if not set).

The variants take turns within a batch size (--rounds turns each), so a load that comes and goes
on a shared machine spreads over all of them. Prints one JSON line per variant and batch size:
requests/s (wall clock), requests per CPU second of this process (steadier when other jobs share
the cores), batch latency p50/p99, the device and on CUDA the card's name (the clock is read after
torch.cuda.synchronize()). Exits 2 if --device names a CUDA device and torch has none.
"""
import argparse
import ctypes
import json
import sys
import time

import torch

from .bench_reference import pick_device
from .bundle import load_bundle, load_catalog
from .cascade import Cascade
from .cascade_batched import BatchedCascade

VARIANTS = {  # BatchedCascade's defaults, then one option changed at a time
    "default": dict(),
    "eager": dict(step="eager"),
    "unchunked": dict(encode_chunk=0),
    "frozen": dict(step="frozen"),
    "mkldnn": dict(mkldnn=True),
    "sparse": dict(logits="sparse"),
}


def set_blas_threads(n):
    """OpenBLAS's thread count (torch.set_num_threads does not reach it) -> n, or None if this
    torch's BLAS is not an OpenBLAS we can reach."""
    for name in ("libopenblas.so.0", "libblas.so.3"):
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_set_num_threads(int(n))
            return int(lib.openblas_get_num_threads())
        except (OSError, AttributeError):
            continue
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="minimum time per variant and batch size")
    ap.add_argument("--rounds", type=int, default=3, help="turns per variant and batch size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--variants", default="reference,default",
                    help="comma-separated, from: reference, " + ", ".join(VARIANTS))
    a = ap.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v != "reference" and v not in VARIANTS]
    if bad or not names:
        print("bench_batched: unknown variant(s) %s; known: reference, %s" %
              (", ".join(bad) or "(none given)", ", ".join(VARIANTS)), file=sys.stderr)
        return 2
    dev, err = pick_device(a.device)
    if err:
        print(err.replace("bench_reference:", "bench_batched:"), file=sys.stderr)
        return 2
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
    torch.set_num_threads(a.threads)
    blas = set_blas_threads(a.threads)
    model, tables, man = load_bundle(a.bundle)
    catalog, _ = load_catalog(a.catalog, tables, model.cfg, man["model_version"])
    model.to(dev)
    with open(a.requests) as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    runners = {}
    for v in names:
        if v == "reference":
            ref = Cascade.from_manifest(model, tables, catalog, man)
            runners[v] = ref.recommend_many
        else:
            runners[v] = BatchedCascade.from_manifest(model, tables, catalog, man,
                                                      **VARIANTS[v]).storefronts
    where = {"device": str(dev), "blas_threads": blas}
    if cuda:
        where["device_name"] = torch.cuda.get_device_name(dev)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        for run in runners.values():  # warm-up: lazy initialisation, TorchScript's first runs
            for _ in range(3):
                run(reqs[:4])
        sync()
        for bs in (int(x) for x in a.batches.split(",")):
            lat = {v: [] for v in names}
            cpu = {v: 0.0 for v in names}
            i = 0
            for _ in range(max(1, a.rounds)):
                for v in names:
                    run = runners[v]
                    run([reqs[k % len(reqs)] for k in range(bs)])  # this batch shape
                    sync()
                    t_end = time.perf_counter() + a.seconds / max(1, a.rounds)
                    c0 = time.process_time()
                    n0 = len(lat[v])
                    while time.perf_counter() < t_end or len(lat[v]) - n0 < 2:
                        batch = [reqs[(i + k) % len(reqs)] for k in range(bs)]
                        i += bs
                        t0 = time.perf_counter()
                        run(batch)
                        sync()
                        lat[v].append(time.perf_counter() - t0)
                    cpu[v] += time.process_time() - c0
            for v in names:
                ls = sorted(lat[v])
                done = bs * len(ls)
                print(json.dumps({
                    "engine": "pytorch" if v == "reference" else "pytorch-batched",
                    "variant": v, **where, "threads": a.threads, "batch": bs,
                    "requests_per_s": done / sum(ls),
                    "requests_per_cpu_s": done / cpu[v] if cpu[v] > 0 else None,
                    "batch_ms_p50": 1000 * ls[len(ls) // 2],
                    "batch_ms_p99": 1000 * ls[min(len(ls) - 1, int(len(ls) * 0.99))],
                    "batches": len(ls)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the PyTorch reference cascade on a request file, by batch size: the peer the C engine is
measured against (bench/run_cpu.sh runs both on the same requests and threads; tests/gpu/run.sh
runs both on the same card with --device cuda).

    /usr/bin/python3 -m train.bench_reference --bundle build/demo/bundle \\
        --catalog build/demo/catalog --requests build/demo/requests.jsonl --batches 1,8,32,128 \\
        [--device cpu|cuda|cuda:N]

A batch is one padded encoder pass plus each request's decoding (the reference decodes one
request at a time). Prints one JSON line per batch size: requests/s and batch latency, the device
("cpu", "cuda:0") and on CUDA the card's name. On CUDA the clock is read after
torch.cuda.synchronize(), so a batch's time includes all its kernels. Exits 2 if --device names
a CUDA device and torch has none.
"""
import argparse
import json
import sys
import time

import torch

from .bundle import load_bundle, load_catalog
from .cascade import Cascade


def pick_device(name):
    """--device -> torch.device, or an error message."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is not None and dev.type == "cpu":
        return torch.device("cpu"), None
    if dev is None or dev.type != "cuda":
        return None, "bench_reference: --device must be cpu, cuda or cuda:N, not %r" % name
    if not torch.cuda.is_available():
        return None, ("bench_reference: --device %s asked for, but CUDA is not available to this "
                      "torch (%s, built with CUDA %s)" % (name, torch.__version__,
                                                          torch.version.cuda))
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        return None, "bench_reference: --device %s, but torch sees %d CUDA device(s)" % (
            name, torch.cuda.device_count())
    return dev, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum time per batch size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    a = ap.parse_args(argv)
    dev, err = pick_device(a.device)
    if err:
        print(err, file=sys.stderr)
        return 2
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
    torch.set_num_threads(a.threads)
    model, tables, man = load_bundle(a.bundle)
    catalog, _ = load_catalog(a.catalog, tables, model.cfg, man["model_version"])
    model.to(dev)  # the cascade follows the model: its tensors and the product embeddings
    cascade = Cascade.from_manifest(model, tables, catalog, man)
    with open(a.requests) as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    where = {"device": str(dev)}
    if cuda:
        where["device_name"] = torch.cuda.get_device_name(dev)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        cascade.recommend_many(reqs[:4])  # warm-up
        sync()
        for bs in (int(x) for x in a.batches.split(",")):
            cascade.recommend_many([reqs[k % len(reqs)] for k in range(bs)])  # this batch shape
            sync()
            lat, done, i = [], 0, 0
            t_end = time.perf_counter() + a.seconds
            while time.perf_counter() < t_end or len(lat) < 3:
                batch = [reqs[(i + k) % len(reqs)] for k in range(bs)]
                i += bs
                t0 = time.perf_counter()
                cascade.recommend_many(batch)
                sync()
                lat.append(time.perf_counter() - t0)
                done += bs
            lat.sort()
            print(json.dumps({"engine": "pytorch", **where, "threads": a.threads, "batch": bs,
                              "requests_per_s": done / sum(lat),
                              "batch_ms_p50": 1000 * lat[len(lat) // 2],
                              "batch_ms_p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                              "batches": len(lat)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

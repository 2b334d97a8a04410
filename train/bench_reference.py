"""Time the PyTorch reference cascade on a request file, by batch size: the peer the C engine is
measured against (bench/run_cpu.sh runs both on the same requests and threads).

    /usr/bin/python3 -m train.bench_reference --bundle build/demo/bundle \\
        --catalog build/demo/catalog --requests build/demo/requests.jsonl --batches 1,8,32,128

A batch is one padded encoder pass plus each request's decoding (the reference decodes one
request at a time). Prints one JSON line per batch size: requests/s and batch latency.
"""
import argparse
import json
import sys
import time

import torch

from .bundle import load_bundle, load_catalog
from .cascade import Cascade


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum time per batch size")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tables, man = load_bundle(a.bundle)
    catalog, _ = load_catalog(a.catalog, tables, model.cfg, man["model_version"])
    cascade = Cascade.from_manifest(model, tables, catalog, man)
    with open(a.requests) as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    cascade.recommend_many(reqs[:4])  # warm-up
    for bs in (int(x) for x in a.batches.split(",")):
        lat, done, i = [], 0, 0
        t_end = time.perf_counter() + a.seconds
        while time.perf_counter() < t_end or len(lat) < 3:
            batch = [reqs[(i + k) % len(reqs)] for k in range(bs)]
            i += bs
            t0 = time.perf_counter()
            cascade.recommend_many(batch)
            lat.append(time.perf_counter() - t0)
            done += bs
        lat.sort()
        print(json.dumps({"engine": "pytorch", "threads": a.threads, "batch": bs,
                          "requests_per_s": done / sum(lat),
                          "batch_ms_p50": 1000 * lat[len(lat) // 2],
                          "batch_ms_p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                          "batches": len(lat)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

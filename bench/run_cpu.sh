#!/usr/bin/env bash
# The engine benchmark on the CPU: the C engine against the PyTorch reference (one request at a
# time) and the batched PyTorch cascade on the same demo bundle, the same request file and the
# same thread count, side by side. Writes
# build/bench/cpu-THREADS.jsonl and prints a markdown table last.
#
#   bench/run_cpu.sh [THREADS=1] [SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-1}
SECONDS_PER=${2:-5}
DEMO=build/demo
OUT=build/bench
mkdir -p "$OUT"
make -s bundle build >/dev/null
[ -f "$DEMO/requests.jsonl" ] || /usr/bin/python3 -m train.requests --shop "$DEMO/shop.json" \
  --out "$DEMO/requests.jsonl" --n 512
res="$OUT/cpu-$THREADS.jsonl"
: > "$res"
OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS build/bench_engine --bundle "$DEMO/bundle" \
  --catalog "$DEMO/catalog" --requests "$DEMO/requests.jsonl" --seconds "$SECONDS_PER" | tee -a "$res"
/usr/bin/python3 -m train.bench_reference --bundle "$DEMO/bundle" --catalog "$DEMO/catalog" \
  --requests "$DEMO/requests.jsonl" --threads "$THREADS" --seconds "$SECONDS_PER" | tee -a "$res"
# the batched PyTorch cascade (train/cascade_batched.py: what a competent team would write)
/usr/bin/python3 -m train.bench_batched --bundle "$DEMO/bundle" --catalog "$DEMO/catalog" \
  --requests "$DEMO/requests.jsonl" --threads "$THREADS" --seconds "$SECONDS_PER" \
  --variants default | tee -a "$res"
/usr/bin/python3 - "$res" "$THREADS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
c = {r["batch"]: r for r in rows if r["engine"] == "vitrine-c"}
p = {r["batch"]: r for r in rows if r["engine"] == "pytorch"}
q = {r["batch"]: r for r in rows if r["engine"] == "pytorch-batched"}
print("\n| batch | C req/s | PyTorch per-request req/s | C / per-request | batched PyTorch req/s "
      "| C / batched | C batch p50 ms | batched PyTorch batch p50 ms | beam step / decode |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for b in sorted(c):
    if b in p and b in q:
        print("| %d | %.0f | %.1f | %.1fx | %.1f | %.1fx | %.2f | %.1f | %.1f%% |" % (
            b, c[b]["requests_per_s"], p[b]["requests_per_s"],
            c[b]["requests_per_s"] / p[b]["requests_per_s"], q[b]["requests_per_s"],
            c[b]["requests_per_s"] / q[b]["requests_per_s"], c[b]["batch_ms_p50"],
            q[b]["batch_ms_p50"], 100 * c[b]["beam_of_decode"]))
print("\nthreads: %s (OPENBLAS_NUM_THREADS for C, torch.set_num_threads for PyTorch)" % sys.argv[2])
PY

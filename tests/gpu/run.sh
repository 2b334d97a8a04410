#!/usr/bin/env bash
# Everything a lent GPU machine should show, in one command that fits in 8 minutes on an H100:
#   1. the CUDA tests: every op against the CPU (test_cuda_ops, test_backend, test_decode_ops)
#      and the whole cascade against the CPU engine (test_device_parity, on the fixture's and
#      the demo's golden requests; test_rules, under the catalogue's rules: docs/RULES.md);
#   2. compute-sanitizer memcheck, racecheck and synccheck on the CUDA op tests;
#   3. the kernel benchmark (bench_cuda_kernels);
#   4. the engine benchmark by batch size: the CPU engine, the CUDA engine with and without CUDA
#      graphs, and the PyTorch reference on the same card (train.bench_reference --device cuda);
#   5. a short vitrine-bench sweep against `vitrine serve --device cuda:0`;
# then a results folder that can be committed as it is, and a table last.
#
# The machine has CUDA 13, CMake and Python with PyTorch, but none of the project's Debian C
# libraries: the binaries come prebuilt in the pack that `make gpu-pack` makes here
# (tests/gpu/pack.py: bin/, lib/, fixture/, demo/), and run with LD_LIBRARY_PATH=lib.
#
#   tests/gpu/run.sh [PACK]          PACK defaults to gpu-pack/vitrine-gpu.tar.xz
#   RESULTS=dir tests/gpu/run.sh     where results go (default bench/results/gpu-DATE); when $OUT
#                                    is set (the device tool), a copy goes there too
#   QUICK=1 tests/gpu/run.sh         shorter benchmarks
# Exits non-zero if a test fails, is skipped (on a GPU machine a skip means the device was not
# usable) or a sanitizer reports an error; the benchmarks' figures are in the results folder.
set -u
cd "$(dirname "$0")/../.." || exit 1
PACK=${1:-gpu-pack/vitrine-gpu.tar.xz}
STAMP=$(date -u +%Y-%m-%d)
RESULTS=${RESULTS:-bench/results/gpu-$STAMP}
QUICK=${QUICK:-0}
SECS=2
[ "$QUICK" = 1 ] && SECS=1
T0=$(date +%s)
BUDGET=${BUDGET:-470} # seconds: the whole run fits in 8 minutes; optional steps are cut to fit
left() { echo $((T0 + BUDGET - $(date +%s))); }
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.md"
: >"$SUMMARY"
status=0
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >>"$SUMMARY"; }
elapsed() { echo $(($(date +%s) - T0)); }

# ---- the machine ----------------------------------------------------------------------------
{
  echo "# tests/gpu/run.sh, $STAMP"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>/dev/null | tail -1
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1
} >"$RESULTS/machine.txt"
cat "$RESULTS/machine.txt"

# ---- the pack ---------------------------------------------------------------------------------
[ -f "$PACK" ] || { echo "run.sh: $PACK is missing: make gpu-pack (here: see the file's header)"; exit 2; }
P=$(mktemp -d /tmp/vitrine-pack.XXXXXX)
python3 -c '
import sys, tarfile
t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
' "$PACK" "$P" \
  || { echo "run.sh: cannot unpack $PACK"; exit 2; }
chmod +x "$P"/bin/*
# the machine's CUDA libraries: the toolkit's, else those PyTorch's wheels bring
cuda_libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 - 2>/dev/null <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(d)
PY
); do
  [ -d "$d" ] && cuda_libs="$cuda_libs:$d"
done
export LD_LIBRARY_PATH="$P/lib$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in ${cuda_libs//:/ }; do [ -f "$d/libnccl.so.2" ] && export VT_NCCL_LIB="$d/libnccl.so.2"; done
B="$P/bin"
missing=$(for f in "$B"/*; do ldd "$f" | grep 'not found'; done | sort -u)
if [ -n "$missing" ]; then
  echo "run.sh: libraries not found:"; echo "$missing"; exit 2
fi
echo "pack unpacked in $P ($(elapsed) s)"

# ---- 1. tests -----------------------------------------------------------------------------------
echo "| step | result | detail |" >>"$SUMMARY"
echo "| --- | --- | --- |" >>"$SUMMARY"
run_test() { # name fixture-dir [extra env]
  local name=$1 fx=$2 log="$RESULTS/$1${3:+-$3}.log"
  VT_FIXTURE="$fx" timeout 300 "$B/$name" --jobs 1 --verbose >"$log" 2>&1
  local rc=$? synth
  synth=$(grep -a 'Synthesis' "$log" | tail -1 | sed 's/.*Synthesis: //')
  if [ $rc -ne 0 ] || grep -aq '^\[SKIP\]' "$log" || [ -z "$synth" ]; then
    status=1
    row "$name${3:+ ($3)}" "FAIL" "rc $rc; ${synth:-no synthesis}; $(grep -a -m3 -E '^\[(FAIL|SKIP)\]' "$log" | tr '\n' ' ' | cut -c1-300)"
  else
    row "$name${3:+ ($3)}" "PASS" "$synth"
  fi
  echo "$name${3:+ ($3)}: rc $rc, $synth"
}
run_test test_cuda_ops "$P/fixture"
run_test test_backend "$P/fixture"
run_test test_decode_ops "$P/fixture"
run_test test_device_parity "$P/fixture" fixture
run_test test_rules "$P/fixture"
if [ -f "$P/demo/golden.safetensors" ]; then
  run_test test_device_parity "$P/demo" demo
  run_test test_parity "$P/demo" demo
fi
echo "tests done ($(elapsed) s)"

# ---- 2. compute-sanitizer (within its share of the budget) ----------------------------------
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for job in memcheck:test_decode_ops memcheck:test_backend memcheck:test_cuda_ops \
  racecheck:test_decode_ops racecheck:test_backend synccheck:test_decode_ops \
  synccheck:test_backend initcheck:test_decode_ops; do
  tool=${job%%:*} t=${job#*:}
  log="$RESULTS/sanitizer-$tool-$t.log"
  if [ -z "$CS" ]; then
    row "compute-sanitizer $tool $t" "SKIP" "compute-sanitizer not found"; status=1; continue
  fi
  if [ "$(left)" -lt 300 ]; then # keep time for the benchmarks
    row "compute-sanitizer $tool $t" "NOT RUN" "out of time (budget $BUDGET s)"; continue
  fi
  VT_FIXTURE="$P/fixture" timeout 90 "$CS" --tool "$tool" --target-processes all \
    --error-exitcode 99 "$B/$t" --jobs 1 >"$log" 2>&1
  rc=$?
  summary=$(grep -a -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)
  if [ $rc -eq 124 ]; then
    row "compute-sanitizer $tool $t" "TIMEOUT" "90 s"; status=1
  elif [ $rc -ne 0 ]; then # --error-exitcode: any report fails
    row "compute-sanitizer $tool $t" "FAIL" "rc $rc; $summary"; status=1
  else
    row "compute-sanitizer $tool $t" "PASS" "$summary"
  fi
  echo "sanitizer $tool $t: rc $rc $summary ($(elapsed) s)"
done

# ---- 3. kernel benchmark -----------------------------------------------------------------------
timeout 90 "$B/bench_cuda_kernels" --require-gpu --reps 20 --json "$RESULTS/bench_cuda_kernels.json" \
  >"$RESULTS/bench_cuda_kernels.txt" 2>&1
rc=$?
[ $rc -eq 0 ] && row "bench_cuda_kernels" "done" "bench_cuda_kernels.txt" \
  || { row "bench_cuda_kernels" "FAIL" "rc $rc"; status=1; }
echo "kernel benchmark done ($(elapsed) s)"

# ---- 4. engine benchmark by batch size ---------------------------------------------------------
D="$P/demo"
ENG="$RESULTS/bench_engine.jsonl"
: >"$ENG"
if [ -d "$D/bundle" ]; then
  OPENBLAS_NUM_THREADS=1 "$B/bench_engine" --bundle "$D/bundle" --catalog "$D/catalog" \
    --requests "$D/requests.jsonl" --batches 1,64 --seconds "$SECS" >>"$ENG" 2>>"$RESULTS/bench_engine.err"
  for g in 0 1; do
    "$B/bench_engine" --bundle "$D/bundle" --catalog "$D/catalog" --requests "$D/requests.jsonl" \
      --batches 1,8,64,256,512 --seconds "$SECS" --device cuda:0 --graphs $g \
      >>"$ENG" 2>>"$RESULTS/bench_engine.err" || status=1
  done
  PYTHONUNBUFFERED=1 timeout 120 python3 -m train.bench_reference --bundle "$D/bundle" \
    --catalog "$D/catalog" --requests "$D/requests.jsonl" --batches 1,8,64 --seconds "$SECS" \
    --device cuda >>"$ENG" 2>>"$RESULTS/bench_engine.err" \
    || echo "the PyTorch reference on cuda failed: see bench_engine.err"
  row "bench_engine" "done" "bench_engine.jsonl ($(wc -l <"$ENG") rows)"
fi
echo "engine benchmark done ($(elapsed) s)"

# ---- 5. vitrine serve under vitrine-bench ------------------------------------------------------
if [ -d "$D/bundle" ]; then
  "$B/vitrine" serve --bundle "$D/bundle" --catalog "$D/catalog" --device cuda:0 \
    --listen 127.0.0.1:0 --metrics-listen off --max-batch 256 --max-queue-delay-us 2000 \
    --queue-capacity 8192 --cq-threads 8 --log-format json >"$RESULTS/serve.log" 2>&1 &
  srv=$!
  port=""
  for _ in $(seq 100); do
    port=$(grep -o '"grpc_port": *[0-9]*' "$RESULTS/serve.log" | head -1 | grep -o '[0-9]*$')
    grep -q '"serving"' "$RESULTS/serve.log" && break
    sleep 0.2
  done
  if grep -q '"serving"' "$RESULTS/serve.log"; then
    timeout 150 "$B/vitrine-bench" --target "127.0.0.1:$port" --requests "$D/requests.jsonl" \
      --concurrency 1,16,128,512,1024 --warmup 1 --window 2 --max-windows 3 --connections 4 \
      --out "$RESULTS/serve" \
      >"$RESULTS/serve-bench.txt" 2>&1
    rc=$?
    [ $rc -eq 0 ] && row "vitrine serve --device cuda:0" "done" "serve-bench.txt" \
      || { row "vitrine serve --device cuda:0" "FAIL" "vitrine-bench rc $rc"; status=1; }
  else
    row "vitrine serve --device cuda:0" "FAIL" "did not start: see serve.log"
    status=1
  fi
  kill -TERM $srv 2>/dev/null
  wait $srv 2>/dev/null
fi

# ---- the table ----------------------------------------------------------------------------------
python3 - "$ENG" >>"$SUMMARY" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
if rows:
    print("\n| engine | device | graphs | batch | req/s | batch p50 ms | batch p99 ms | beam / decode |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %s | %s | %d | %.0f | %.3f | %.3f | %s |" % (
            r.get("engine"), r.get("device", "cpu"), r.get("graphs", "-"), r["batch"],
            r["requests_per_s"], r["batch_ms_p50"], r["batch_ms_p99"],
            "%.1f%%" % (100 * r["beam_of_decode"]) if "beam_of_decode" in r else "-"))
PY
echo >>"$SUMMARY"
echo "total $(elapsed) s; status $status" >>"$SUMMARY"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  tar -czf "$OUT/gpu-results.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  cp "$SUMMARY" "$OUT/summary.md"
fi
rm -rf "$P"
echo
cat "$SUMMARY"
exit $status

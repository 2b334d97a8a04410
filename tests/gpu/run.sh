#!/usr/bin/env bash
# The CUDA backend on a GPU machine, in one command: configure build-gpu with VITRINE_CUDA=ON,
# build the kernel tests (everything with VT_GPU_ALL=1), run them through ctest (the CUDA ops
# against the CPU reference, and the CPU kernels themselves), then print one line per CUDA
# test: op, status (PASS, FAIL, SKIP with its reason, or CRASH). Then build and run the kernel
# benchmark (bench/bench_cuda_kernels.c: every op at the model's shapes against the card's copy
# bandwidth and SGEMM rate), which prints its table last and writes $BUILD/bench_cuda_kernels.json.
#   tests/gpu/run.sh            kernel tests only (no Python or fixture needed), then the benchmark
#   VT_GPU_ALL=1 tests/gpu/run.sh   every ctest test (needs the Python reference with torch)
#   VT_GPU_BENCH=0 tests/gpu/run.sh   the tests without the benchmark
#   BUILD=dir tests/gpu/run.sh  another build directory
# Exits non-zero if the build, any test or the benchmark fails; a SKIP in the table on a GPU
# machine means the device was not usable (its reason is printed) and also exits non-zero, as
# does the benchmark (--require-gpu).
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build-gpu}

command -v nvidia-smi >/dev/null && nvidia-smi -L
cmake -S . -B "$BUILD" -DVITRINE_CUDA=ON -DCMAKE_BUILD_TYPE=Release || exit 1
if [ "${VT_GPU_ALL:-0}" = 1 ]; then
  cmake --build "$BUILD" -j"$(nproc)" || exit 1
  ctest --test-dir "$BUILD" --output-on-failure
else
  cmake --build "$BUILD" -j"$(nproc)" --target test_cuda_ops test_kernels || exit 1
  # -FA: do not pull in the Python fixture that every test_* declares it requires
  ctest --test-dir "$BUILD" --output-on-failure -R '^test_(cuda_ops|kernels)$' -FA '.*'
fi
ctest_rc=$?

log="$BUILD/test_cuda_ops.log"
"$BUILD/test_cuda_ops" --verbose --jobs 1 >"$log" 2>&1
echo
echo "CUDA ops ($log):"
printf '%-40s %s\n' "op" "status"
awk '
  /^\[RUN \] / { name = $3; order[++n] = name; status[name] = "CRASH" }
  /^\[(PASS|FAIL|SKIP)\] / {
    tag = substr($1, 2, 4); name = $2; sub(/:$/, "", name)
    why = $0; sub(/^[^:]*::[^:]*: */, "", why)
    status[name] = tag == "SKIP" ? "SKIP (" why ")" : tag
  }
  END {
    bad = 0
    for (i = 1; i <= n; i++) {
      printf "%-40s %s\n", order[i], status[order[i]]
      if (status[order[i]] != "PASS") bad = 1
    }
    if (n == 0) { print "(no test ran: see the log)"; bad = 1 }
    exit bad
  }' "$log"
table_rc=$?

bench_rc=0
if [ "${VT_GPU_BENCH:-1}" != 0 ]; then
  echo
  if cmake --build "$BUILD" -j"$(nproc)" --target bench_cuda_kernels; then
    "$BUILD/bench_cuda_kernels" --require-gpu --json "$BUILD/bench_cuda_kernels.json"
    bench_rc=$?
  else
    bench_rc=1
  fi
fi

[ "$ctest_rc" -eq 0 ] && [ "$table_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

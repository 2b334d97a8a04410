#!/usr/bin/env bash
# `make fuzz`: fuzzes each target for FUZZ_SECONDS (default 60) with libFuzzer, one after another,
# and prints a table (executions, coverage, corpus, findings). New inputs go to
# $FUZZ_BUILD/corpus/<target> (the committed seeds in tests/fuzz/corpus/<target> are read, not
# written); a crash, leak, timeout or out-of-memory input is written to
# tests/fuzz/regressions/<target>/, which `make test` replays: commit it with the fix.
#   usage: tests/fuzz/run.sh BUILD_DIR [target ...]
set -u
B=${1:?usage: tests/fuzz/run.sh BUILD_DIR [target ...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request wire safetensors bundle catalog rules)
SECONDS_EACH=${FUZZ_SECONDS:-60}
export VT_FIXTURE=${VT_FIXTURE:-$B/fixture}
cd "$(dirname "$0")/../.."
status=0
rows=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$B/corpus/$t" "tests/fuzz/regressions/$t"
  log="$B/fuzz-$t.log"
  before=$(ls tests/fuzz/regressions/$t | wc -l)
  echo "== fuzz_$t for ${SECONDS_EACH}s (log: $log)"
  "$B/fuzz_$t" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="tests/fuzz/regressions/$t/" \
    "$B/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  after=$(ls tests/fuzz/regressions/$t | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(ls "$B/corpus/$t" | wc -l)
  found=$((after - before))
  if [ $rc -ne 0 ] || [ "$found" -gt 0 ]; then
    status=1
    echo "!! fuzz_$t: exit $rc, $found new input(s) in tests/fuzz/regressions/$t/"
    grep -E "ERROR|SUMMARY|==[0-9]+==" "$log" | head -20
  fi
  rows+=("$(printf '%-12s %8ss %12s %9s %6s %7s %6s' "$t" "$SECONDS_EACH" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "$corpus" "$found")")
done
echo
printf '%-12s %9s %12s %9s %6s %7s %6s\n' target time executions exec/s cov corpus found
printf '%s\n' "${rows[@]}"
exit $status

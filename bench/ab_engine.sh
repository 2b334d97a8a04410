#!/usr/bin/env bash
# Before/after of the C engine: two bench_engine binaries (e.g. main's and a branch's, built the
# same way) on the same bundle and requests, alternating ROUNDS times so the machine's drift hits
# both alike; prints the medians (requests/s, requests per CPU second, the page step's ms per
# batch, batch p50). The records go to OUT (JSON lines with "variant" and "round").
#
#   bench/ab_engine.sh BEFORE_BENCH_ENGINE AFTER_BENCH_ENGINE BUNDLE CATALOG REQUESTS \
#       [ROUNDS=5] [SECONDS=3] [OUT=build/bench/ab.jsonl]
set -euo pipefail
[ $# -ge 5 ] || { sed -n 2,8p "$0"; exit 2; }
ROUNDS=${6:-5}
SECS=${7:-3}
OUT=${8:-build/bench/ab.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
for i in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    if [ $v = before ]; then B=$1; else B=$2; fi
    OPENBLAS_NUM_THREADS=1 "$B" --bundle "$3" --catalog "$4" --requests "$5" --batches 1,32 \
      --seconds "$SECS" | sed "s/^{/{\"variant\": \"$v\", \"round\": $i, /" >> "$OUT"
  done
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| batch | build | rounds | req/s | req/CPU-s | page step ms/batch | batch p50 ms |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for b in sorted({r["batch"] for r in rows}):
    for v in ("before", "after"):
        rs = [r for r in rows if r["batch"] == b and r["variant"] == v]
        med = lambda k: st.median(r[k] for r in rs)  # noqa: E731
        print("| %d | %s | %d | %.1f | %.1f | %.4f | %.3f |" % (
            b, v, len(rs), med("requests_per_s"), med("requests_per_cpu_s"), med("ms_retrieve"),
            med("batch_ms_p50")))
PY

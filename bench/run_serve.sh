#!/usr/bin/env bash
# The serving side-by-side on one machine: `vitrine serve` against the two peers
# (bench/peer_server.py, a Python grpcio server: "peer" runs the PyTorch reference cascade one
# request at a time, "peer-batching" its --batching mode, dynamic batches through the batched
# cascade train/cascade_batched.py), all on the demo bundle, all measured by the same
# build/vitrine-bench with the same request file: a closed-loop concurrency sweep, then an
# open-loop Poisson sweep at fractions of the throughput each server reached in closed loop. The
# servers run one after the other (an idle one would otherwise share the cores), each stopped
# when its sweep is done (and on any exit, by the trap).
#
# Writes build/bench/serve/{vitrine,peer,peer-batching}/results.{json,csv} and the PNG plots in
# build/bench/serve/, prints a closed-loop table and, last, for each system the best throughput
# with p99 <= SLO_MS and the ratios. bench/README.md explains every column.
#
#   bench/run_serve.sh
#   WARMUP=0.5 WINDOW=1 MAX_WINDOWS=3 CONC=1,4,16,64 RATES=0.5x,0.9x bench/run_serve.sh  # quick
#
# Environment (defaults): CONC (1,2,4,8,16,32,64,128,256), RATES (0.25x,0.5x,0.75x,0.9x,1x,1.1x;
# Rx = R times the system's best closed-loop throughput), ARRIVALS (poisson), WARMUP (2 s),
# WINDOW (2 s), MAX_WINDOWS (6), TOLERANCE (0.1), TIMEOUT_MS (10000, the per-call deadline),
# SLO_MS (100), OUT (build/bench/serve), WORKERS (1: compute slots of every system, vitrine's
# `--workers` and the peers' `--workers`; vitrine serve's own default is one per CPU),
# PEER_MAX_BATCH (16) and PEER_MAX_DELAY_MS (0.5) for the batching peer (vitrine serve's defaults),
# PEERS (peer,peer-batching: the peers to run), VITRINE_ARGS (extra `vitrine serve` options).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
DEMO=build/demo
OUT=${OUT:-build/bench/serve}
CONC=${CONC:-1,2,4,8,16,32,64,128,256}
RATES=${RATES:-0.25x,0.5x,0.75x,0.9x,1x,1.1x}
ARRIVALS=${ARRIVALS:-poisson}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-2}
MAX_WINDOWS=${MAX_WINDOWS:-6}
TOLERANCE=${TOLERANCE:-0.1}
TIMEOUT_MS=${TIMEOUT_MS:-10000}
SLO_MS=${SLO_MS:-100}
WORKERS=${WORKERS:-${PEER_WORKERS:-1}}
PEER_MAX_BATCH=${PEER_MAX_BATCH:-16}
PEER_MAX_DELAY_MS=${PEER_MAX_DELAY_MS:-0.5}
PEERS=${PEERS:-peer,peer-batching}
VITRINE_ARGS=${VITRINE_ARGS:-}

make -s build >/dev/null
[ -f "$DEMO/bundle/manifest.json" ] || make -s bundle
[ -f "$DEMO/requests.jsonl" ] || $PY -m train.requests --shop "$DEMO/shop.json" \
  --out "$DEMO/requests.jsonl" --n 512
mkdir -p "$OUT/vitrine"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# start_server LOG PATTERN CMD...: starts CMD in the background with stderr to LOG, waits for the
# line that gives its port (PATTERN's first group) and sets $port.
start_server() {
  local log=$1 pattern=$2
  shift 2
  "$@" 2>"$log" &
  server_pid=$!
  for _ in $(seq 1200); do
    port=$(sed -nE "s/.*$pattern.*/\1/p" "$log" | head -1)
    [ -n "$port" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "run_serve.sh: $* did not start; its log ($log):" >&2
  cat "$log" >&2
  exit 1
}

# bench LABEL: the sweep against 127.0.0.1:$port into $OUT/LABEL
bench() {
  echo
  echo "== $1 =="
  build/vitrine-bench --target "127.0.0.1:$port" --requests "$DEMO/requests.jsonl" \
    --label "$1" --concurrency "$CONC" --rate "$RATES" --arrivals "$ARRIVALS" \
    --warmup "$WARMUP" --window "$WINDOW" --max-windows "$MAX_WINDOWS" \
    --tolerance "$TOLERANCE" --timeout-ms "$TIMEOUT_MS" --out "$OUT/$1"
}

# vitrine: WORKERS engine workers (as many compute slots as the peers), max batch 16, one BLAS
# thread: the client shares the cores
# shellcheck disable=SC2086
start_server "$OUT/vitrine/server.log" 'serving grpc_port=([0-9]+)' \
  env OPENBLAS_NUM_THREADS=1 build/vitrine serve --bundle "$DEMO/bundle" --catalog "$DEMO/catalog" \
  --listen 127.0.0.1:0 --metrics-listen off --workers "$WORKERS" $VITRINE_ARGS
bench vitrine
stop_server

# the peers: one compute slot, one torch thread (bench/peer_server.py); per request, then with
# dynamic batching (max batch and delay as vitrine's)
results=("$OUT/vitrine/results.json")
for name in ${PEERS//,/ }; do
  case $name in
    peer) mode=() ;;
    peer-batching)
      mode=(--batching --max-batch "$PEER_MAX_BATCH" --max-delay-ms "$PEER_MAX_DELAY_MS") ;;
    *) echo "run_serve.sh: unknown peer '$name' in PEERS (peer, peer-batching)" >&2; exit 2 ;;
  esac
  mkdir -p "$OUT/$name"
  start_server "$OUT/$name/server.log" 'serving port=([0-9]+)' \
    $PY bench/peer_server.py --bundle "$DEMO/bundle" --catalog "$DEMO/catalog" --port 0 \
    --workers "$WORKERS" "${mode[@]}"
  bench "$name"
  stop_server
  results+=("$OUT/$name/results.json")
done

echo
$PY bench/plot.py "${results[@]}" --out "$OUT" --slo-ms "$SLO_MS"

$PY - "$OUT" "$SLO_MS" "$PEERS" <<'PY'
import json, os, sys
out, slo = sys.argv[1], float(sys.argv[2])
names = ["vitrine"] + [p for p in sys.argv[3].split(",") if p]
runs = {n: json.load(open(os.path.join(out, n, "results.json"))) for n in names}

def clean(s):
    """A step that answered everything it was sent, on schedule."""
    g = s.get("generator", {})
    return s["errors"] == 0 and not g.get("dropped") and not g.get("behind")

closed = {n: {s["concurrency"]: s for s in r["steps"] if s["mode"] == "closed"}
          for n, r in runs.items()}
print("\nclosed loop (ok/s, p50 / p99 ms; * unstable, ! errors):\n")
print("| in flight | " + " | ".join("%s ok/s | %s p50 / p99" % (n, n) for n in names) + " |")
print("| ---: |" + " ---: | ---: |" * len(names))
for c in sorted(set().union(*(closed[n] for n in names))):
    cells = []
    for n in names:
        s = closed[n].get(c)
        if s is None:
            cells += ["-", "-"]
            continue
        mark = ("" if s["stable"] else "*") + ("" if clean(s) else "!")
        cells += ["%.0f%s" % (s["ok_per_s"], mark),
                  "%.1f / %.1f" % (s["latency_ms"]["p50"], s["latency_ms"]["p99"])]
    print("| %d | %s |" % (c, " | ".join(cells)))

best = {}
for n, r in runs.items():
    ok = [s for s in r["steps"] if clean(s) and s["latency_ms"]["n"] and
          s["latency_ms"]["p99"] <= slo]
    best[n] = max(ok, key=lambda s: s["ok_per_s"]) if ok else None
print("\nbest throughput with p99 <= %g ms (no errors, drops or generator lag; * unstable):\n"
      % slo)
print("| system | ok/s | at step | p50 ms | p99 ms | batch compute p50 ms | mean batch |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
for n in names:
    s = best[n]
    if s is None:
        print("| %s | none | | | | | |" % n)
        continue
    print("| %s | %.0f%s | %s %s | %.2f | %.2f | %.2f | %.2f |" % (
        n, s["ok_per_s"], "" if s["stable"] else "*", s["mode"], s["step"],
        s["latency_ms"]["p50"], s["latency_ms"]["p99"], s["server"]["compute_us"]["p50"] / 1000,
        s["server"]["batch_size"]["mean"]))
for n in names[1:]:
    if best["vitrine"] and best[n]:
        print("| vitrine / %s | %.1fx | | | | | |" %
              (n, best["vitrine"]["ok_per_s"] / best[n]["ok_per_s"]))
if best.get("peer") and best.get("peer-batching"):
    print("| peer-batching / peer | %.1fx | | | | | |" %
          (best["peer-batching"]["ok_per_s"] / best["peer"]["ok_per_s"]))
PY

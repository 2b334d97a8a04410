#!/usr/bin/env bash
# The Amazon Beauty evaluation (`make beauty-eval`), two protocols:
# 1. leave-one-out: data -> shops and baselines -> teacher and distilled student (+ ablation
#    students) -> ranker tuning on the validation targets -> bundles and catalogues -> test through
#    the C engine -> build/beauty/results.json and a table;
# 2. a global time split (train.beauty --split time): shops and baselines re-tuned on the split's
#    own validation (before the cut-off) -> a student trained alone (--student-only) -> tuning ->
#    bundle -> test through the C engine -> build/beauty/time/results.json.
#
#   scripts/beauty.sh [DATA=../shared/data/amazon-beauty]
#   CUTOFF=YYYY-MM-DD scripts/beauty.sh   # the time split's cut-off (default: the day that leaves
#                                         # ~10% of all interactions on or after it: 2014-05-13)
#   PROTOCOLS=time scripts/beauty.sh      # one protocol only (default "loo time")
#
# Steps whose output exists are not redone (delete build/beauty to start over). The data folder is
# optional: where it is absent this says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/amazon-beauty}
OUT=build/beauty
PY=/usr/bin/python3
THREADS=${THREADS:-2}
PROTOCOLS=${PROTOCOLS:-loo time}
if [ ! -f "$DATA/interactions.csv.gz" ]; then
  echo "beauty-eval: $DATA has no interactions.csv.gz; skipping (the Amazon Beauty data is optional)"
  exit 0
fi
mkdir -p "$OUT"
log() { echo "[beauty $(date +%H:%M:%S)] $*" >&2; }

SHAPES='[{"sections": 4, "keywords": 16, "products": 10}, {"sections": 8, "keywords": 16, "products": 10}]'
system() {  # ROOT NAME CHECKPOINT: ranker weights and page shape on 2,000 validation users, bundle
  local d="$1/systems/$2" decay
  decay=$($PY -c "import json; print(json.load(open('$1/baselines.json'))['systems']['cooccurrence']['params']['decay'])")
  mkdir -p "$d"
  if [ ! -f "$d/ranker.json" ]; then
    log "$2 ($1): tuning the ranker"
    $PY -m train.tune --checkpoint "$3" --shop "$1/shop-valid.json" --out "$d/ranker.json" \
      --limit 2000 --shapes "$SHAPES" --rankings score --decay "$decay" --wide-grid \
      --threads "$THREADS" 2>"$d/tune.log"
  fi
  if [ ! -f "$d/bundle/manifest.json" ]; then
    log "$2 ($1): bundle and catalogue"
    $PY -m train.export --checkpoint "$3" --shop "$1/shop.json" --bundle "$d/bundle" \
      --catalog "$d/catalog" --ranker "$d/ranker.json" --name "beauty-$2" --force
  fi
}

loo() {
  # 1. shops (the data in the demo's shop format) and the baselines (co-occurrence tuned on the
  #    validation targets; its window becomes the catalogue's related-items window)
  if [ ! -f "$OUT/shop.json" ] || [ ! -f "$OUT/baselines.json" ]; then
    log "shops and baselines"
    $PY -m train.beauty --data "$DATA" --out "$OUT" --shops
  fi

  # 2. teacher and distilled student; ablation students distilled from (or without) the same teacher;
  #    each keeps its best state on the latest 5% of the training examples (retrieval head alone,
  #    measured every 250 steps, stopped after 4 without a gain)
  TRAIN="$PY -m train.train --shop $OUT/shop-valid.json --threads $THREADS --negatives 100000
    --teacher-epochs 3 --student-epochs 3 --eval-every 250 --patience 4"
  [ -f "$OUT/models/student.pt" ] || { log "teacher + student"; $TRAIN --out "$OUT/models" 2>"$OUT/train.log"; }
  [ -f "$OUT/models-nodistill/student.pt" ] || { log "student without distillation";
    $TRAIN --out "$OUT/models-nodistill" --teacher-from "$OUT/models/teacher.pt" --no-distill \
      2>"$OUT/train-nodistill.log"; }
  [ -f "$OUT/models-notime/student.pt" ] || { log "student without time encoding and bias";
    $TRAIN --out "$OUT/models-notime" --teacher-from "$OUT/models/teacher.pt" --no-time \
      2>"$OUT/train-notime.log"; }

  # 3. per system: ranker weights and page shape on 2,000 validation users (a seeded random sample), then the bundle. Pages
  #    of 16 keywords per section: what a keyword retrieves bounds everything (keyword coverage)
  system "$OUT" student "$OUT/models/student.pt"
  system "$OUT" teacher "$OUT/models/teacher.pt"
  system "$OUT" student-nodistill "$OUT/models-nodistill/student.pt"
  system "$OUT" student-notime "$OUT/models-notime/student.pt"

  # 4. SASRec: epochs by early stopping on the validation targets (patience 3, at most 30), dropout
  #    0.2, maxlen 50 (train.sasrec trains a grid of dropout x maxlen when given several values; one
  #    point here: each epoch takes ~100 s on the 2-core VM)
  [ -f "$OUT/sasrec.json" ] || { log "SASRec"; $PY -m train.sasrec --data "$DATA" --out "$OUT" --dropout 0.2 --epochs 30 \
    --threads "$THREADS" 2>"$OUT/sasrec.log"; }

  # 5. the test, through the C engine
  log "test through the C engine"
  $PY -m train.beauty_eval --shop "$OUT/shop.json" --vitrine build/vitrine \
    --system student="$OUT/systems/student" --system teacher="$OUT/systems/teacher" \
    --system student-nodistill="$OUT/systems/student-nodistill" \
    --system student-notime="$OUT/systems/student-notime" \
    --torch student --torch-limit 300 \
    --baselines "$OUT/baselines.json" --sasrec "$OUT/sasrec.json" --out "$OUT/results.json"
}

# The time split: every step before the cut-off (tuning on a second, earlier cut-off's targets);
# each shopper's first item after the cut-off is the target; cold-start targets are misses,
# reported apart. One system (a student trained alone: the leave-one-out ablations found no gain
# from distillation), the baselines re-tuned on this split's validation; SASRec is not re-run here.
time_split() {
  local T="$OUT/time"
  mkdir -p "$T"
  if [ ! -f "$T/shop.json" ] || [ ! -f "$T/baselines.json" ]; then
    log "time split: shops and baselines"
    $PY -m train.beauty --data "$DATA" --out "$T" --shops --split time ${CUTOFF:+--cutoff "$CUTOFF"}
  fi
  [ -f "$T/models/student.pt" ] || { log "time split: student (alone)"; $PY -m train.train \
    --shop "$T/shop-valid.json" --threads "$THREADS" --negatives 100000 --student-only \
    --student-epochs 3 --eval-every 250 --patience 4 --out "$T/models" 2>"$T/train.log"; }
  system "$T" student "$T/models/student.pt"
  log "time split: test through the C engine"
  $PY -m train.beauty_eval --shop "$T/shop.json" --vitrine build/vitrine \
    --system student="$T/systems/student" --baselines "$T/baselines.json" --out "$T/results.json"
}

make -s build >/dev/null
for p in $PROTOCOLS; do
  case $p in
    loo) loo ;;
    time) time_split ;;
    *) echo "beauty-eval: unknown protocol '$p' (loo, time)" >&2; exit 2 ;;
  esac
done

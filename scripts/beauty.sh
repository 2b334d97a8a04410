#!/usr/bin/env bash
# The Amazon Beauty evaluation (`make beauty-eval`): data -> shops and baselines -> teacher and
# distilled student (+ ablation students) -> ranker tuning on the validation targets -> bundles and
# catalogues -> leave-one-out test through the C engine -> build/beauty/results.json and a table.
#
#   scripts/beauty.sh [DATA=../shared/data/amazon-beauty]
#
# Steps whose output exists are not redone (delete build/beauty to start over). The data folder is
# optional: where it is absent this says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/amazon-beauty}
OUT=build/beauty
PY=/usr/bin/python3
THREADS=${THREADS:-2}
if [ ! -f "$DATA/interactions.csv.gz" ]; then
  echo "beauty-eval: $DATA has no interactions.csv.gz; skipping (the Amazon Beauty data is optional)"
  exit 0
fi
mkdir -p "$OUT"
log() { echo "[beauty $(date +%H:%M:%S)] $*" >&2; }

# 1. shops (the data in the demo's shop format) and the baselines (co-occurrence tuned on the
#    validation targets; its window becomes the catalogue's related-items window)
if [ ! -f "$OUT/shop.json" ] || [ ! -f "$OUT/baselines.json" ]; then
  log "shops and baselines"
  $PY -m train.beauty --data "$DATA" --out "$OUT" --shops
fi

# 2. teacher and distilled student; ablation students distilled from (or without) the same teacher
TRAIN="$PY -m train.train --shop $OUT/shop-valid.json --threads $THREADS --negatives 100000
  --teacher-epochs 3 --student-epochs 3"
[ -f "$OUT/models/student.pt" ] || { log "teacher + student"; $TRAIN --out "$OUT/models" 2>"$OUT/train.log"; }
[ -f "$OUT/models-nodistill/student.pt" ] || { log "student without distillation";
  $TRAIN --out "$OUT/models-nodistill" --teacher-from "$OUT/models/teacher.pt" --no-distill \
    2>"$OUT/train-nodistill.log"; }
[ -f "$OUT/models-notime/student.pt" ] || { log "student without time encoding and bias";
  $TRAIN --out "$OUT/models-notime" --teacher-from "$OUT/models/teacher.pt" --no-time \
    2>"$OUT/train-notime.log"; }

# 3. per system: ranker weights and page shape on 2,000 validation users (a seeded random sample), then the bundle. Pages
#    of 16 keywords per section: what a keyword retrieves bounds everything (keyword coverage)
SHAPES='[{"sections": 4, "keywords": 16, "products": 10}, {"sections": 8, "keywords": 16, "products": 10}]'
DECAY=$($PY -c "import json; print(json.load(open('$OUT/baselines.json'))['systems']['cooccurrence']['params']['decay'])")
system() {  # NAME CHECKPOINT
  local d="$OUT/systems/$1"
  mkdir -p "$d"
  if [ ! -f "$d/ranker.json" ]; then
    log "$1: tuning the ranker"
    $PY -m train.tune --checkpoint "$2" --shop "$OUT/shop-valid.json" --out "$d/ranker.json" \
      --limit 2000 --shapes "$SHAPES" --rankings score --decay "$DECAY" --wide-grid \
      --threads "$THREADS" 2>"$d/tune.log"
  fi
  if [ ! -f "$d/bundle/manifest.json" ]; then
    log "$1: bundle and catalogue"
    $PY -m train.export --checkpoint "$2" --shop "$OUT/shop.json" --bundle "$d/bundle" \
      --catalog "$d/catalog" --ranker "$d/ranker.json" --name "beauty-$1" --force
  fi
}
system student "$OUT/models/student.pt"
system teacher "$OUT/models/teacher.pt"
system student-nodistill "$OUT/models-nodistill/student.pt"
system student-notime "$OUT/models-notime/student.pt"

# 4. SASRec: epochs by early stopping on the validation targets (patience 3, at most 30), dropout
#    0.2, maxlen 50 (train.sasrec trains a grid of dropout x maxlen when given several values; one
#    point here: each epoch takes ~100 s on the 2-core VM)
[ -f "$OUT/sasrec.json" ] || { log "SASRec"; $PY -m train.sasrec --data "$DATA" --out "$OUT" --dropout 0.2 --epochs 30 \
  --threads "$THREADS" 2>"$OUT/sasrec.log"; }

# 5. the test, through the C engine
make -s build >/dev/null
log "test through the C engine"
$PY -m train.beauty_eval --shop "$OUT/shop.json" --vitrine build/vitrine \
  --system student="$OUT/systems/student" --system teacher="$OUT/systems/teacher" \
  --system student-nodistill="$OUT/systems/student-nodistill" \
  --system student-notime="$OUT/systems/student-notime" \
  --torch student --torch-limit 300 \
  --baselines "$OUT/baselines.json" --sasrec "$OUT/sasrec.json" --out "$OUT/results.json"

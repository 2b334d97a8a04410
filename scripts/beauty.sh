#!/usr/bin/env bash
# The Amazon Beauty evaluation (`make beauty-eval`), two protocols:
# 1. leave-one-out: data -> shops and baselines -> the student (trained alone, STUDENT_EPOCHS)
#    and its no-time ablation -> ranker tuning on the validation targets (with the head-only and
#    no-co-occurrence ablations) and the learned ranker -> bundles and catalogues -> test through
#    the C engine -> build/beauty/results.json (against the best baseline) and ablations.json;
# 2. a global time split (train.beauty --split time): shops and baselines re-tuned on the split's
#    own validation (before the cut-off) -> the same students, tuning, ablations and test ->
#    build/beauty/time/results.json and ablations.json.
#
#   scripts/beauty.sh [DATA=../shared/data/amazon-beauty]
#   CUTOFF=YYYY-MM-DD scripts/beauty.sh   # the time split's cut-off (default: the day that leaves
#                                         # ~10% of all interactions on or after it: 2014-05-13)
#   PROTOCOLS=time scripts/beauty.sh      # one protocol only (default "loo time")
#   STUDENT_EPOCHS=6 ABLATE_DISTILL=1     # each student's epochs; also a teacher and a student
#                                         # distilled from it (both protocols), served as
#                                         # student-distill
#   SASREC=0 scripts/beauty.sh            # leave-one-out without the SASRec baseline (~50 min
#                                         # here; default 1)
#   TUNE_USERS=2000                       # validation users that tune each ranker
#   BEAUTY_OUT=DIR scripts/beauty.sh      # the output folder (default build/beauty)
#
# Steps whose output exists are not redone (delete build/beauty to start over). The data folder is
# optional: where it is absent this says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/amazon-beauty}
OUT=${BEAUTY_OUT:-build/beauty}
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
# the served student: trained alone (no teacher: distillation bought nothing measurable on this
# data, bench/RESULTS.md), the retrieval head with a full softmax over every product, for
# STUDENT_EPOCHS (6: ~11.5 min on the 2-core VM; 27 minutes of 14 epochs were no better served,
# bench/RESULTS.md), keeping its best state on the latest 5% of the training examples (retrieval
# head alone, measured every 500 steps, stopped after 4 without a gain)
STUDENT_EPOCHS=${STUDENT_EPOCHS:-6}
# validation shoppers (a seeded sample) that tune the ranker's mix and page shape, and train the
# learned ranker (on the time split, 600 chose 4-section pages that lost to co-occurrence; 2,000
# chose 8 and tied it: bench/RESULTS.md)
TUNE_USERS=${TUNE_USERS:-2000}
student() {  # SHOP-VALID OUT [EXTRA ARGS]: train.train's student alone
  local shop="$1" out="$2"; shift 2
  $PY -m train.train --shop "$shop" --out "$out" --threads "$THREADS" --negatives 100000 \
    --student-only --student-epochs "$STUDENT_EPOCHS" --eval-every 500 --patience 4 --seed 1 "$@"
}

export_system() {  # ROOT NAME CHECKPOINT RANKER.JSON: the bundle and catalogue of one system
  local d="$1/systems/$2"
  mkdir -p "$d"
  if ! cmp -s "$4" "$d/ranker.json"; then  # new, or its ranker changed: export again
    rm -rf "$d/bundle" "$d/catalog"
    cp "$4" "$d/ranker.json"
  fi
  if [ ! -f "$d/bundle/manifest.json" ]; then
    log "$2 ($1): bundle and catalogue"
    $PY -m train.export --checkpoint "$3" --shop "$1/shop.json" --bundle "$d/bundle" \
      --catalog "$d/catalog" --ranker "$d/ranker.json" --name "beauty-$2" --force
  fi
}

system() {  # ROOT NAME CHECKPOINT [ablations]: the served system of a checkpoint. train.tune
  # tunes the weights' mix and the page shape on TUNE_USERS validation users; train.ranker learns
  # the linear ranker over the same page from that mix (held-out shoppers choose: it keeps the mix
  # where no epoch beats it) -> NAME serves the learned ranker. With "ablations" also, tuned in the
  # same pass: NAME-mix (the grid-tuned mix: "- learned ranker"), NAME-head-only (the retrieval
  # head alone) and NAME-no-cooc (the learned ranker without the co-occurrence features, from the
  # mix tuned without them)
  local t="$1/tuning/$2" decay
  decay=$($PY -c "import json; print(json.load(open('$1/baselines.json'))['systems']['cooccurrence']['params']['decay'])")
  mkdir -p "$t"
  if [ ! -f "$t/ranker.json" ]; then
    log "$2 ($1): tuning the ranker"
    $PY -m train.tune --checkpoint "$3" --shop "$1/shop-valid.json" --out "$t/ranker.json" \
      --limit "$TUNE_USERS" --shapes "$SHAPES" --rankings score --decay "$decay" --wide-grid \
      --threads "$THREADS" ${4:+--ablations} 2>"$t/tune.log"
  fi
  local cache=()  # the decoded candidates, shared by the two learned rankers of the same page
  [ -z "${4:-}" ] || cache=(--cache "$t/candidates.npz")
  learned "$1" "$2" "$3" ranker.json learned.json "${cache[@]}"
  if [ -n "${4:-}" ]; then
    learned "$1" "$2" "$3" ranker-no-cooc.json learned-no-cooc.json "${cache[@]}" \
      --drop cooc,cooc_sat
    rm -f "$t/candidates.npz"
  fi
  export_system "$1" "$2" "$3" "$t/learned.json"
  [ -n "${4:-}" ] || return 0
  export_system "$1" "$2-mix" "$3" "$t/ranker.json"
  export_system "$1" "$2-head-only" "$3" "$t/ranker-head-only.json"
  export_system "$1" "$2-no-cooc" "$3" "$t/learned-no-cooc.json"
}

learned() {  # ROOT NAME CHECKPOINT TUNED OUT [train.ranker args]: a learned linear ranker from the
  # tuned mix (with --cache, train.ranker reuses candidates only when decoded for the same page)
  local root="$1" name="$2" ckpt="$3" tuned="$4" out="$5" t="$1/tuning/$2"
  shift 5
  [ ! -f "$t/$out" ] || return 0
  log "$name ($root): the learned ranker ($out)"
  $PY -m train.ranker --checkpoint "$ckpt" --shop "$root/shop-valid.json" --tuned "$t/$tuned" \
    --out "$t/$out" --limit "$TUNE_USERS" --hidden 0 --epochs 12 --batched \
    --threads "$THREADS" "$@" 2>"$t/${out%.json}.log"
}

distill() {  # ROOT: with ABLATE_DISTILL=1, a teacher (3 epochs) and a student distilled from it
  # for STUDENT_EPOCHS, the served student's other settings
  if [ -n "${ABLATE_DISTILL:-}" ] && [ ! -f "$1/models-distill/student.pt" ]; then
    log "teacher + distilled student ($1)"
    $PY -m train.train --shop "$1/shop-valid.json" --out "$1/models-distill" --threads "$THREADS" \
      --negatives 100000 --teacher-epochs 3 --student-epochs "$STUDENT_EPOCHS" --eval-every 500 \
      --patience 4 --seed 1 2>"$1/train-distill.log"
  fi
}

ablation_args() {  # ROOT NAME: the --system arguments of a system and its ablations
  local n
  for n in "$2" "$2-mix" "$2-head-only" "$2-no-cooc" "$2-notime"; do
    [ -f "$1/systems/$n/bundle/manifest.json" ] && printf ' --system %s=%s' "$n" "$1/systems/$n"
  done
  return 0
}

loo() {
  # 1. shops (the data in the demo's shop format) and the baselines (co-occurrence tuned on the
  #    validation targets; its window becomes the catalogue's related-items window)
  if [ ! -f "$OUT/shop.json" ] || [ ! -f "$OUT/baselines.json" ]; then
    log "shops and baselines"
    $PY -m train.beauty --data "$DATA" --out "$OUT" --shops
  fi

  # 2. the student and its ablation without time features (--no-time: the time encoding's
  #    projection and the time-bucket biases held at zero); ABLATE_DISTILL=1 also trains a teacher
  #    (3 epochs) and a student distilled from it for the same epochs
  [ -f "$OUT/models/student.pt" ] || { log "student"; student "$OUT/shop-valid.json" "$OUT/models" 2>"$OUT/train.log"; }
  [ -f "$OUT/models-notime/student.pt" ] || { log "student without time encoding and bias";
    student "$OUT/shop-valid.json" "$OUT/models-notime" --no-time 2>"$OUT/train-notime.log"; }
  distill "$OUT"

  # 3. per system: ranker weights and page shape on TUNE_USERS validation users (a seeded random
  #    sample), then the bundle. Pages of 16 keywords per section: what a keyword retrieves bounds
  #    everything (keyword coverage)
  system "$OUT" student "$OUT/models/student.pt" ablations
  system "$OUT" student-notime "$OUT/models-notime/student.pt"
  local distill=()
  if [ -f "$OUT/models-distill/student.pt" ]; then
    system "$OUT" student-distill "$OUT/models-distill/student.pt"
    distill=(--system student-distill="$OUT/systems/student-distill")
  fi

  # 4. SASRec: epochs by early stopping on the validation targets (patience 3, at most 30), dropout
  #    0.2, maxlen 50 (train.sasrec trains a grid of dropout x maxlen when given several values; one
  #    point here: each epoch takes ~100 s on the 2-core VM)
  local sasrec=()
  if [ "${SASREC:-1}" != 0 ]; then
    [ -f "$OUT/sasrec.json" ] || { log "SASRec"; $PY -m train.sasrec --data "$DATA" --out "$OUT" \
      --dropout 0.2 --epochs 30 --threads "$THREADS" 2>"$OUT/sasrec.log"; }
    sasrec=(--sasrec "$OUT/sasrec.json")
  fi

  # 5. the test, through the C engine: each system against the best baseline
  #    (results.json), and the ablations against the served student (ablations.json)
  log "test through the C engine"
  $PY -m train.beauty_eval --shop "$OUT/shop.json" --vitrine build/vitrine \
    $(ablation_args "$OUT" student) "${distill[@]}" --torch student --torch-limit 300 \
    --baselines "$OUT/baselines.json" "${sasrec[@]}" --out "$OUT/results.json"
  $PY -m train.ranker evaluate --shop "$OUT/shop.json" --vitrine build/vitrine \
    $(ablation_args "$OUT" student) "${distill[@]}" --baselines "$OUT/baselines.json" \
    --beauty-data "$DATA" --out "$OUT/ablations.json"
}

# The time split: every step before the cut-off (tuning on a second, earlier cut-off's targets);
# each shopper's first item after the cut-off is the target; cold-start targets are misses,
# reported apart. The same student recipe and ablations (with ABLATE_DISTILL=1 the distilled
# student, not its teacher), the baselines re-tuned on this split's validation; SASRec is not
# re-run here.
time_split() {
  local T="$OUT/time"
  mkdir -p "$T"
  if [ ! -f "$T/shop.json" ] || [ ! -f "$T/baselines.json" ]; then
    log "time split: shops and baselines"
    $PY -m train.beauty --data "$DATA" --out "$T" --shops --split time ${CUTOFF:+--cutoff "$CUTOFF"}
  fi
  [ -f "$T/models/student.pt" ] || { log "time split: student"; student "$T/shop-valid.json" "$T/models" 2>"$T/train.log"; }
  [ -f "$T/models-notime/student.pt" ] || { log "time split: student without time features";
    student "$T/shop-valid.json" "$T/models-notime" --no-time 2>"$T/train-notime.log"; }
  system "$T" student "$T/models/student.pt" ablations
  system "$T" student-notime "$T/models-notime/student.pt"
  distill "$T"
  local distill=()
  if [ -f "$T/models-distill/student.pt" ]; then
    system "$T" student-distill "$T/models-distill/student.pt"
    distill=(--system student-distill="$T/systems/student-distill")
  fi
  log "time split: test through the C engine"
  $PY -m train.beauty_eval --shop "$T/shop.json" --vitrine build/vitrine \
    $(ablation_args "$T" student) "${distill[@]}" --baselines "$T/baselines.json" \
    --out "$T/results.json"
  $PY -m train.ranker evaluate --shop "$T/shop.json" --vitrine build/vitrine \
    $(ablation_args "$T" student) "${distill[@]}" --baselines "$T/baselines.json" \
    --out "$T/ablations.json"
}

make -s build >/dev/null
for p in $PROTOCOLS; do
  case $p in
    loo) loo ;;
    time) time_split ;;
    *) echo "beauty-eval: unknown protocol '$p' (loo, time)" >&2; exit 2 ;;
  esac
done

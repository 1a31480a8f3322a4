#!/usr/bin/env bash
# The whole pipeline in one command: data -> folds -> train every fold of every member ->
# out-of-fold evaluation and threshold -> ensemble prediction on test/ -> submission.csv -> report.
#
# Environment (all optional, see README.md):
#   DATA_DIR        competition-layout data (train/, test/); default: generated demo data
#   OUT_DIR         where runs, predictions, report and submission.csv go (default: outputs)
#   CONFIG          preset name or YAML path; a comma-separated list trains several ensemble
#                   members (default: cpu-demo-unet,cpu-demo-cascade without a GPU, or
#                   cpu-demo,cpu-demo-unet with SELF_TRAIN_ROUNDS, which a cascade cannot do;
#                   sam-vit-b,unet-resnet34 with one). Members that need a prior (a first-stage
#                   prediction, e.g. cpu-demo-cascade: model.prompt=mask) make two stages: the
#                   others first (trained, evaluated: OUT_DIR/stage1/evaluation/oof, predicted:
#                   OUT_DIR/stage1/predictions), then they, trained on those maps (below)
#   SAM_CHECKPOINT  Meta SAM checkpoint to fine-tune SAM members from
#   FOLDS           folds CSV (default: folds.csv)
#   NGPUS           GPUs to spread folds over, one fold per GPU at a time (default: all visible)
#   CPU_JOBS        trainings at once without a GPU (default: the number of cores)
#   DEMO_SCALE      size of the generated demo data relative to the real fragments (1/16)
#   TRAIN_ARGS      extra arguments for every `kit train` call, e.g. "--max-steps 20"
#   SUBMIT_ARGS     extra arguments for `kit submit` (the threshold policy), e.g. "--percentile 5"
#                   or "--threshold 0.4 --min-area 50"; default: the out-of-fold threshold
#   SELF_TRAIN_ROUNDS  rounds of pseudo-label self-training after the first (default 0; below)
#   SELF_TRAIN_DATA    the unlabelled fragments whose maps become pseudo-labels (default: test/)
#   PSEUDO_ARGS        extra arguments for `kit pseudo-label`, e.g. "--ink 0.9 --background 0.1"
#   TIME_BUDGET     minutes for the whole pipeline: every `kit train` gets `--budget B` and sets
#                   its own step count to fit B (it times its steps; epochs stay the validations).
#                   B = 85 % of TIME_BUDGET / waves, waves = ceil(runs / trainings at once) (with
#                   two stages, the sum of each stage's: stage 2 starts when stage 1 is done); the
#                   other 15 % is for the data, evaluation, prediction, submission and report.
#                   B depends on TIME_BUDGET, the runs and the slots only, never on the clock, so
#                   a rerun keeps its finished runs. Default 9 without a GPU (unless TRAIN_ARGS
#                   holds --max-steps or --budget), none with one; 0 = off.
# A rerun skips finished steps (trained folds, predicted fragments) and resumes interrupted ones.
set -Eeuo pipefail
cd "$(dirname "$0")"

START=$(date +%s)
PY=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-outputs}
FOLDS=${FOLDS:-folds.csv}
SAM_CHECKPOINT=${SAM_CHECKPOINT:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
SUBMIT_ARGS=${SUBMIT_ARGS:-}
SELF_TRAIN_ROUNDS=${SELF_TRAIN_ROUNDS:-0}
SELF_TRAIN_DATA=${SELF_TRAIN_DATA:-}
PSEUDO_ARGS=${PSEUDO_ARGS:-}
DEMO_SCALE=${DEMO_SCALE:-0.0625}
STEP="setup"
trap 'echo "run_all.sh: step \"$STEP\" failed (exit $?); fix it and rerun: finished steps are kept." >&2' ERR

step() {
  STEP=$1
  printf '\n==> %s\n' "$STEP"
}

# Every setting is checked before any work, with the variable's name and the value it got.
bad() { echo "run_all.sh: $1" >&2; exit 2; }
number='^[0-9]+([.][0-9]*)?$'
[ -z "${NGPUS:-}" ] || [[ $NGPUS =~ ^[0-9]+$ ]] || bad "NGPUS must be a whole number of GPUs (0 = CPU), got '$NGPUS'"
[ -z "${CPU_JOBS:-}" ] || [[ $CPU_JOBS =~ ^[1-9][0-9]*$ ]] || bad "CPU_JOBS must be a whole number of trainings at once (1 or more), got '$CPU_JOBS'"
[[ $DEMO_SCALE =~ $number ]] && LC_ALL=C awk -v s="$DEMO_SCALE" 'BEGIN { exit !(s > 0) }' || bad "DEMO_SCALE must be a positive number (the real fragments' size = 1), got '$DEMO_SCALE'"
[ -z "${TIME_BUDGET:-}" ] || [[ $TIME_BUDGET =~ $number ]] || bad "TIME_BUDGET must be minutes (a number), got '$TIME_BUDGET'"
[[ $SELF_TRAIN_ROUNDS =~ ^[0-9]+$ ]] || bad "SELF_TRAIN_ROUNDS must be a whole number of rounds (0 = no self-training), got '$SELF_TRAIN_ROUNDS'"
[ -z "$SELF_TRAIN_DATA" ] || [ -d "$SELF_TRAIN_DATA" ] || bad "SELF_TRAIN_DATA must be a folder of unlabelled fragments, got '$SELF_TRAIN_DATA'"
if [ -z "${NGPUS:-}" ]; then
  NGPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
if [ -z "${CONFIG:-}" ]; then
  if [ "$NGPUS" -gt 0 ]; then CONFIG="sam-vit-b,unet-resnet34"
  elif [ "$SELF_TRAIN_ROUNDS" -gt 0 ]; then CONFIG="cpu-demo,cpu-demo-unet"  # no prior for pseudo-labels
  else CONFIG="cpu-demo-unet,cpu-demo-cascade"; fi
fi
IFS=',' read -r -a MEMBERS <<<"$CONFIG"
for config in "${MEMBERS[@]}"; do
  "$PY" -m kit config --config "$config" >/dev/null || bad "CONFIG member '$config' is not a preset or a YAML file that loads (the error above says why)"
done
# Members that need a prior (kit.models.needs_prior) are the second stage of a cascade: they
# train on the first stage's out-of-fold maps and predict from its test maps.
read -r -a PRIOR_FLAGS <<<"$("$PY" -c 'import sys
from kit.config import load_config
from kit.models import needs_prior
print(" ".join("1" if needs_prior(load_config(c)) else "0" for c in sys.argv[1:]))' "${MEMBERS[@]}")"
STAGE1=() STAGE2=()
for i in "${!MEMBERS[@]}"; do
  if [ "${PRIOR_FLAGS[$i]}" = 1 ]; then STAGE2+=("${MEMBERS[$i]}"); else STAGE1+=("${MEMBERS[$i]}"); fi
done
if [ "${#STAGE2[@]}" -gt 0 ]; then
  [ "${#STAGE1[@]}" -gt 0 ] || bad "CONFIG members ${STAGE2[*]} need a prior from a first stage: add a member that needs none (e.g. CONFIG=cpu-demo-unet,${STAGE2[0]})"
  [ "$SELF_TRAIN_ROUNDS" -eq 0 ] || bad "SELF_TRAIN_ROUNDS with a member that needs a prior (${STAGE2[*]}) is not supported: pseudo-labelled fragments (fold -1) have no out-of-fold prior"
fi
mkdir -p "$OUT_DIR"

if [ -z "${DATA_DIR:-}" ]; then
  DATA_DIR="$OUT_DIR/demo_data"
  step "demo data ($DATA_DIR)"
  if [ -f "$DATA_DIR/sample_submission.csv" ]; then
    echo "exists, kept"
  else
    rm -rf "$DATA_DIR.partial"
    "$PY" -m kit demo-data "$DATA_DIR.partial" --scale "$DEMO_SCALE"
    mv "$DATA_DIR.partial" "$DATA_DIR"
  fi
fi
# The fragment search every command uses (kit/data/layout.py); it names what is missing.
"$PY" -m kit fragments --data "$DATA_DIR" --split train >/dev/null || { echo "run_all.sh: set DATA_DIR to a dataset directory (train/, test/) in the competition layout" >&2; exit 2; }
[ -f "$FOLDS" ] || { echo "run_all.sh: folds file $FOLDS does not exist; write one with: python -m kit folds --data $DATA_DIR --out $FOLDS" >&2; exit 2; }

FOLD_IDS=$("$PY" - "$FOLDS" <<'PY'
import sys
from kit.data.folds import folds_of, load_folds
from kit.errors import KitError
try:
    print(" ".join(map(str, folds_of(load_folds(sys.argv[1])))))
except KitError as exc:
    sys.exit(f"error: {exc}")
PY
) || exit 2

# Where the ink is: the window every "auto" preset trains on (each fold probes its own
# training rows again, so held-out labels never choose its window; this is the overview).
# kit probe keeps its probe.json when the fragments' files are the ones it read.
step "probe ($OUT_DIR/probe)"
"$PY" -m kit probe --data "$DATA_DIR" --out "$OUT_DIR/probe"

# Several trainings at once: one per GPU, or CPU_JOBS on a CPU (the demo presets use one torch
# thread each, so two cores train two folds side by side). Jobs log to <run>.log.
if [ "$NGPUS" -gt 0 ]; then SLOTS=$NGPUS; else SLOTS=${CPU_JOBS:-$(nproc)}; fi
N_FOLDS=$(wc -w <<<"$FOLD_IDS")
N_RUNS=$((${#MEMBERS[@]} * N_FOLDS))

# TIME_BUDGET -> the same --budget for every run (from the budget, runs and slots only: stable).
TIME_BUDGET=${TIME_BUDGET:-}
BUDGET_ARGS=()
explicit=' --(max-steps|budget)[ =]'
own_budget=' --budget[ =]'
if [ -z "$TIME_BUDGET" ] && [ "$NGPUS" -eq 0 ] && ! [[ " $TRAIN_ARGS " =~ $explicit ]]; then
  TIME_BUDGET=9
fi
if [ -n "$TIME_BUDGET" ]; then
  if [[ " $TRAIN_ARGS " =~ $own_budget ]]; then
    echo "time budget: TRAIN_ARGS sets --budget itself; TIME_BUDGET=$TIME_BUDGET not applied"
  elif LC_ALL=C awk -v t="$TIME_BUDGET" 'BEGIN { exit !(t > 0) }'; then
    # each stage's trainings run in waves of SLOTS, and stage 2 waits for stage 1 to finish
    WAVES=$((((${#STAGE1[@]} * N_FOLDS) + SLOTS - 1) / SLOTS + ((${#STAGE2[@]} * N_FOLDS) + SLOTS - 1) / SLOTS))
    RUN_BUDGET=$(LC_ALL=C awk -v t="$TIME_BUDGET" -v w="$WAVES" 'BEGIN { printf "%.2f", 0.85 * t / w }')
    BUDGET_ARGS=(--budget "$RUN_BUDGET")
    echo "time budget $TIME_BUDGET min: --budget $RUN_BUDGET min per run ($N_RUNS runs, $SLOTS at a time = $WAVES waves; 15 % kept for the rest; $(($(date +%s) - START)) s elapsed so far)"
  fi
fi
# One `kit train` per (member, fold). The run decides from its provenance (run.json: requested
# config, fold, folds, data files, starting weights, kit version; kit/train/rerun.py): the same
# inputs finish at once (before torch loads) or resume from last.pt; any other input (config,
# TRAIN_ARGS, an edited preset, new data or weights) trains it again from scratch (--overwrite),
# so a rerun gives what a fresh run gives.
train_command() {
  local data=$1 folds=$2 config=$3 fold=$4 run=$5 prior=${6:-}
  TRAIN=(--data "$data" --fold "$fold" --config "$config" --folds "$folds" --out "$run"
    --resume --overwrite)
  [ -n "$prior" ] && TRAIN+=(--prior "$prior")
  [ -n "$SAM_CHECKPOINT" ] && TRAIN+=(--sam-checkpoint "$SAM_CHECKPOINT")
  # shellcheck disable=SC2206
  TRAIN+=($TRAIN_ARGS "${BUDGET_ARGS[@]}")
}

train_one() {
  local device=$1
  shift
  if [ "$device" = cpu ]; then
    "$PY" -m kit train "$@"
  else
    CUDA_VISIBLE_DEVICES=$device "$PY" -m kit train "$@"
  fi
}

run_dirs() {
  local out=$1
  shift
  local config fold
  for config in "$@"; do
    for fold in $FOLD_IDS; do echo "$out/runs/$(basename "${config%.y*ml}")/fold$fold"; done
  done
}

# Every fold of the given members (after the output root, the data, the folds CSV and the prior
# directory, "" for none), SLOTS trainings at once.
train_members() {
  local data=$1 folds=$2 out=$3 prior=$4 config name fold run device
  shift 4
  PIDS=() NAMES=() LOGS=()
  reap_oldest() {
    local pid=${PIDS[0]} name=${NAMES[0]} log=${LOGS[0]}
    PIDS=("${PIDS[@]:1}") NAMES=("${NAMES[@]:1}") LOGS=("${LOGS[@]:1}")
    if ! wait "$pid"; then
      tail -n 5 "$log" >&2
      echo "run_all.sh: step \"train $name\" failed; full log: $log" >&2
      [ "${#PIDS[@]}" -eq 0 ] || kill "${PIDS[@]}" 2>/dev/null || true
      exit 1
    fi
    echo "  $(tail -n 1 "$log")"
  }
  slot=0
  for config in "$@"; do
    name=$(basename "${config%.y*ml}")
    mkdir -p "$out/runs/$name"
    for fold in $FOLD_IDS; do
      run="$out/runs/$name/fold$fold"
      train_command "$data" "$folds" "$config" "$fold" "$run" "$prior"
      device=cpu
      [ "$NGPUS" -gt 0 ] && device=$((slot % NGPUS))
      if [ "$SLOTS" -le 1 ]; then
        STEP="train $name fold $fold"
        train_one "$device" "${TRAIN[@]}"
        continue
      fi
      while [ "${#PIDS[@]}" -ge "$SLOTS" ]; do reap_oldest; done
      echo "$run: kit train (log: $run.log)"
      # appended: a rerun that finds the run done adds one line, the training log stays
      { echo "== $(date '+%F %T') kit train ${TRAIN[*]}"; train_one "$device" "${TRAIN[@]}"; } >>"$run.log" 2>&1 &
      PIDS+=($!) NAMES+=("$name fold $fold") LOGS+=("$run.log")
      slot=$((slot + 1))
    done
  done
  while [ "${#PIDS[@]}" -gt 0 ]; do reap_oldest; done
}

# One round: every (member, fold) of DATA under FOLDS trained into OUT/runs, their out-of-fold
# evaluation, the ensemble on the test fragments, OUT/submission.csv and OUT/report.
# With members that need a prior, two stages: the others first, evaluated (their out-of-fold
# ensemble maps, OUT/stage1/evaluation/oof, are the priors of the training fragments) and
# predicted on the test fragments (OUT/stage1/predictions, their priors); then the members that
# need a prior, trained with --prior on the out-of-fold maps; then all of them together as below.
ensemble_round() {
  local data=$1 folds=$2 out=$3 label=$4 submission=$3/submission.csv
  mapfile -t RUNS < <(run_dirs "$out" "${MEMBERS[@]}")
  PRIOR=()
  if [ "${#STAGE2[@]}" -gt 0 ]; then
    local first="$out/stage1"
    mapfile -t STAGE1_RUNS < <(run_dirs "$out" "${STAGE1[@]}")
    step "${label}stage 1: train ${#STAGE1_RUNS[@]} runs of ${STAGE1[*]}, $SLOTS at a time"
    train_members "$data" "$folds" "$out" "" "${STAGE1[@]}"
    TUNE1=() WEIGHTS1=()
    if [ "${#STAGE1[@]}" -gt 1 ]; then
      TUNE1=(--tune-weights) WEIGHTS1=(--evaluation "$first/evaluation/evaluation.json")
    fi
    step "${label}stage 1: out-of-fold evaluation (the priors of the training fragments)"
    "$PY" -m kit evaluate --runs "${STAGE1_RUNS[@]}" --data "$data" --out "$first/evaluation" \
      --no-pictures "${TUNE1[@]}"
    step "${label}stage 1: ensemble prediction on $DATA_DIR/test (the priors of the test fragments)"
    "$PY" -m kit predict --data "$DATA_DIR/test" --runs "${STAGE1_RUNS[@]}" \
      --out "$first/predictions" "${WEIGHTS1[@]}"
    step "${label}stage 2: train $((${#RUNS[@]} - ${#STAGE1_RUNS[@]})) runs of ${STAGE2[*]} on the stage-1 priors, $SLOTS at a time"
    train_members "$data" "$folds" "$out" "$first/evaluation/oof" "${STAGE2[@]}"
    PRIOR=(--prior "$first/predictions")
  else
    step "${label}train ${#RUNS[@]} runs, $SLOTS at a time ($([ "$NGPUS" -gt 0 ] && echo "$NGPUS GPU(s)" || echo CPU))"
    train_members "$data" "$folds" "$out" "" "${MEMBERS[@]}"
  fi

  # With several members their ensemble weights are chosen on the out-of-fold maps, and predict
  # uses the same weights (kit/weights.py; evaluate also prints a nested estimate of their worth).
  TUNE=() WEIGHTS=()
  if [ "${#MEMBERS[@]}" -gt 1 ]; then
    TUNE=(--tune-weights) WEIGHTS=(--evaluation "$out/evaluation/evaluation.json")
  fi

  step "${label}out-of-fold evaluation"
  "$PY" -m kit evaluate --runs "${RUNS[@]}" --data "$data" --out "$out/evaluation" "${TUNE[@]}"

  step "${label}ensemble prediction on $DATA_DIR/test"
  "$PY" -m kit predict --data "$DATA_DIR/test" --runs "${RUNS[@]}" --out "$out/predictions" \
    "${WEIGHTS[@]}" "${PRIOR[@]}"

  step "${label}submission"
  # shellcheck disable=SC2086
  "$PY" -m kit submit --pred "$out/predictions" --data "$DATA_DIR/test" \
    --evaluation "$out/evaluation/evaluation.json" --out "$submission" $SUBMIT_ARGS
  "$PY" -m kit validate "$submission" --data "$DATA_DIR/test"

  step "${label}report"
  "$PY" -m kit report --out "$out" --runs "${RUNS[@]}" --seconds "$(($(date +%s) - START))"
}

# Self-training (SELF_TRAIN_ROUNDS=N): after each round, the ensemble's maps of the unlabelled
# fragments (SELF_TRAIN_DATA, default the test fragments) become pseudo-labels (`kit
# pseudo-label`: confident ink and papyrus, the band between ignored; PSEUDO_ARGS, e.g.
# "--ink 0.9 --background 0.1") in a dataset that links DATA_DIR's labelled fragments, and the
# next round trains on it under OUT_DIR/self_train/roundR. The last round's submission is the one
# in OUT_DIR (round 0's is kept in OUT_DIR/self_train/round0; OUT_DIR/report is round 0's).
# Pseudo-labels are rewritten only when they change, so a rerun keeps every round.
if [ "$SELF_TRAIN_ROUNDS" -eq 0 ]; then
  ensemble_round "$DATA_DIR" "$FOLDS" "$OUT_DIR" ""
else
  ensemble_round "$DATA_DIR" "$FOLDS" "$OUT_DIR" "round 0: "
  mkdir -p "$OUT_DIR/self_train/round0"
  cp "$OUT_DIR/submission.csv" "$OUT_DIR/self_train/round0/submission.csv"
  previous=$OUT_DIR
  for round in $(seq 1 "$SELF_TRAIN_ROUNDS"); do
    here="$OUT_DIR/self_train/round$round"
    pred="$previous/predictions"
    PSEUDO=(--pred "$pred" --data "$DATA_DIR" --folds "$FOLDS" --out "$here/data")
    if [ -n "$SELF_TRAIN_DATA" ]; then
      step "round $round: ensemble of round $((round - 1)) on $SELF_TRAIN_DATA"
      pred="$previous/unlabelled_predictions"
      "$PY" -m kit predict --data "$SELF_TRAIN_DATA" --runs "${RUNS[@]}" --out "$pred" "${WEIGHTS[@]}"
      PSEUDO=(--pred "$pred" --data "$DATA_DIR" --unlabelled "$SELF_TRAIN_DATA" --folds "$FOLDS" --out "$here/data")
    fi
    step "round $round: pseudo-labels from $pred"
    # shellcheck disable=SC2086
    "$PY" -m kit pseudo-label "${PSEUDO[@]}" $PSEUDO_ARGS
    ensemble_round "$here/data" "$here/data/folds.csv" "$here" "round $round: "
    previous=$here
  done
  cp "$here/submission.csv" "$OUT_DIR/.submission.csv.partial"
  mv "$OUT_DIR/.submission.csv.partial" "$OUT_DIR/submission.csv"
  echo "submission of round $SELF_TRAIN_ROUNDS: $OUT_DIR/submission.csv (round 0's: $OUT_DIR/self_train/round0/submission.csv)"
fi

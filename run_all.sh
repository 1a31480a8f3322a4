#!/usr/bin/env bash
# The whole pipeline in one command: data -> folds -> train every fold of every member ->
# out-of-fold evaluation and threshold -> ensemble prediction on test/ -> submission.csv -> report.
#
# Environment (all optional, see README.md):
#   DATA_DIR        competition-layout data (train/, test/); default: generated demo data
#   OUT_DIR         where runs, predictions, report and submission.csv go (default: outputs)
#   CONFIG          preset name or YAML path; a comma-separated list trains several ensemble
#                   members (default: cpu-demo,cpu-demo-unet without a GPU,
#                   sam-vit-b,unet-resnet34 with one)
#   SAM_CHECKPOINT  Meta SAM checkpoint to fine-tune SAM members from
#   FOLDS           folds CSV (default: folds.csv)
#   NGPUS           GPUs to spread folds over, one fold per GPU at a time (default: all visible)
#   DEMO_SCALE      size of the generated demo data relative to the real fragments (1/16)
#   TRAIN_ARGS      extra arguments for every `kit train` call, e.g. "--max-steps 20"
# A rerun skips finished steps (trained folds, predicted fragments) and resumes interrupted ones.
set -Eeuo pipefail
cd "$(dirname "$0")"

START=$(date +%s)
PY=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-outputs}
FOLDS=${FOLDS:-folds.csv}
SAM_CHECKPOINT=${SAM_CHECKPOINT:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
DEMO_SCALE=${DEMO_SCALE:-0.0625}
STEP="setup"
trap 'echo "run_all.sh: step \"$STEP\" failed (exit $?); fix it and rerun: finished steps are kept." >&2' ERR

step() {
  STEP=$1
  printf '\n==> %s\n' "$STEP"
}

if [ -z "${NGPUS:-}" ]; then
  NGPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
if [ -z "${CONFIG:-}" ]; then
  if [ "$NGPUS" -gt 0 ]; then CONFIG="sam-vit-b,unet-resnet34"; else CONFIG="cpu-demo,cpu-demo-unet"; fi
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
[ -d "$DATA_DIR/train" ] || { echo "run_all.sh: $DATA_DIR/train does not exist; set DATA_DIR to a directory in the competition layout" >&2; exit 2; }
[ -f "$FOLDS" ] || { echo "run_all.sh: folds file $FOLDS does not exist; write one with: python -m kit folds --data $DATA_DIR --out $FOLDS" >&2; exit 2; }

FOLD_IDS=$("$PY" -c "import sys; from kit.data.folds import load_folds; print(' '.join(map(str, sorted({r.fold for r in load_folds(sys.argv[1])}))))" "$FOLDS")
IFS=',' read -r -a MEMBERS <<<"$CONFIG"

# One `kit train` per (member, fold); a finished run returns at once, an interrupted one resumes.
train_one() {
  local config=$1 fold=$2 gpu=$3
  local name run
  name=$(basename "${config%.y*ml}")
  run="$OUT_DIR/runs/$name/fold$fold"
  local args=(--data "$DATA_DIR" --fold "$fold" --config "$config" --folds "$FOLDS" --out "$run")
  [ -n "$SAM_CHECKPOINT" ] && args+=(--sam-checkpoint "$SAM_CHECKPOINT")
  # A finished run leaves the exact command in $run/finished: the same command skips at once
  # (no Python start-up); any change (config, TRAIN_ARGS, checkpoint) goes through `kit train`,
  # which resumes or refuses as the run directory says.
  local command="train ${args[*]} $TRAIN_ARGS"
  if [ -f "$run/finished" ] && [ "$(cat "$run/finished")" = "$command" ]; then
    echo "$run: finished earlier, kept"
    return 0
  fi
  [ -f "$run/checkpoints/last.pt" ] && args+=(--resume)
  # shellcheck disable=SC2086
  if [ "$gpu" = cpu ]; then
    "$PY" -m kit train "${args[@]}" $TRAIN_ARGS
  else
    CUDA_VISIBLE_DEVICES=$gpu "$PY" -m kit train "${args[@]}" $TRAIN_ARGS >"$run.log" 2>&1
  fi
  echo "$command" >"$run/finished"
}

RUNS=()
for config in "${MEMBERS[@]}"; do
  name=$(basename "${config%.y*ml}")
  for fold in $FOLD_IDS; do RUNS+=("$OUT_DIR/runs/$name/fold$fold"); done
done

if [ "$NGPUS" -gt 0 ]; then
  step "train ${#RUNS[@]} runs over $NGPUS GPU(s)"
  mkdir -p "$OUT_DIR/runs"
  jobs_pids=() jobs_names=() slot=0
  for config in "${MEMBERS[@]}"; do
    for fold in $FOLD_IDS; do
      if [ "${#jobs_pids[@]}" -ge "$NGPUS" ]; then
        wait "${jobs_pids[0]}" || { echo "run_all.sh: training ${jobs_names[0]} failed, see its .log" >&2; exit 1; }
        jobs_pids=("${jobs_pids[@]:1}") jobs_names=("${jobs_names[@]:1}")
      fi
      mkdir -p "$OUT_DIR/runs/$(basename "${config%.y*ml}")"
      train_one "$config" "$fold" "$((slot % NGPUS))" &
      jobs_pids+=($!) jobs_names+=("$(basename "${config%.y*ml}") fold $fold")
      slot=$((slot + 1))
    done
  done
  for i in "${!jobs_pids[@]}"; do
    wait "${jobs_pids[$i]}" || { echo "run_all.sh: training ${jobs_names[$i]} failed, see its .log" >&2; exit 1; }
  done
else
  for config in "${MEMBERS[@]}"; do
    for fold in $FOLD_IDS; do
      step "train $config fold $fold (CPU)"
      train_one "$config" "$fold" cpu
    done
  done
fi

step "out-of-fold evaluation"
"$PY" -m kit evaluate --runs "${RUNS[@]}" --data "$DATA_DIR" --out "$OUT_DIR/evaluation"

step "ensemble prediction on $DATA_DIR/test"
"$PY" -m kit predict --data "$DATA_DIR/test" --runs "${RUNS[@]}" --out "$OUT_DIR/predictions"

step "submission"
"$PY" -m kit submit --pred "$OUT_DIR/predictions" --data "$DATA_DIR/test" \
  --evaluation "$OUT_DIR/evaluation/evaluation.json" --out "$OUT_DIR/submission.csv"
"$PY" -m kit validate "$OUT_DIR/submission.csv" --data "$DATA_DIR/test"

step "report"
"$PY" -m kit report --out "$OUT_DIR" --runs "${RUNS[@]}" --seconds "$(($(date +%s) - START))"

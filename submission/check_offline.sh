#!/usr/bin/env bash
# Proves submission/README.md's offline recipe by running its own commands:
#   1. two tiny members (cpu-demo, cpu-demo-unet, fold 0, 2 steps) and their evaluation.json,
#      trained on demo data laid out as the notebook sees the competition data;
#   2. the README's `offline-build` block, from this checkout (internet: pip wheel/download);
#   3. the README's `offline-notebook` block, in a fresh virtualenv, with no network
#      (`unshare --net` where allowed, and PIP_NO_INDEX=1 always);
#   4. checks: the kit came from the wheel, the folder's wheels install and import on their
#      own, submission.csv is the one the checkout's own predict.py writes from the same runs.
# The virtualenv has --system-site-packages: it stands in for the Kaggle image (torch, numpy,
# opencv, ... preinstalled). Paths: /tmp/inkkit-* -> WORK/kaggle/input/inkkit-* (the upload),
# /kaggle -> WORK/kaggle, outputs/ -> WORK/outputs/.
#
#   bash submission/check_offline.sh [WORK_DIR]      (default: a new temporary directory)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python}
WORK=$(realpath -m "${1:-$(mktemp -d /tmp/inkkit-offline.XXXX)}")
mkdir -p "$WORK"
trap 'echo "check_offline.sh: FAILED (work dir $WORK)" >&2' ERR
say() { printf '\n==> %s\n' "$1"; }
# a fenced block of submission/README.md by its tag (```bash offline-build), paths moved
block() {
  awk -v tag="$1" '$0 ~ "^```[a-z]* " tag "$" {on = 1; next} /^```/ {on = 0} on' submission/README.md |
    sed -e "s#\([ (]\)/tmp/inkkit-#\1$WORK/kaggle/input/inkkit-#g" \
      -e "s#\([ (]\)/kaggle/#\1$WORK/kaggle/#g" -e "s#\([ (]\)outputs/#\1$WORK/outputs/#g"
}

DATA=$WORK/kaggle/input/vesuvius-challenge-ink-detection
say "1. two tiny members on demo data ($WORK)"
rm -rf "$WORK/kaggle" "$WORK/outputs" "$WORK/venv" "$WORK/alone"
"$PY" -m kit demo-data "$DATA" --scale 0.03 --no-progress
RUNS=()
for config in cpu-demo cpu-demo-unet; do
  "$PY" -m kit train --data "$DATA" --fold 0 --config "$config" --max-steps 2 \
    --out "$WORK/outputs/runs/$config/fold0" --no-progress
  RUNS+=("$WORK/outputs/runs/$config/fold0")
done
"$PY" -m kit evaluate --runs "${RUNS[@]}" --data "$DATA" --out "$WORK/outputs/evaluation" \
  --tune-weights --no-progress

say "2. the recipe's build block (submission/README.md, step 1)"
block offline-build >"$WORK/build.sh"
cat "$WORK/build.sh"
bash -Eeuo pipefail "$WORK/build.sh"
ls -l "$WORK/kaggle/input/inkkit-wheels" "$WORK/kaggle/input/inkkit-runs"

say "3. the notebook's cells (step 3) in a fresh virtualenv, offline"
# --without-pip: the venv's pip is the image's (a fresh venv's own setuptools would be older
# than torch requires); `%pip` is IPython's `python -m pip` of the kernel, `!cmd` is the shell's
"$PY" -m venv --system-site-packages --without-pip "$WORK/venv"
block offline-notebook | sed -e 's/^%pip /python -m pip /' -e 's/^!//' >"$WORK/notebook.sh"
cat "$WORK/notebook.sh"
OFFLINE=()
if unshare --net true 2>/dev/null; then
  OFFLINE=(unshare --net) && echo "offline: unshare --net (no network interface but lo)"
else
  echo "offline: unshare --net is not allowed here, PIP_NO_INDEX=1 only"
fi
mkdir -p "$WORK/kaggle/working"
(
  cd "$WORK/kaggle/working"
  # no pip settings of this machine (its local indexes and wheel folders): the notebook has none
  for var in $(compgen -e | grep '^PIP_'); do unset "$var"; done
  export PATH=$WORK/venv/bin:$PATH PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PYTHONNOUSERSITE=1
  unset PYTHONPATH VIRTUAL_ENV
  "${OFFLINE[@]}" bash -Eeuo pipefail "$WORK/notebook.sh"
  say "4. checks"
  where=$("${OFFLINE[@]}" python -c 'import kit; print(kit.__file__)')
  echo "kit imported from $where"
  [[ $where == "$WORK/venv/"* ]] || { echo "kit did not come from the installed wheel" >&2; exit 1; }
  "${OFFLINE[@]}" inkkit --version
  # the folder's wheels alone, into an empty folder: importable without this machine's packages
  "${OFFLINE[@]}" python -m pip install -q --no-index --no-deps --target "$WORK/alone" \
    "$WORK"/kaggle/input/inkkit-wheels/*.whl
  for module in kit segment_anything timm tifffile; do
    [ -d "$WORK/alone/$module" ] || { echo "inkkit-wheels lacks $module" >&2; exit 1; }
  done
  echo "inkkit-wheels alone holds: $(ls "$WORK/alone" | grep -v dist-info | tr '\n' ' ')"
)
# the same runs through the checkout's predict.py (network allowed, source kit)
"$PY" submission/predict.py --runs "$WORK"/kaggle/input/inkkit-runs/*/ --data "$DATA/test" \
  --work "$WORK/reference/predictions" --out "$WORK/reference/submission.csv" >/dev/null
cmp "$WORK/kaggle/working/submission.csv" "$WORK/reference/submission.csv"
echo "submission.csv ($(wc -l <"$WORK/kaggle/working/submission.csv") lines) = the checkout's own predict.py's"
grep -h '"name"' "$WORK/kaggle/working/predictions/predict.json" | sed 's/^ */member: /'
echo "check_offline.sh: OK ($WORK)"

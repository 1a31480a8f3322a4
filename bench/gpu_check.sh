#!/usr/bin/env bash
# One-shot GPU check of the kit's CUDA paths, sized to end within 8 minutes on one H100/H200:
#   bash bench/gpu_check.sh            (device tool: carry [".whl"]; results in $OUT)
#   GPU_CHECK_SMOKE=1 OUT=/tmp/gpucheck bash bench/gpu_check.sh   (same sections, tiny, on a CPU)
#   GPU_CHECK_SECTIONS="infer consistency" bash bench/gpu_check.sh   (only those; default: all)
# Writes $OUT/gpu_check.log (everything printed) and $OUT/gpu_results.json (bench/bench_gpu.py).
# Each section runs in its own process under `timeout`, capped by what is left of
# GPU_CHECK_BUDGET seconds, so one failing or hanging section never loses the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
RES=$OUT/gpu_results.json
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
BUDGET=${GPU_CHECK_BUDGET:-470}
ALL_SECTIONS="env plain_loop attention cli consistency train_step encoder infer"
export GPU_CHECK_SECTIONS=${GPU_CHECK_SECTIONS:-$ALL_SECTIONS}  # the summary reads it too
SMOKE=()
LIMIT_SCALE=1  # section limits below are the GPU's; a shared 2-core CPU needs more, even tiny
if [[ ${GPU_CHECK_SMOKE:-0} == 1 ]]; then
    SMOKE=(--smoke)
    LIMIT_SCALE=3
fi
rm -rf "$WORK" "$RES"
mkdir -p "$WORK"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
START=$SECONDS

echo "== gpu_check $(date -u +%FT%TZ) smoke=${GPU_CHECK_SMOKE:-0} budget=${BUDGET}s sections: $GPU_CHECK_SECTIONS"
nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
echo "cpus $(nproc); $(df -h /dev/shm | tail -1 | awk '{print "/dev/shm " $2 " (" $4 " free)"}'); disk $(df -h /tmp | tail -1 | awk '{print $4}') free in /tmp"
# Carried wheels (segment-anything: pure Python, absent on the device; kornia and imagecodecs
# are not imported by the kit's paths). No index, no deps: nothing is fetched.
SITE=${GPU_CHECK_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl ||
        {  # no pip there: a wheel is a zip, and these are pure Python
            echo "pip install failed: unzipping the wheels into $SITE"
            python3 -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
                "$SITE" .whl/*.whl || echo "wheel install FAILED"
        }
else
    echo "no .whl/*.whl carried"
fi
export PYTHONPATH=$SITE:$PWD

section() {  # section NAME LIMIT_S: bench_gpu.py NAME under timeout, capped by the budget left
    local name=$1 limit=$2 left t0 rc
    [[ " $GPU_CHECK_SECTIONS " == *" $name "* ]] || return 0
    left=$((BUDGET - (SECONDS - START)))
    if ((left < 10)); then
        echo "== $name: SKIPPED (budget spent)"
        return
    fi
    ((limit *= LIMIT_SCALE, limit > left)) && limit=$left
    echo "== [$((SECONDS - START)) s] $name (limit ${limit} s)"
    t0=$SECONDS
    timeout -k 10 "$limit" python3 bench/bench_gpu.py "$name" --results "$RES" --work "$WORK" \
        --budget "$((limit - 5))" "${SMOKE[@]}"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

section env 60
section plain_loop 150
section attention 45
section cli 160
section consistency 40
section train_step 60
section encoder 40
section infer 60
python3 bench/bench_gpu.py summary --results "$RES" --work "$WORK"
echo "== done in $((SECONDS - START)) s; results: $RES"
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete before $OUT is collected

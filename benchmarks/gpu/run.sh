#!/usr/bin/env bash
# The GPU benchmark on a bare machine: install the carried wheels (if any), then run.py; everything goes to $OUT.
#   bash benchmarks/gpu/run.sh [--dry-run] [--budget-s 480] [--skip compile,...]
# Wheels: put the packages the machine lacks in .whl/ (README of benchmarks/gpu: how to fetch them for the
# machine's Python); they install into /tmp/site, never into the system's site-packages.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
DRY_RUN=0
case " $* " in *" --dry-run "*) DRY_RUN=1; export DS_ACCELERATOR=cpu ;; esac
# The dry run uses the environment it is started in (the project's venv); only the GPU machine lacks packages.
if [ "$DRY_RUN" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 WDS_SECURE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
${PYTHON:-python3} benchmarks/gpu/run.py --out "$OUT" --work "${WORK:-/tmp/animatex_gpu_work}" "$@" 2>&1 | tee "$OUT/gpu_run.log"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# The GPU run behind reports/baselines-strong-victim/ (issue 13), from the repository root of a CUDA machine with
# advbench installed (or, on the device tool's bare machine, the wheels in .whl/ and the data in .devdata/):
#   bash reports/baselines-strong-victim/gpu_run.sh
# SUITE picks another suite (suites/baselines-review-cnn.yaml); TESTS=0 skips the device tests; KD=1 adds
# reports/baselines/kd_protocol.py (kd_protocol.json).
# Writes into $OUT (default /tmp/strong-victim-out): report.tar.gz (the run), paired.tar.gz (the same scores re-read
# with paired negatives), ma_protocol.json (LID under the review's protocol), and the logs. Each step has a
# deadline (seconds from the start) so a lease's fixed time still returns what finished.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/strong-victim-out}; mkdir -p "$OUT"
THREADS=${THREADS:-8}
RUN_BY=${RUN_BY:-440} PAIRED_BY=${PAIRED_BY:-480} MA_BY=${MA_BY:-545} KD_BY=${KD_BY:-590}  # deadlines, s from the start
SUITE=${SUITE:-suites/baselines-strong-victim.yaml}
export ADVBENCH_CACHE=${ADVBENCH_CACHE:-/tmp/advbench-cache} PYTHONUNBUFFERED=1
left() { echo $(( $1 - ($(date +%s) - T0) )); }
step() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/steps.log"; }

if ! python3 -c "import importlib.metadata as m; m.version('advbench')" 2>/dev/null && [ -d .whl ]; then
  # a bare machine: the packages its image lacks, then advbench itself
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
    || { step "install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
if [ -f .devdata/cifar10-jpeg.tar.gz ] && [ ! -e ../shared/data/cifar10-jpeg.tar.gz ]; then
  mkdir -p ../shared/data && ln -s "$PWD/.devdata/cifar10-jpeg.tar.gz" ../shared/data/cifar10-jpeg.tar.gz
fi
{ nvidia-smi; python3 -c "import torch, advbench; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  >"$OUT/checks.log" 2>&1
step "installed"
if [ "${TESTS:-1}" = 1 ]; then
  timeout "$(left 75)" python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_interpreters.py \
    >>"$OUT/checks.log" 2>&1; step "device tests exit $?"
fi

timeout "$(left "$RUN_BY")" python3 -m advbench.cli run "$SUITE" --threads "$THREADS" --out /tmp/report >"$OUT/run.log" 2>&1
step "run exit $?"
[ -d /tmp/report ] && tar -czf "$OUT/report.tar.gz" -C /tmp report
timeout "$(left "$PAIRED_BY")" python3 -m advbench.cli run "$SUITE" --threads "$THREADS" --set evaluation.benign=paired \
  --out /tmp/paired >>"$OUT/ma.log" 2>&1; step "paired re-read exit $?"
[ -d /tmp/paired ] && tar -czf "$OUT/paired.tar.gz" -C /tmp paired
timeout "$(left "$MA_BY")" python3 reports/lid-diagnosis/ma_protocol.py --suite "$SUITE" --limit 0 --device auto \
  --threads "$THREADS" --out "$OUT/ma_protocol.json" >>"$OUT/ma.log" 2>&1; step "ma_protocol exit $?"
if [ "${KD:-0}" = 1 ]; then  # KD+BU under the review's protocol (reports/baselines/kd_protocol.py)
  timeout "$(left "$KD_BY")" python3 reports/baselines/kd_protocol.py --suite "$SUITE" --limit 0 --device auto \
    --threads "$THREADS" --out "$OUT/kd_protocol.json" >>"$OUT/ma.log" 2>&1; step "kd_protocol exit $?"
fi
step "done"

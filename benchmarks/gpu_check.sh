#!/usr/bin/env bash
# The GPU check for a lent H100/H200 (<= 8 minutes): rebuild the C++ core for the device image,
# print the versions it ran with, then `omicskern bench --suite gpu` (attention B4/L4k/H16/D128 bf16
# vs SDPA flash/cuDNN/bias and flash-attn + block-size sweep; fft_conv 1k/4k/32k/1M vs torch.fft;
# model throughputs; the gpu-marked tests), records + tables into one folder.
#
#   bash benchmarks/gpu_check.sh [OUT]      OUT: results folder (default benchmarks/results/gpu_check)
#
# With the device tool, from the project root:
#   run(command="bash benchmarks/gpu_check.sh $OUT/gpu_check", timeout_s=560)
# Env: PYTHON (default python3), SKIP_BUILD=1 (no pip install -e .), BENCH_T (limit of the suite, s).
# DRY_RUN=1: on a machine without CUDA, the same steps at tiny sizes through the Triton interpreter.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/gpu_check}
PY=${PYTHON:-python3}
BENCH_T=${BENCH_T:-420}
mkdir -p "$OUT"
cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }

step "build (the device image may have another Python/torch/Triton: rebuild the C++ core)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  $PY -m pip install -e . -q --no-build-isolation 2>&1 | tail -n 5 || $PY -m pip install -e . -q 2>&1 | tail -n 5
fi

step versions
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  $PY - <<'PYEOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton not importable:", type(e).__name__)
try:
    import flash_attn; print("flash_attn", flash_attn.__version__)
except Exception as e:
    print("flash_attn not importable:", type(e).__name__)
import omicskern, omicskern._native as n
print("omicskern", omicskern.__version__, "core", n.load_C().__file__)
PYEOF
} 2>&1 | tee "$OUT/versions.txt"

if [ "${DRY_RUN:-0}" = 1 ]; then
  DEV=cpu; SIZE=--tiny; export TRITON_INTERPRET=1
else
  DEV=cuda; SIZE=; unset TRITON_INTERPRET
fi
step "omicskern bench --suite gpu --device $DEV (limit ${BENCH_T}s)"
timeout -k 10 "$BENCH_T" $PY -m omicskern bench --suite gpu --device "$DEV" $SIZE --out "$OUT" --no-plots 2>&1 \
  | tee "$OUT/bench.txt"
echo "bench rc=${PIPESTATUS[0]}"
step done
ls -la "$OUT"

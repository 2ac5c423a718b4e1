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
# Env: PYTHON (default python3), SKIP_BUILD=1 (no pip install -e .), SECTIONS (default "attention fft_conv
# models tests"), ATTN_T/FFT_T/MODELS_T/TESTS_T (their limits, s).
# DRY_RUN=1: on a machine without CUDA, the same steps at tiny sizes through the Triton interpreter.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/gpu_check}
PY=${PYTHON:-python3}
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

rm -f "$OUT"/gpu_*.jsonl  # this run's records only (the committed copy keeps history in git)
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEV=cpu; SIZE=--tiny; export TRITON_INTERPRET=1
else
  DEV=cuda; SIZE=; unset TRITON_INTERPRET
fi
# one invocation per section, each with its own time limit, all appending to the same JSONL: a hang
# or crash in one still leaves the others' records; the tables are rendered from all of them at the end
declare -A LIMITS=([attention]=${ATTN_T:-150} [fft_conv]=${FFT_T:-80} [models]=${MODELS_T:-100} [tests]=${TESTS_T:-140})
for NAME in ${SECTIONS:-attention fft_conv models tests}; do
  LIMIT=${LIMITS[$NAME]:-60}
  step "omicskern bench --suite gpu --device $DEV: $NAME (limit ${LIMIT}s)"
  OMICSKERN_GPU_SECTIONS=$NAME timeout -k 10 "$LIMIT" $PY -m omicskern bench --suite gpu --device "$DEV" $SIZE \
    --out "$OUT" --no-plots 2>&1 | tee -a "$OUT/bench.txt"
  echo "$NAME rc=${PIPESTATUS[0]}" | tee -a "$OUT/bench.txt"
done
step "tables from every record of this run"
$PY - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from omicskern.bench import records, render
out = Path(sys.argv[1])
for f in sorted(out.glob("gpu_*.jsonl")):
    recs = records.read_jsonl(f)
    dev = (recs[0].get("device") or {}).get("name") if recs else "?"
    f.with_suffix(".md").write_text(render.markdown(recs, title=f"omicskern GPU check: {dev}"))
    records.write_csv(f.with_suffix(".csv"), recs)
    print(f"{f.with_suffix('.md')}: {len(recs)} records")
    print(render.summary(recs))
PYEOF
step done
ls -la "$OUT"

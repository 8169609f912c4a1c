#!/usr/bin/env bash
# The GPU measurements of issue 13 in one go, for a session that is lent a CUDA machine.
#
# Needs: this repository, a venv with the engine's packages (torch with CUDA, open_clip, taming)
# and ffmpeg for the nightmare rows. No model weights: every network is a random-weight copy of
# the real architecture. Writes JSON and logs to $OUT (default ./gpu-check), one file per run;
# each run has its own time limit, so a hang costs one row, not the lease. About 6-8 minutes on
# an H100/H200 in total; the limits add up to under 10 minutes (one device command).
#
#     PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Then fill docs/operators.md's GPU table from gpu-check/bench.json (stage rows and projections).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1))" >&2
    exit 2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c \
    'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'; } \
    > "$OUT/device.txt" 2>&1
command -v ffmpeg >/dev/null || echo "ffmpeg missing: the nightmare rows will fail" >&2

failed=0
run() {  # run NAME LIMIT_S ARGS...: one benchmark invocation, its log and its exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)" >&2
    timeout --kill-after=10 "$limit" "$PY" benchmarks/bench_pipeline.py --device cuda "$@" \
        > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc" >> "$OUT/status.txt"
    [ "$rc" -eq 0 ] || { failed=1; tail -5 "$OUT/$name.log" >&2; }
}

# 1. All stages, every precision, defaults otherwise (auto checkpointing, channels_last on CUDA).
run bench 240 --steps 8 --precision fp32 tf32 bf16 --cutouts 32 64 --json "$OUT/bench.json"
# 2. bf16 quality against fp32 at the real size on the GPU (the CPU check's figures, on cuDNN).
run quality 60 --quality --steps 8 --cutouts 32 --json "$OUT/quality.json"
# 3. The 8 GB path: checkpointing forced on, bf16 and fp32.
run checkpointed 60 --steps 8 --stages scare --precision bf16 fp32 --cutouts 32 --checkpointing true \
    --json "$OUT/checkpointed.json"
# 4. Layout A/B: NCHW against the channels_last default, decoder alone and a whole stage-2 step.
run layout 30 --layout-check --size 608 752
run nchw 45 --steps 8 --stages scare --precision bf16 --cutouts 32 --channels-last false \
    --json "$OUT/nchw.json"
# 5. Opt-in torch.compile (first step = compile time; FLOPs read from the eager rows).
run compiled 150 --steps 12 --stages scare nightmare --precision bf16 --cutouts 32 --compile \
    --json "$OUT/compiled.json"

echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
exit "$failed"

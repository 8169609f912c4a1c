#!/usr/bin/env bash
# The GPU measurements of issue 13 in one go, for a session that is lent a CUDA machine.
#
# Needs: this repository, a venv with the engine's packages (torch with CUDA, open_clip, taming)
# and ffmpeg for the nightmare rows. No model weights: every network is a random-weight copy of
# the real architecture. Writes JSON and logs to $OUT (default ./gpu-check), one file per run;
# each run has its own time limit, so a hang costs one row, not the lease. The limits add up to
# about 11.5 minutes, more than one 10-minute device command: give it as two by naming the parts
# (no names: all of them, in this order):
#
#     PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_check.sh graphs bench quality
#     PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_check.sh checkpointed layout nchw compiled
#
# Parts and limits: graphs 105 s, bench 240 s, quality 60 s, checkpointed 60 s, layout 30 s,
# nchw 45 s, compiled 150 s.
#
# The scripts are benchmarks/bench_stages.py, bench_quality.py, bench_layout.py and graph_check.py.
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

ALL_PARTS="graphs bench quality checkpointed layout nchw compiled"
PARTS=" ${*:-$ALL_PARTS} "
for part in $PARTS; do
    case " $ALL_PARTS " in *" $part "*) ;; *) echo "unknown part $part (parts: $ALL_PARTS)" >&2; exit 2 ;; esac
done

failed=0
run_script() {  # run_script PART NAME LIMIT_S ARGS...: "$PY ARGS" if PART was asked for; its log, status
    local part=$1 name=$2 limit=$3
    shift 3
    case "$PARTS" in *" $part "*) ;; *) return 0 ;; esac
    echo "== $name (limit ${limit}s)" >&2
    timeout --kill-after=10 "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc" >> "$OUT/status.txt"
    [ "$rc" -eq 0 ] || { failed=1; tail -5 "$OUT/$name.log" >&2; }
}
run() {  # run NAME LIMIT_S SCRIPT ARGS...: one benchmarks/SCRIPT invocation on CUDA
    local name=$1 limit=$2 script=$3
    shift 3
    run_script "$name" "$name" "$limit" "benchmarks/$script" --device cuda "$@"
}

# 0. [pipeline] cuda_graphs (off by default until this has passed on a GPU): its tests (the CUDA
#    one captures a graph on the tiny preset), then a 40-frame nightmare eager, graphed, eager again
#    at the real size: both frame rates, and the graphed frames against the eager ones.
run_script graphs graphs-tests 45 -m pytest tests/engine/test_static_step.py -q -rs -p no:cacheprovider
run_script graphs graphs 60 benchmarks/graph_check.py --frames 40 --cutouts 32 --json "$OUT/graphs.json"

# 1. All stages, every precision, defaults otherwise (auto checkpointing, channels_last on CUDA).
run bench 240 bench_stages.py --steps 8 --precision fp32 tf32 bf16 --cutouts 32 64 --json "$OUT/bench.json"
# 2. bf16 quality against fp32 at the real size on the GPU (the CPU check's figures, on cuDNN).
run quality 60 bench_quality.py --steps 8 --cutouts 32 --json "$OUT/quality.json"
# 3. The 8 GB path: checkpointing forced on, bf16 and fp32.
run checkpointed 60 bench_stages.py --steps 8 --stages scare --precision bf16 fp32 --cutouts 32 --checkpointing true \
    --json "$OUT/checkpointed.json"
# 4. Layout A/B: NCHW against the channels_last default, decoder alone and a whole stage-2 step.
run layout 30 bench_layout.py --size 608 752
run nchw 45 bench_stages.py --steps 8 --stages scare --precision bf16 --cutouts 32 --channels-last false \
    --json "$OUT/nchw.json"
# 5. Opt-in torch.compile (first step = compile time; FLOPs read from the eager rows).
run compiled 150 bench_stages.py --steps 12 --stages scare nightmare --precision bf16 --cutouts 32 --compile \
    --json "$OUT/compiled.json"

echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
exit "$failed"

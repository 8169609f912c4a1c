"""A short nightmare with `[pipeline] cuda_graphs` off and on: both frame rates, and whether the frames agree.

For a machine with a CUDA GPU (benchmarks/gpu_check.sh runs it). Random weights of the real sizes
(pipeline_helpers.py's VQGAN f16 16384 and CLIP ViT-B/32), the nightmare's own learning rate, one
seed, the device's default precision; frames are read as the renderer reads them (copied to host
memory, in order). Three runs: eager, graphed, eager again. The second eager run measures how far the
eager path drifts from itself (cuDNN/atomic-add reductions are not bit-reproducible on a GPU),
so a graph difference within that noise is not blamed on the graph.

Prints per run the frames per second after the first `--skip` frames (they include cuDNN
autotuning and, graphed, the 3 warm-up frames and the capture) and the peak memory, then per
frame pair the largest difference in grey levels. Exit status 1 when the graphed frames differ
from the eager ones by more than one grey level and by more than the eager run from itself.

    python benchmarks/graph_check.py --frames 40 --size 608 752 --cutouts 32 --json graph.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pipeline_helpers import GB, PROMPT, build_models


def nightmare(
    models: Any, args: argparse.Namespace, graphed: bool
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """One short nightmare: its frames and its timings."""
    from engine.pipeline.optimisation import VqganClipParams
    from engine.pipeline.precision import device_precision
    from engine.pipeline.prompts import parse_prompts
    from engine.pipeline.vqgan_clip import nightmare_frames
    from spooky.config import PipelineConfig

    device = models.device
    defaults = PipelineConfig()
    params = VqganClipParams(
        steps=args.frames,
        lr=defaults.nightmare_lr,
        cutouts=args.cutouts,
        still_every=0,
        seed=0,
        size=tuple(args.size),  # type: ignore[arg-type]
        checkpoint=args.checkpoint,
        precision=device_precision(args.precision, device),  # type: ignore[arg-type]
        cuda_graphs=graphed,
    )
    g = torch.Generator().manual_seed(0)
    start_image = (torch.rand(1, 3, args.size[1], args.size[0], generator=g) * 2 - 1).to(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    stamps = [time.perf_counter()]
    frames = []
    stream = nightmare_frames(models.vqgan, models.clip, start_image, parse_prompts(PROMPT), params)
    for frame in stream:  # each frame is in host memory once yielded: its step has run
        frames.append(frame)
        stamps.append(time.perf_counter())
    torch.cuda.synchronize(device)
    steady = stamps[args.skip :]
    row = {
        "cuda_graphs": graphed,
        "frames": len(frames),
        "precision": params.precision,
        "first_frames_s": stamps[args.skip] - stamps[0],
        "fps": (len(steady) - 1) / (steady[-1] - steady[0]),
        "peak_gb": torch.cuda.max_memory_allocated(device) / GB,
    }
    return frames, row


def max_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[int]:
    return [int((x.int() - y.int()).abs().max()) for x, y in zip(a, b, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--skip", type=int, default=8, help="frames left out of the frame rate")
    ap.add_argument("--size", type=int, nargs=2, default=(608, 752), metavar=("W", "H"))
    ap.add_argument("--cutouts", type=int, default=32)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "tf32", "bf16"])
    ap.add_argument("--checkpoint", action="store_true", help="checkpoint the decoder (the 8 GB path)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("graph_check needs a CUDA device", file=sys.stderr)
        return 2
    if args.frames < args.skip + 2:
        ap.error("--frames must be at least --skip + 2")
    device = torch.device("cuda")
    models = build_models(device, {"nightmare"}, tuple(args.size))
    eager, eager_row = nightmare(models, args, graphed=False)
    graphed, graphed_row = nightmare(models, args, graphed=True)
    again, again_row = nightmare(models, args, graphed=False)
    graph_diff, noise = max_diffs(eager, graphed), max_diffs(eager, again)
    for row in (eager_row, graphed_row, again_row):
        mode = "graphed" if row["cuda_graphs"] else "eager"
        print(
            f"{mode:8} {row['precision']} {args.size[0]}x{args.size[1]} {args.cutouts} cutouts: "
            f"{row['fps']:.1f} fps (frames {args.skip + 1}-{row['frames']}), first {args.skip} frames "
            f"{row['first_frames_s']:.2f} s, peak {row['peak_gb']:.2f} GiB"
        )
    print(f"graphed / eager frame rate: {graphed_row['fps'] / eager_row['fps']:.2f}x")
    print(f"max |graphed - eager| per frame (grey levels): {graph_diff}")
    print(f"max |eager - eager| per frame (grey levels):   {noise}")
    ok = all(d <= max(1, n) for d, n in zip(graph_diff, noise, strict=True))
    print("frames agree" if ok else "FRAMES DIFFER: the graphed step is not the eager step")
    if args.json:
        report = {"runs": [eager_row, graphed_row, again_row], "graph_diff": graph_diff, "eager_noise": noise}
        args.json.write_text(json.dumps({**report, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""x264 file size of synthetic busy frames per crf: how the writer's DEFAULT_CRF is chosen.

Encodes `--video-frames` frames at `--size` (300 at 608x752 by default: a nightmare) once per
drift and crf with the engine's writer (preset medium, 30 fps) and prints the MiB of each file
against Discord's 10 MiB, and the encode time.

    python benchmarks/bench_video.py
    python benchmarks/bench_video.py --video-frames 30 --size 128 160 --crf 22 --drift 0.1   # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pipeline_helpers  # noqa: F401  (puts the repository root on the path)
import torch
import torch.nn.functional as F


def synthetic_frames(n: int, size: tuple[int, int], drift: float, seed: int = 0) -> list[np.ndarray]:
    """Busy, slowly changing frames: multi-scale colour noise whose phase drifts by `drift`
    radians per frame, fixed fine grain, and 1 % of 16x16 blocks flipping each frame the way
    VQGAN codes flip. Not VQGAN output, but as hard to compress as the busiest nightmares."""
    w, h = size
    g = torch.Generator().manual_seed(seed)

    def field(cells: int) -> torch.Tensor:
        coarse = torch.randn(2, 3, cells, max(1, round(cells * w / h)), generator=g)
        return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)

    octaves = [(field(c), amp) for c, amp in ((6, 0.5), (20, 0.35), (60, 0.25), (180, 0.15))]
    grain = torch.randn(3, h, w, generator=g) * 0.08
    blocks = torch.zeros(3, h, w)
    flips = max(1, (h // 16) * (w // 16) // 100)
    frames = []
    for t in range(n):
        img = grain + blocks
        for i, (f, amp) in enumerate(octaves):
            phase = drift * t * (1 + 0.3 * i)
            img = img + amp * (f[0] * math.cos(phase) + f[1] * math.sin(phase))
        ys = torch.randint(0, h // 16, (flips,), generator=g).tolist()
        xs = torch.randint(0, w // 16, (flips,), generator=g).tolist()
        for y, x in zip(ys, xs, strict=True):
            patch = torch.randn(3, 1, 1, generator=g) * 0.3 + torch.randn(3, 16, 16, generator=g) * 0.1
            blocks[:, y * 16 : y * 16 + 16, x * 16 : x * 16 + 16] = patch
        frames.append(((torch.tanh(img).permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    return frames


def bench_video(frames: int, size: tuple[int, int], crfs: list[int], drifts: list[float]) -> list[dict]:
    from engine.pipeline.video import VideoWriter

    rows = []
    with tempfile.TemporaryDirectory(prefix="spooky-bench-") as tmp:
        for drift in drifts:
            clip = synthetic_frames(frames, size, drift)
            for crf in crfs:
                out = Path(tmp) / f"d{drift}_crf{crf}.mp4"
                t0 = time.perf_counter()
                with VideoWriter(out, size, fps=30, crf=crf) as writer:
                    for frame in clip:
                        writer.write(frame)
                rows.append(
                    {
                        "drift": drift,
                        "crf": crf,
                        "frames": frames,
                        "mib": out.stat().st_size / 2**20,
                        "encode_s": time.perf_counter() - t0,
                    }
                )
                print(f"  video drift {drift:<5} crf {crf}: {rows[-1]['mib']:6.2f} MiB", file=sys.stderr)
    return rows


def print_video(video: list[dict], size: tuple[int, int]) -> None:
    print(f"\nx264 size of synthetic busy {size[0]}x{size[1]} frames (budget 10 MiB)")
    print(f"{'drift rad/frame':>15} {'crf':>4} {'frames':>6} {'MiB':>7} {'encode s':>9}")
    for v in video:
        print(f"{v['drift']:>15} {v['crf']:>4} {v['frames']:>6} {v['mib']:>7.2f} {v['encode_s']:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video-frames", "--frames", type=int, default=300)
    ap.add_argument("--size", nargs=2, type=int, default=[608, 752], metavar=("W", "H"))
    ap.add_argument("--crf", nargs="+", type=int, default=[20, 22, 24])
    ap.add_argument("--drift", nargs="+", type=float, default=[0.02, 0.1, 0.3])
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    size = (args.size[0], args.size[1])
    video = bench_video(args.video_frames, size, args.crf, args.drift)
    print_video(video, size)
    if args.json:
        args.json.write_text(json.dumps({"info": {"size": list(size)}, "video": video}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

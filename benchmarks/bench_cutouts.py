"""Time the two ways MakeCutouts cuts its crops: the per-crop loop and the static-shape products.

Forward + backward of the crop + resize alone (no augmentation), the same draws for both, on one
canvas; prints the mean per call after a warm-up call and the ratio. Decides the CPU default
(`MakeCutouts(static_shapes=...)`), so it is meant to run on the machine in question:

    python benchmarks/bench_cutouts.py --device cpu --size 608 752 --cutouts 32 --repeats 3
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from engine.pipeline.cutouts import MakeCutouts


def time_path(cut: MakeCutouts, image: torch.Tensor, static: bool, repeats: int, seed: int) -> float:
    """Mean seconds of one forward + backward over `repeats` calls (after one warm-up call)."""
    cut.static_shapes = static
    times = []
    for r in range(repeats + 1):
        crops = random.Random(seed + r)
        if image.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = cut(image, torch.Generator(image.device).manual_seed(r), crops)
        out.backward(torch.ones_like(out))
        if image.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        image.grad = None
    return sum(times[1:]) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs=2, default=(608, 752), metavar=("W", "H"))
    ap.add_argument("--cutouts", type=int, default=32)
    ap.add_argument("--cut-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    width, height = args.size
    image = torch.rand(1, 3, height, width, device=args.device, requires_grad=True)
    cut = MakeCutouts(args.cut_size, args.cutouts, augment=False, noise_fac=0)
    loop = time_path(cut, image, False, args.repeats, 0)
    static = time_path(cut, image, True, args.repeats, 0)
    print(
        f"{args.device} {width}x{height}, {args.cutouts} cutouts of {args.cut_size}, forward + backward: "
        f"loop {loop * 1e3:.1f} ms, static shapes {static * 1e3:.1f} ms ({static / loop:.2f}x the loop), "
        f"{torch.get_num_threads()} thread(s)"
    )


if __name__ == "__main__":
    main()

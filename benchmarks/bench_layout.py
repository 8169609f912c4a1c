"""The VQGAN decoder's forward + backward at one canvas size, NCHW against channels_last (NHWC).

Random weights of the published f16 16384; best of 3 after a warm-up, NCHW timed before and
after NHWC so that a machine whose speed drifts shows it. The measurement behind `[pipeline]
channels_last` (docs/operators.md).

    python benchmarks/bench_layout.py --device cpu --size 608 752
"""

from __future__ import annotations

import sys

import torch
from pipeline_helpers import decoder_probe, device_of, parser, time_decoder


def layout_check(device: torch.device, size: tuple[int, int], repeats: int = 3) -> None:
    """The VQGAN decoder's forward + backward at `size`, NCHW against channels_last (best of `repeats`)."""
    from engine.pipeline.decode import decode
    from engine.pipeline.layout import apply_layout

    vq, codes = decoder_probe(device, size)
    times = {}
    for name, channels_last in (("NCHW", False), ("channels_last", True), ("NCHW again", False)):
        apply_layout(vq, channels_last)
        times[name] = time_decoder(vq, codes, lambda z: decode(vq, z), repeats)["wall_s"]
    nchw = min(times["NCHW"], times["NCHW again"])
    print(f"decoder forward + backward at {size[0]}x{size[1]} on {device}: NCHW {nchw:.3f} s, "
          f"channels_last {times['channels_last']:.3f} s ({times['channels_last'] / nchw:.2f}x)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per layout (the best counts)")
    args = ap.parse_args(argv)
    device = device_of(args)
    layout_check(device, (args.size[0], args.size[1]), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

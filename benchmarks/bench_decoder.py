"""The VQGAN decoder's forward + backward at one canvas size: where the pipeline's decoder gains.

taming's `Decoder.forward` as the reference loop runs it (NCHW weights), against the pipeline's
(engine/pipeline/decode.py: sub-pixel upsampling, one-pass swish) in NCHW and in its default NHWC
layout, and in NHWC with freed host memory kept as in a CPU render. Random weights of the
published f16 16384; best of 3 after a warm-up, with user and kernel time and page faults.

    python benchmarks/bench_decoder.py --device cpu --size 608 752 --json decoder.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from pipeline_helpers import decoder_probe, device_of, parser, time_decoder


def decoder_check(device: torch.device, size: tuple[int, int], repeats: int = 3) -> list[dict[str, Any]]:
    """The VQGAN decoder's forward + backward at `size`: taming's forward as the reference loop runs
    it (NCHW weights), against the pipeline's (sub-pixel upsampling, one-pass swish) in NCHW and in
    its default NHWC layout, and in NHWC with freed host memory kept (as in a CPU render)."""
    from engine.pipeline.decode import decode
    from engine.pipeline.host_memory import reuse_freed_memory
    from engine.pipeline.layout import apply_layout

    vq, codes = decoder_probe(device, size)
    cpu = device.type == "cpu"
    variants = (  # name, forward, channels_last weights, keep freed memory
        ("taming Decoder.forward", vq.decode, False, False),
        ("pipeline decode, NCHW", lambda z: decode(vq, z), False, False),
        ("pipeline decode, NHWC", lambda z: decode(vq, z), True, False),
        ("pipeline decode, NHWC, memory kept", lambda z: decode(vq, z), True, cpu),
    )
    rows = []
    print(f"decoder forward + backward at {size[0]}x{size[1]} on {device}, best of {repeats}")
    print(f"{'variant':<36} {'wall s':>7} {'user s':>7} {'sys s':>6} {'page faults':>11} {'GFLOP':>6}")
    for name, fn, channels_last, keep in variants:
        apply_layout(vq, channels_last)
        with reuse_freed_memory(keep):
            row = {"variant": name, **time_decoder(vq, codes, fn, repeats)}
        rows.append(row)
        print(f"{name:<36} {row['wall_s']:>7.2f} {row['user_s']:>7.2f} {row['sys_s']:>6.2f} "
              f"{row['page_faults']:>11} {row['gflop']:>6.0f}")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per variant (the best counts)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    device = device_of(args)
    rows = decoder_check(device, (args.size[0], args.size[1]), args.repeats)
    if args.json:
        args.json.write_text(json.dumps({"info": {"device": str(device)}, "decoder": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

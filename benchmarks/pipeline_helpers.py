"""What the pipeline benchmarks share: the real-size networks with random weights, and step timing.

No weights are needed: StyleGAN2 1024 (FFHQ config-f shape), CLIP ViT-B/32 and a taming VQGAN
f16 16384 (the WikiArt/ImageNet yaml's shape) are built with random weights, which cost exactly
what the published ones cost. The scripts beside this module import it (`python
benchmarks/bench_stages.py` puts benchmarks/ on the path); it puts the repository root on the path
for them, so `engine` imports without PYTHONPATH.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

PROMPT = "dracula pale fangs"
GB = 1024**3

#: The published taming VQGAN f16 16384 (WikiArt and ImageNet share this architecture).
VQGAN_F16_16384: dict[str, Any] = {
    "model": {
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 256,
            "n_embed": 16384,
            "ddconfig": {
                "double_z": False,
                "z_channels": 256,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 1, 2, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [16],
                "dropout": 0.0,
            },
        },
    }
}

def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the two options every model benchmark takes: --device and --size."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--size", nargs=2, type=int, default=[608, 752], metavar=("W", "H"))
    return ap


def device_of(args: argparse.Namespace) -> torch.device:
    """`--device`, with cuDNN's autotuner on for CUDA (every benchmark runs fixed shapes)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


# --- models at the real sizes, random weights -------------------------------------------------


def build_models(device: torch.device, need: set[str], size: tuple[int, int], preset: str = "full") -> Any:
    """The engine's `Models` with random real-size networks (unused ones are left as None)."""
    if preset == "tiny":
        from engine.models.factory import load_models
        from spooky.config import ModelsConfig

        return load_models(ModelsConfig(preset="tiny", device=str(device)))
    from engine.models.clip import ClipModel, build_clip_model
    from engine.models.factory import Models
    from engine.models.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    stylegan = vqgan = None
    if "stylegan" in need:
        stylegan = StyleGAN2Generator(1024)
        stylegan.set_latent_avg(stylegan.mean_latent(n=4096))
        stylegan = stylegan.to(device).eval().requires_grad_(False)
    if need & {"scare", "nightmare"}:
        vqgan = build_vqgan_f16(device)
    clip = ClipModel(build_clip_model("ViT-B-32"), device)
    return Models(
        stylegan=stylegan,  # type: ignore[arg-type]
        vqgan=vqgan,  # type: ignore[arg-type]
        clip=clip,
        preset="full",
        device=device,
        default_size=size,
        description="random-init StyleGAN2 1024 / VQGAN f16 16384 / CLIP ViT-B-32 (benchmark)",
    )


def build_vqgan_f16(device: torch.device) -> Any:
    """The published VQGAN f16 16384's architecture, random weights, frozen."""
    from engine.models.vqgan import build_vqgan

    vqgan = build_vqgan(VQGAN_F16_16384).to(device).eval().requires_grad_(False)
    vqgan.refresh_codebook_range()
    return vqgan


def face_image(models: Any) -> torch.Tensor:
    """A stage-1 sized image in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    side = models.stylegan.size if models.stylegan is not None else 1024
    face = F.interpolate(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, size=(side, side), mode="bicubic")
    return face.clamp(-1, 1).to(models.device)


# --- timing -----------------------------------------------------------------------------------


class StepClock:
    """A stage's progress callback that timestamps every step (after the device has finished it).

    Between the callbacks of steps 1 and 2 a FlopCounterMode counts step 2's FLOPs.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.flops = 0
        self._counter: FlopCounterMode | None = None
        self.start = 0.0
        self.stamps: list[float] = []
        # CPU time of this process (all threads): on a shared machine it shows the work done,
        # while wall time also counts the waiting for a core.
        self.cpu_start = 0.0
        self.cpu_stamps: list[float] = []

    def begin(self) -> None:
        self._sync()
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def __call__(self, _: Any) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None
        self._sync()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        if len(self.stamps) == 1:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def close(self) -> None:
        if self._counter is not None:  # a run of one step
            self._counter.__exit__(None, None, None)
            self._counter = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self, drop_last: bool = False) -> dict[str, float]:
        times = np.diff([self.start, *self.stamps])
        cpu = np.diff([self.cpu_start, *self.cpu_stamps])
        # Step 1 warms up, step 2 is slowed by the FLOP counter: time the rest when there is one.
        rest = slice(2, None) if len(times) > 2 else slice(len(times) - 1, None)
        if drop_last and len(times) > 3:  # a last step that also renders the stage's result
            rest = slice(2, len(times) - 1)
        step_s = float(np.mean(times[rest]))
        return {
            "steps": len(times),
            "first_s": float(times[0]),
            "step_s": step_s,
            "fps": 1 / step_s,
            "cpu_step_s": float(np.mean(cpu[rest])),
            "gflop_step": self.flops / 1e9,
            "tflops": self.flops / step_s / 1e12,
        }


def measure(
    device: torch.device, run: Callable[[StepClock], None], drop_last: bool = False
) -> dict[str, float]:
    """`run(clock)`'s per-step figures (`StepClock.summary`), the time after its last step and, on
    CUDA, its peak memory."""
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    clock.begin()
    try:
        run(clock)
    finally:
        clock.close()
    clock._sync()
    end = time.perf_counter()
    out = clock.summary(drop_last)
    out["finish_s"] = end - clock.stamps[-1]  # after the last step (e.g. ffmpeg flush, budget fit)
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / GB
        out["reserved_gb"] = torch.cuda.max_memory_reserved(device) / GB
    return out


# --- the VQGAN decoder alone ------------------------------------------------------------------


def decoder_probe(device: torch.device, size: tuple[int, int]) -> tuple[Any, torch.Tensor]:
    """The VQGAN f16 16384 with random weights, and random codes of a `size` (w, h) canvas."""
    torch.manual_seed(0)
    vq = build_vqgan_f16(device)
    w, h = size[0] // vq.factor, size[1] // vq.factor
    return vq, torch.randint(0, vq.n_embed, (1, h, w), device=device)


def time_decoder(
    vq: Any, codes: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], repeats: int
) -> dict[str, Any]:
    """The fastest of `repeats` forward + backward passes after a warm-up, with CPU time and page faults."""

    def once() -> None:
        z = vq.quantize_codes(codes).detach().requires_grad_(True)
        fn(z).square().mean().backward()
        if codes.device.type == "cuda":
            torch.cuda.synchronize(codes.device)

    with FlopCounterMode(display=False) as counter:
        once()  # the warm-up
    best: dict[str, Any] = {"wall_s": math.inf}
    for _ in range(repeats):
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        once()
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        if wall < best["wall_s"]:
            best = {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
                    "sys_s": after.ru_stime - before.ru_stime,
                    "page_faults": after.ru_minflt - before.ru_minflt}  # fmt: skip
    return {**best, "gflop": counter.get_total_flops() / 1e9}

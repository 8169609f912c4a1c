"""Per-step time and peak memory of each pipeline stage at the real sizes, on random weights.

No weights are needed: StyleGAN2 1024 (FFHQ config-f shape), CLIP ViT-B/32 and a taming VQGAN
f16 16384 (the WikiArt/ImageNet yaml's shape) are built with random weights, which cost exactly
what the published ones cost. Stages:

  stylegan   stage 1 steps (StyleGAN2 1024 synthesis + CLIP ViT-B/32, Adam on W+)
  scare      stage 2 steps at the canvas size (608x752 by default), once per --cutouts value
  nightmare  stage 3 frames through the real Renderer: VQGAN+CLIP step + ffmpeg encoding
  video      x264 file size of 300 synthetic busy 608x752 frames per crf (how DEFAULT_CRF was chosen)

Per-step time is the mean after the first step (the first is reported apart: it includes
one-off work such as text encoding, allocator warm-up and cuDNN autotuning). Peak memory is
`torch.cuda.max_memory_allocated` per stage on CUDA (all models resident, as in the engine),
and on the CPU the peak RSS of a child process that runs just that stage (weights included).

    python benchmarks/bench_pipeline.py --device cpu --steps 2
    python benchmarks/bench_pipeline.py --device cuda --steps 5 --cutouts 32 64 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

STAGES = ("stylegan", "scare", "nightmare", "video")
#: For one H100-class GPU (SPEC §2 and the product's promises).
TARGETS = {"spooky_s": 10.0, "nightmare_s": 60.0, "peak_gb": 8.0}
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
PROMPT = "dracula pale fangs"
GB = 1024**3


# --- models at the real sizes, random weights -------------------------------------------------


def build_models(device: torch.device, need: set[str], size: tuple[int, int]) -> Any:
    """The engine's `Models` with random real-size networks (unused ones are left as None)."""
    from engine.models.clip import ClipModel, build_clip_model
    from engine.models.factory import Models
    from engine.models.stylegan2 import StyleGAN2Generator
    from engine.models.vqgan import build_vqgan

    torch.manual_seed(0)
    stylegan = vqgan = None
    if "stylegan" in need:
        stylegan = StyleGAN2Generator(1024)
        stylegan.set_latent_avg(stylegan.mean_latent(n=4096))
        stylegan = stylegan.to(device).eval().requires_grad_(False)
    if need & {"scare", "nightmare"}:
        vqgan = build_vqgan(VQGAN_F16_16384).to(device).eval().requires_grad_(False)
        vqgan.refresh_codebook_range()
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


# --- timing -----------------------------------------------------------------------------------


class StepClock:
    """Progress callback that timestamps every step (after the device has finished it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
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
        self._sync()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict[str, float]:
        times = np.diff([self.start, *self.stamps])
        cpu = np.diff([self.cpu_start, *self.cpu_stamps])
        rest = slice(1, None) if len(times) > 1 else slice(None)
        return {
            "steps": len(times),
            "first_s": float(times[0]),
            "step_s": float(np.mean(times[rest])),
            "cpu_step_s": float(np.mean(cpu[rest])),
        }


def measure(device: torch.device, run: Callable[[StepClock], None]) -> dict[str, float]:
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    clock.begin()
    run(clock)
    end = time.perf_counter()
    out = clock.summary()
    out["finish_s"] = end - clock.stamps[-1]  # after the last step (e.g. ffmpeg flush, budget fit)
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / GB
        out["reserved_gb"] = torch.cuda.max_memory_reserved(device) / GB
    return out


def bench_stylegan(models: Any, steps: int) -> dict[str, float]:
    from engine.pipeline.styleclip import StyleClipParams, optimise_latent

    params = StyleClipParams(steps=steps, still_every=0, seed=0)
    return measure(
        models.device, lambda clock: optimise_latent(models.stylegan, models.clip, PROMPT, params, clock)
    )


def bench_scare(models: Any, steps: int, cutouts: int, size: tuple[int, int]) -> dict[str, float]:
    from engine.pipeline.prompts import parse_prompts
    from engine.pipeline.vqgan_clip import VqganClipParams, scare

    g = torch.Generator().manual_seed(0)
    face = F.interpolate(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, size=(1024, 1024), mode="bicubic")
    face = face.clamp(-1, 1).to(models.device)  # a stage-1 sized image
    params = VqganClipParams(steps=steps, cutouts=cutouts, still_every=5, seed=0, size=size)
    prompts = parse_prompts(PROMPT)
    return measure(
        models.device, lambda clock: scare(models.vqgan, models.clip, face, prompts, params, clock)
    )


def bench_nightmare(models: Any, frames: int, cutouts: int, size: tuple[int, int]) -> dict[str, float]:
    from engine.pipeline.render import NightmareJob, Renderer
    from spooky.config import PipelineConfig

    renderer = Renderer(models, PipelineConfig(cutouts=cutouts, size=size))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="spooky-bench-") as tmp:
        out = Path(tmp) / "nightmare.mp4"
        job = NightmareJob(image, frames=frames, seed=0, size=size)
        result = measure(models.device, lambda clock: renderer.nightmare(job, out, clock))
        result["mp4_bytes"] = out.stat().st_size
    return result


# --- x264 size of synthetic busy frames (the DEFAULT_CRF measurement) ---------------------------


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


# --- running ----------------------------------------------------------------------------------


def run_items(args: argparse.Namespace, device: torch.device, items: list[tuple[str, int]]) -> list[dict]:
    """Run (stage, cutouts) items in this process with every needed model loaded once."""
    size = tuple(args.size)
    t0 = time.perf_counter()
    models = build_models(device, {s for s, _ in items}, size)  # type: ignore[arg-type]
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        weights_gb = torch.cuda.memory_allocated(device) / GB
    rows = []
    for stage, cutouts in items:
        print(f"  {stage} (cutouts {cutouts or '-'}) ...", file=sys.stderr, flush=True)
        if stage == "stylegan":
            row = bench_stylegan(models, args.steps)
        elif stage == "scare":
            row = bench_scare(models, args.steps, cutouts, size)  # type: ignore[arg-type]
        else:
            row = bench_nightmare(models, args.steps, cutouts, size)  # type: ignore[arg-type]
        row.update(stage=stage, cutouts=cutouts, build_s=build_s)
        if device.type == "cuda":
            row["weights_gb"] = weights_gb
        rows.append(row)
    return rows


def run_isolated(args: argparse.Namespace, items: list[tuple[str, int]]) -> list[dict]:
    """One child process per item, so each stage's peak RSS is its own (ru_maxrss never falls)."""
    rows = []
    for stage, cutouts in items:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        cmd = [
            sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
            "--size", *map(str, args.size), "--child", stage, "--cutouts", str(cutouts), "--json", str(out),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        rows.extend(json.loads(out.read_text())["stages"])
        out.unlink()
    return rows


def project(rows: list[dict], steps: int = 40, scare_steps: int = 10, frames: int = 300) -> list[dict]:
    """Whole-job times from per-step times: a /spooky (40 + 10 steps) and a 300-frame nightmare."""
    by = {(r["stage"], r["cutouts"]): r for r in rows}
    out = []
    for (stage, cutouts), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if stage == "scare" and ("stylegan", 0) in by:
            s = by[("stylegan", 0)]
            spooky = s["first_s"] + (steps - 1) * s["step_s"] + r["first_s"] + (scare_steps - 1) * r["step_s"]
            peak = max(s.get("peak_gb", s.get("rss_gb", 0)), r.get("peak_gb", r.get("rss_gb", 0)))
            out.append({"job": f"/spooky {steps}+{scare_steps} steps", "cutouts": cutouts, "s": spooky,
                        "target_s": TARGETS["spooky_s"], "peak_gb": peak})  # fmt: skip
        if stage == "nightmare":
            total = r["first_s"] + (frames - 1) * r["step_s"] + r["finish_s"]
            peak = r.get("peak_gb", r.get("rss_gb", 0))
            out.append({"job": f"nightmare {frames} frames", "cutouts": cutouts, "s": total,
                        "target_s": TARGETS["nightmare_s"], "peak_gb": peak})  # fmt: skip
    return out


def print_report(rows: list[dict], projections: list[dict], video: list[dict], device: str) -> None:
    mem = "peak GPU GB" if device == "cuda" else "peak RSS GB"
    how = "max_memory_allocated" if device == "cuda" else "ru_maxrss of a child running only that stage"
    if rows:
        print(f"\nper stage on {device} ({mem}: {how})")
        head = ("stage", "cutouts", "steps", "first s", "per step s", "cpu s/step", mem, "build s")
        print("{:<10} {:>7} {:>5} {:>8} {:>10} {:>10} {:>12} {:>8}".format(*head))
    for r in rows:
        peak = r.get("peak_gb", r.get("rss_gb", float("nan")))
        print(f"{r['stage']:<10} {r['cutouts'] or '-':>7} {r['steps']:>5} {r['first_s']:>8.2f} "
              f"{r['step_s']:>10.3f} {r.get('cpu_step_s', float('nan')):>10.3f} {peak:>12.2f} "
              f"{r['build_s']:>8.1f}")  # fmt: skip
    if projections:
        print("\nprojected whole jobs (targets are for one H100-class GPU)")
        print(f"{'job':<24} {'cutouts':>7} {'seconds':>9} {'target':>8} {mem:>12} {'target':>8}")
        for p in projections:
            print(f"{p['job']:<24} {p['cutouts']:>7} {p['s']:>9.1f} {'≤' + str(int(p['target_s'])):>8} "
                  f"{p['peak_gb']:>12.2f} {'≤' + str(int(TARGETS['peak_gb'])):>8}")  # fmt: skip
    if video:
        print("\nx264 size of synthetic busy 608x752 frames (budget 10 MiB)")
        print(f"{'drift rad/frame':>15} {'crf':>4} {'frames':>6} {'MiB':>7} {'encode s':>9}")
        for v in video:
            print(f"{v['drift']:>15} {v['crf']:>4} {v['frames']:>6} {v['mib']:>7.2f} {v['encode_s']:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--steps", type=int, default=3, help="steps (frames for nightmare) per stage")
    ap.add_argument("--stages", nargs="+", default=list(STAGES[:3]), choices=STAGES)
    ap.add_argument("--cutouts", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--size", nargs=2, type=int, default=[608, 752], metavar=("W", "H"))
    ap.add_argument("--video-frames", type=int, default=300)
    ap.add_argument("--crf", nargs="+", type=int, default=[20, 22, 24])
    ap.add_argument("--drift", nargs="+", type=float, default=[0.02, 0.1, 0.3])
    ap.add_argument("--no-isolate", action="store_true", help="on CPU, run all stages in this process")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", choices=STAGES[:3], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    if args.child:  # one stage in a child process: report its own peak RSS
        rows = run_items(args, device, [(args.child, args.cutouts[0] if args.child != "stylegan" else 0)])
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux
        for r in rows:
            r["rss_gb"] = rss_gb
        args.json.write_text(json.dumps({"stages": rows}))
        return 0

    items: list[tuple[str, int]] = []
    if "stylegan" in args.stages:
        items.append(("stylegan", 0))
    for stage in ("scare", "nightmare"):
        if stage in args.stages:
            items += [(stage, c) for c in args.cutouts]
    print(f"benchmark on {device} ({torch.get_num_threads()} threads), {args.steps} steps per stage, "
          f"canvas {args.size[0]}x{args.size[1]}", file=sys.stderr)  # fmt: skip
    if device.type == "cpu" and not args.no_isolate:
        rows = run_isolated(args, items)
    else:
        rows = run_items(args, device, items) if items else []
    if device.type == "cpu" and args.no_isolate:
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
        for r in rows:
            r["rss_gb"] = rss_gb  # the process's peak so far, not this stage's alone
    video = (
        bench_video(args.video_frames, tuple(args.size), args.crf, args.drift)
        if "video" in args.stages
        else []
    )
    projections = project(rows)
    print_report(rows, projections, video, device.type)
    if args.json:
        info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "steps": args.steps, "size": args.size}  # fmt: skip
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
        payload = {
            "info": info,
            "stages": rows,
            "projections": projections,
            "video": video,
            "targets": TARGETS,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

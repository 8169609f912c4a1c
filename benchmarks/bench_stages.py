"""Per-step time and peak memory of each pipeline stage at the real sizes, on random weights.

The networks are random-weight copies of the real ones (benchmarks/pipeline_helpers.py). Stages:

  stylegan   stage 1 steps (StyleGAN2 1024 synthesis + CLIP ViT-B/32, Adam on W+)
  scare      stage 2 steps at the canvas size (608x752 by default), once per --cutouts value
  nightmare  stage 3 frames through the real Renderer: VQGAN+CLIP step + ffmpeg encoding

With `--reference` (CPU by default), the loops the product re-implements run beside it on the
same networks and sizes, re-created from their published algorithms (benchmarks/reference_loops.py).
The report gives project / reference time per step.

Per-step time is the mean after the first two steps: the first includes one-off work (text
encoding, allocator warm-up, cuDNN autotuning), the second runs under FlopCounterMode, which
gives the FLOPs of one step and hence the achieved TFLOP/s. With 4 or more steps the last step of
stages 1 and 2 (which also renders the result) is left out too. Peak memory is
`torch.cuda.max_memory_allocated` per stage on CUDA (all models resident, as in the engine),
and on the CPU the peak RSS of a child process that runs just that stage (weights included).

    python benchmarks/bench_stages.py --preset tiny --steps 4 --reference
    python benchmarks/bench_stages.py --device cpu --steps 3 --stages scare --cutouts 32 --reference
    python benchmarks/bench_stages.py --device cuda --steps 8 --precision fp32 tf32 bf16 --json bench.json

The other pipeline benchmarks: bench_quality.py (bf16 against fp32), bench_decoder.py and
bench_layout.py (the VQGAN decoder alone), bench_video.py (x264 sizes per crf), bench_cutouts.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pipeline_helpers import GB, PROMPT, build_models, device_of, face_image, measure, parser
from reference_loops import bench_ref_styleclip, bench_ref_vqgan_clip

STAGES = ("stylegan", "scare", "nightmare")
#: For one H100-class GPU (issue 13: a /spooky in 3 s, a 300-frame nightmare in real time, 8 GB).
TARGETS = {"spooky_s": 3.0, "nightmare_s": 10.0, "peak_gb": 8.0}
#: Dense peak of one H100 SXM by precision (TFLOP/s, no sparsity), for the ideal-time projection.
H100_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0}


def bench_stylegan(models: Any, steps: int, precision: str) -> dict[str, float]:
    from engine.pipeline.styleclip import StyleClipParams, optimise_latent

    params = StyleClipParams(steps=steps, still_every=5, seed=0, precision=precision)  # type: ignore[arg-type]
    return measure(  # its last step also renders the final image from the final latent
        models.device,
        lambda clock: optimise_latent(models.stylegan, models.clip, PROMPT, params, clock),
        drop_last=True,
    )


def bench_scare(
    models: Any,
    steps: int,
    cutouts: int,
    size: tuple[int, int],
    precision: str,
    checkpointing: Any,
    fast: dict[str, Any],
) -> dict[str, float]:
    from engine.pipeline.optimisation import VqganClipParams
    from engine.pipeline.prompts import parse_prompts
    from engine.pipeline.render import Renderer
    from engine.pipeline.vqgan_clip import scare
    from spooky.config import PipelineConfig

    face = face_image(models)
    config = PipelineConfig(cutouts=cutouts, size=size, decoder_checkpointing=checkpointing, **fast)
    # What the engine would pick; the Renderer also puts the VQGAN in its layout.
    checkpoint = Renderer(models, config).decoder_checkpointing(size)
    params = VqganClipParams(
        steps=steps, cutouts=cutouts, still_every=5, seed=0, size=size, precision=precision,  # type: ignore[arg-type]
        checkpoint=checkpoint, compile=config.compile,
    )  # fmt: skip
    prompts = parse_prompts(PROMPT)
    row = measure(
        models.device,
        lambda clock: scare(models.vqgan, models.clip, face, prompts, params, clock),
        drop_last=True,
    )
    row["checkpoint"] = checkpoint
    return row


def bench_nightmare(
    models: Any,
    frames: int,
    cutouts: int,
    size: tuple[int, int],
    precision: str,
    checkpointing: Any,
    fast: dict[str, Any],
) -> dict[str, float]:
    from engine.pipeline.render import Renderer
    from engine.service.spec import nightmare_spec
    from spooky.config import PipelineConfig

    config = PipelineConfig(
        cutouts=cutouts, size=size, precision=precision, decoder_checkpointing=checkpointing, **fast
    )
    renderer = Renderer(models, config)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="spooky-bench-") as tmp:
        out = Path(tmp) / "nightmare.mp4"
        job = nightmare_spec(config, None, prompt=config.nightmare_prompt, frames=frames, seed=0, size=size)
        result = measure(models.device, lambda clock: renderer.nightmare(job, image, out, clock))
        result["mp4_bytes"] = out.stat().st_size
        result["checkpoint"] = renderer.decoder_checkpointing(size)
    return result


# --- running ----------------------------------------------------------------------------------


def run_items(args: argparse.Namespace, device: torch.device, items: list[tuple[str, int]]) -> list[dict]:
    """Run (stage, cutouts) items in this process with every needed model loaded once."""
    size = tuple(args.size)
    t0 = time.perf_counter()
    # Which networks to build: "scare@bf16" needs the VQGAN, "ref_styleclip" the generator.
    aliases = {"styleclip": "stylegan", "vqgan_clip": "scare"}
    names = {s.partition("@")[0].removeprefix("ref_").removesuffix("_frozen") for s, _ in items}
    need = {aliases.get(n, n) for n in names}
    models = build_models(device, need, size, args.preset)  # type: ignore[arg-type]
    if args.preset == "tiny":
        size = models.default_size
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        weights_gb = torch.cuda.memory_allocated(device) / GB
    rows = []
    for stage, cutouts in items:
        print(f"  {stage} (cutouts {cutouts or '-'}) ...", file=sys.stderr, flush=True)
        stage, _, precision = stage.partition("@")
        ckpt = args.checkpointing
        # channels_last and torch.compile as the engine would set them (`[pipeline]`).
        fast = {"channels_last": args.channels_last, "compile": args.compile}
        if stage == "stylegan":
            row = bench_stylegan(models, args.steps, precision)
        elif stage == "scare":
            row = bench_scare(models, args.steps, cutouts, size, precision, ckpt, fast)  # type: ignore[arg-type]
        elif stage == "nightmare":
            row = bench_nightmare(models, args.steps, cutouts, size, precision, ckpt, fast)  # type: ignore[arg-type]
        elif stage in ("ref_styleclip", "ref_styleclip_frozen"):
            row = bench_ref_styleclip(models, args.steps, frozen=stage.endswith("frozen"))
        else:
            row = bench_ref_vqgan_clip(models, args.steps, cutouts, size)  # type: ignore[arg-type]
        row.update(stage=stage, precision=precision or "fp32", cutouts=cutouts, build_s=build_s, **fast)
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
            "--preset", args.preset, "--checkpointing", str(args.checkpointing),
            "--channels-last", str(args.channels_last), *(["--compile"] if args.compile else []),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        rows.extend(json.loads(out.read_text())["stages"])
        out.unlink()
    return rows


def project(rows: list[dict], steps: int = 40, scare_steps: int = 10, frames: int = 300) -> list[dict]:
    """Whole-job times from per-step times (a /spooky of 40 + 10 steps, a 300-frame nightmare), and
    from the FLOP counts the ideal times on one H100-class GPU at its dense peak per precision."""
    by = {(r["stage"], r["precision"], r["cutouts"]): r for r in rows}
    out = []
    for (stage, precision, cutouts), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        s = by.get(("stylegan", precision, 0))
        peak_of = lambda x: x.get("peak_gb", x.get("rss_gb", 0))  # noqa: E731
        if stage == "scare" and s is not None:
            spooky = s["first_s"] + (steps - 1) * s["step_s"] + r["first_s"] + (scare_steps - 1) * r["step_s"]
            ideal = (steps * s["gflop_step"] + scare_steps * r["gflop_step"]) / (H100_TFLOPS[precision] * 1e3)
            out.append({"job": f"/spooky {steps}+{scare_steps} steps", "precision": precision,
                        "cutouts": cutouts,
                        "s": spooky, "h100_ideal_s": ideal, "target_s": TARGETS["spooky_s"],
                        "peak_gb": max(peak_of(s), peak_of(r))})  # fmt: skip
        if stage == "nightmare":
            total = r["first_s"] + (frames - 1) * r["step_s"] + r["finish_s"]
            ideal = frames * r["gflop_step"] / (H100_TFLOPS[precision] * 1e3)
            out.append({"job": f"nightmare {frames} frames", "precision": precision, "cutouts": cutouts,
                        "s": total, "h100_ideal_s": ideal, "target_s": TARGETS["nightmare_s"],
                        "peak_gb": peak_of(r)})  # fmt: skip
    return out


def ratios(rows: list[dict]) -> list[dict]:
    """Project step / reference step, for the stages that have a re-created reference loop."""
    by = {
        (r["stage"], r["cutouts"]): r
        for r in rows
        if r["precision"] == "fp32" or r["stage"].startswith("ref_")
    }
    pairs = [("stylegan", "ref_styleclip"), ("stylegan", "ref_styleclip_frozen"), ("scare", "ref_vqgan_clip")]
    out = []
    for ours, ref in pairs:
        for (stage, cutouts), r in by.items():
            other = by.get((ref, cutouts))
            if stage == ours and other is not None:
                peak = r.get("rss_gb", r.get("peak_gb"))
                ref_peak = other.get("rss_gb", other.get("peak_gb"))
                out.append({"project": ours, "reference": ref, "cutouts": cutouts,
                            "time_ratio": r["step_s"] / other["step_s"],
                            "cpu_time_ratio": r["cpu_step_s"] / other["cpu_step_s"],
                            "peak_ratio": peak / ref_peak if peak and ref_peak else None,
                            "gflop": r["gflop_step"], "ref_gflop": other["gflop_step"]})  # fmt: skip
    return out


def print_report(rows: list[dict], projections: list[dict], device: str, compared: list[dict]) -> None:
    mem = "peak GPU GB" if device == "cuda" else "peak RSS GB"
    how = "max_memory_allocated" if device == "cuda" else "ru_maxrss of a child running only that stage"
    if rows:
        print(f"\nper stage on {device} ({mem}: {how})")
        head = ("stage", "prec", "cutouts", "ckpt", "steps", "first s", "s/step", "cpu s/step", "fps",
                "GFLOP/step", "TFLOP/s", mem)  # fmt: skip
        print("{:<20} {:>5} {:>7} {:>5} {:>5} {:>8} {:>8} {:>10} {:>7} {:>10} {:>8} {:>12}".format(*head))
    for r in rows:
        peak = r.get("peak_gb", r.get("rss_gb", float("nan")))
        print(f"{r['stage']:<20} {r['precision']:>5} {r['cutouts'] or '-':>7} "
              f"{r.get('checkpoint', '-')!s:>5} {r['steps']:>5} {r['first_s']:>8.2f} {r['step_s']:>8.3f} "
              f"{r.get('cpu_step_s', float('nan')):>10.3f} "
              f"{r['fps']:>7.2f} {r['gflop_step']:>10.1f} {r['tflops']:>8.4f} {peak:>12.2f}")  # fmt: skip
    if compared:
        print("\nproject / reference loop, per step (same networks, sizes and process layout)")
        print(f"{'project':<10} {'reference':<22} {'cutouts':>7} {'time':>6} {'cpu time':>8} {'peak':>6} "
              f"{'GFLOP':>8} {'ref GFLOP':>9}")  # fmt: skip
        for c in compared:
            peak = f"{c['peak_ratio']:.2f}" if c["peak_ratio"] else "-"
            print(f"{c['project']:<10} {c['reference']:<22} {c['cutouts'] or '-':>7} "
                  f"{c['time_ratio']:>6.2f} {c['cpu_time_ratio']:>8.2f} {peak:>6} "
                  f"{c['gflop']:>8.1f} {c['ref_gflop']:>9.1f}")  # fmt: skip
    if projections:
        print("\nprojected whole jobs (targets are for one H100-class GPU; ideal = FLOPs / dense peak)")
        print(f"{'job':<24} {'prec':>5} {'cutouts':>7} {'seconds':>9} {'H100 ideal s':>12} "
              f"{'target':>8} {mem:>12}")  # fmt: skip
        for p in projections:
            print(f"{p['job']:<24} {p['precision']:>5} {p['cutouts']:>7} {p['s']:>9.1f} "
                  f"{p['h100_ideal_s']:>12.2f} "
                  f"{'≤' + str(int(p['target_s'])):>8} {p['peak_gb']:>12.2f}")  # fmt: skip


def _auto_or_bool(text: str) -> bool | str:
    lowered = text.lower()
    if lowered in ("auto", "true", "false"):
        return {"true": True, "false": False}.get(lowered, "auto")
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=3, help="steps (frames for nightmare) per stage")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--cutouts", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--no-isolate", action="store_true", help="on CPU, run all stages in this process")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--preset", choices=["full", "tiny"], default="full", help="tiny: toy models, quick check"
    )
    ap.add_argument("--precision", nargs="+", choices=["fp32", "tf32", "bf16"], default=None,
                    help="default: fp32 on CPU, fp32 tf32 bf16 on CUDA")  # fmt: skip
    ap.add_argument("--checkpointing", type=_auto_or_bool, default="auto", help="auto, true or false")
    ap.add_argument("--reference", action="store_true", help="also run the re-created reference loops")
    ap.add_argument("--channels-last", type=_auto_or_bool, default="auto",
                    help="VQGAN weights in NHWC: auto (CUDA only), true or false")  # fmt: skip
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the decoder and CLIP's image tower (stages 2/3); FLOPs then "
                    "read from an eager row: the counter does not see inside compiled kernels")  # fmt: skip
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = device_of(args)

    if args.child:  # one stage in a child process: report its own peak RSS
        rows = run_items(args, device, [(args.child, args.cutouts[0])])
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux
        for r in rows:
            r["rss_gb"] = rss_gb
        args.json.write_text(json.dumps({"stages": rows}))
        return 0

    precisions = args.precision or (["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32"])
    items: list[tuple[str, int]] = []
    for precision in precisions:
        if "stylegan" in args.stages:
            items.append((f"stylegan@{precision}", 0))
        for stage in ("scare", "nightmare"):
            if stage in args.stages:
                items += [(f"{stage}@{precision}", c) for c in args.cutouts]
    if args.reference:  # alternating with the project's items would be fairer; one each is the budget
        if "stylegan" in args.stages:
            items += [("ref_styleclip", 0), ("ref_styleclip_frozen", 0)]
        if "scare" in args.stages:
            items += [("ref_vqgan_clip", c) for c in args.cutouts]
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
    projections = project([r for r in rows if not r["stage"].startswith("ref_")])
    compared = ratios(rows)
    print_report(rows, projections, device.type, compared)
    if args.json:
        info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "steps": args.steps, "size": args.size}  # fmt: skip
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
        payload = {
            "info": info,
            "stages": rows,
            "projections": projections,
            "reference_ratios": compared,
            "h100_dense_tflops": H100_TFLOPS,
            "targets": TARGETS,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

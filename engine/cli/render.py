"""`spooky render "prompt" --out DIR [--nightmare]`: the whole pipeline from the command line.

Writes the stage stills (`stylegan_0005.png`, `scare_0005.png`, ...), `stylegan.png` and
`spooky.png` (prompt, seed and settings in their PNG metadata) and, with `--nightmare`,
`nightmare.mp4`. `--image PATH` animates that image instead of rendering a face.
torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spooky.errors import InputError, InvalidSizeError
from spooky.styles import STYLES

if TYPE_CHECKING:
    from engine.pipeline.progress import StepReport

TINY_BANNER = (
    "*" * 78 + "\n"
    "*  TINY PRESET: toy-size models with random weights. The images are noise.  *\n"
    "*  It proves the pipeline runs; for real faces use --preset full (weights:  *\n"
    "*  spooky weights fetch).                                                   *\n" + "*" * 78
)

#: Stages whose stills are written to the output folder (the video holds the nightmare's frames).
_STILL_STAGES = ("stylegan", "scare")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a face (and a nightmare video) from a prompt, without Discord",
        description="StyleGAN2+CLIP face, VQGAN+CLIP scare pass and, with --nightmare, the video.",
    )
    p.add_argument(
        "prompt",
        nargs="?",
        help="what the face should look like; with --image, the nightmare's prompt instead",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--nightmare", action="store_true", help="also render the nightmare MP4")
    p.add_argument("--preset", help="models: full (published weights) or tiny (toy random models)")
    p.add_argument("--config", type=Path, help="config.toml (default: built-in settings)")
    p.add_argument("--device", help="auto, cpu or cuda (default: models.device of the config)")
    p.add_argument("--seed", type=int, help="seed to reproduce a result (default: a drawn one, printed)")
    p.add_argument("--steps", type=int, help="StyleGAN2+CLIP steps (default 40)")
    p.add_argument("--scare-steps", type=int, help="VQGAN+CLIP scare steps (default 10; 0 skips)")
    p.add_argument("--scare-prompt", help="prompt of the scare pass ('a:1|b:-0.5'; default: the prompt)")
    p.add_argument(
        "--style",
        choices=sorted(STYLES),
        help="one of the article's monsters: its face prompt (unless a prompt is given) and its scare prompt",
    )
    p.add_argument("--size", help="canvas WxH of stages 2 and 3, e.g. 608x752 (multiples of 16)")
    p.add_argument("--frames", type=int, help="nightmare frames at 30 fps (default 300)")
    p.add_argument("--nightmare-prompt", help="prompt of the video (default: pipeline.nightmare_prompt)")
    p.add_argument("--image", type=Path, help="animate this image instead of rendering a face")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """ "608x752" -> (608, 752); InvalidSizeError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise InvalidSizeError(f"--size {text!r} is not WIDTHxHEIGHT", hint="e.g. --size 608x752")
    return int(m.group(1)), int(m.group(2))


class _Bars:
    """One tqdm bar per stage, plus writing the stills; used as the progress callback."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.bar: Any = None
        self.stage: str | None = None
        self.stills: list[Path] = []

    def __call__(self, p: StepReport) -> None:
        from tqdm import tqdm

        if p.stage != self.stage:
            self.close()
            self.stage = p.stage
            self.bar = tqdm(total=p.total, desc=f"{p.stage:>9}", unit="step", disable=not self.enabled)
        self.bar.update(1)
        if p.loss is not None:
            self.bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        if p.image is not None and p.stage in _STILL_STAGES:
            from engine.pipeline.image_files import save_png
            from engine.pipeline.images import to_pil

            path = save_png(to_pil(p.image, value_range=(0, 1)), self.out / f"{p.stage}_{p.step:04d}.png")
            self.stills.append(path)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    from engine.models.factory import check_preset, load_models
    from engine.pipeline.image_files import load_image, save_png
    from engine.pipeline.render import Renderer
    from engine.service.admission import JobRules, check_job
    from engine.service.spec import nightmare_spec, spooky_spec
    from spooky.config import load_settings

    settings = load_settings(args.config)
    if args.style is not None:
        style = STYLES[args.style]
        if args.prompt is None and args.image is None:
            args.prompt = style.prompt
        if args.scare_prompt is None:
            args.scare_prompt = style.scare_prompt
    if args.preset is not None:
        settings.models.preset = check_preset(args.preset)  # type: ignore[assignment]
    if args.device is not None:
        settings.models.device = args.device
    size = parse_size(args.size) if args.size is not None else None
    if args.image is None and args.prompt is None:
        raise InputError(
            "a prompt is required", hint='e.g. spooky render "dracula pale fangs" --out out/demo'
        )
    wants_video = args.nightmare or args.image is not None
    if args.frames is not None and not wants_video:
        raise InputError("--frames applies to the nightmare video", hint="add --nightmare")
    upload = load_image(args.image) if args.image is not None else None  # bad files fail before loading

    night_prompt = args.nightmare_prompt or settings.pipeline.nightmare_prompt
    if upload is not None and args.prompt is not None:
        night_prompt = args.prompt
    # The engine's own checks, before any model loads: a bad option fails at once.
    rules = JobRules.for_models(settings.models)
    with _as_input_error():
        # One seed for both stages: the video of a face continues from the face's own seed.
        night = nightmare_spec(
            settings.pipeline, prompt=night_prompt, seed=args.seed, frames=args.frames, size=size
        )
        face = None
        if upload is None:
            face = spooky_spec(
                settings.pipeline,
                prompt=args.prompt,
                scare_prompt=args.scare_prompt,
                seed=night.seed,
                steps=args.steps,
                scare_steps=args.scare_steps,
                size=size,
            )
            check_job(face, rules)
    if wants_video:
        check_job(night, rules)  # a bad nightmare prompt fails before stage 1 runs

    if settings.models.preset == "tiny":
        print(TINY_BANNER, file=sys.stderr)
    models = load_models(settings.models)
    print(f"models: {models.description} on {models.device}", file=sys.stderr)
    renderer = Renderer(models, settings.pipeline)
    out: Path = args.out

    out.mkdir(parents=True, exist_ok=True)
    bars = _Bars(out, enabled=not args.no_progress)
    written: list[Path] = []
    try:
        image = upload
        if face is not None:
            result = renderer.spooky(face, bars)
            bars.close()
            meta = _metadata(result.settings, models.preset)
            for name, picture in (("stylegan", result.stylegan_image), ("spooky", result.spooky_image)):
                written.append(save_png(picture, out / f"{name}.png", {**meta, "image": name}))
            print(f"seed: {result.seed}")
            image = result.spooky_image
        if wants_video:
            assert image is not None  # the upload, or the face just made
            video = renderer.nightmare(night, image, out / "nightmare.mp4", bars)
            bars.close()
            written.append(video.video_path)
            print(f"video: {video.frames} frames, {video.bytes} bytes, seed {video.settings['seed']}")
    finally:
        bars.close()
    for path in [*bars.stills, *written]:
        print(path)
    if models.preset == "tiny":
        print("(tiny preset: these images are noise from random toy models)", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _as_input_error() -> Iterator[None]:
    """An option outside the contract's bounds (--steps 5000) as the InputError that names it."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "an option"
        said = err["msg"].removeprefix("Input should be").strip()
        raise InputError(f"{flag} is {err.get('input')!r}; it should be {said}") from None


def _metadata(settings: dict[str, Any], preset: str) -> dict[str, str]:
    return {
        "prompt": str(settings["prompt"]),
        "seed": str(settings["seed"]),
        "settings": json.dumps(settings, sort_keys=True),
        "preset": preset,
        "software": "SpookyGAN",
    }

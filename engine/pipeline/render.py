"""The orchestrator the engine service and the CLI both call: one face, or one nightmare video.

`Renderer.spooky` runs stage 1 (StyleGAN2+CLIP) then stage 2 (VQGAN+CLIP scare pass);
`Renderer.nightmare` runs stage 3 and streams its frames straight into ffmpeg. A job is a resolved
`JobSpec` (`engine.service.spec` applies the defaults and draws the seed): the renderer runs what
it says and adds no defaults of its own, only the engine's tuning (learning rates, cutouts, fps)
from the pipeline config. Every result carries the settings that reproduce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from engine.models.factory import Models
from engine.pipeline.canvas import check_canvas, is_canvas, snap_size
from engine.pipeline.images import from_pil, to_pil
from engine.pipeline.layout import apply_layout, use_channels_last
from engine.pipeline.memory import StepMemory, free_bytes, measure_step_memory, use_checkpointing
from engine.pipeline.optimisation import VqganClipParams
from engine.pipeline.precision import Precision, device_precision
from engine.pipeline.progress import ProgressCallback, no_progress
from engine.pipeline.prompts import parse_prompts
from engine.pipeline.styleclip import StyleClipParams, optimise_latent
from engine.pipeline.video import DEFAULT_CRF, BackgroundWriter, VideoWriter
from engine.pipeline.video_budget import fit_to_budget
from engine.pipeline.vqgan_clip import nightmare_frames, scare
from spooky.config import PipelineConfig
from spooky.contract import JobSpec, NightmareSpec, SpookySpec
from spooky.errors import ConfigError, InvalidImageError, InvalidSizeError

#: An uploaded image keeps its aspect ratio for the video, within these bounds (w / h).
_ASPECT_RANGE = (0.5, 2.0)


@dataclass
class SpookyResult:
    stylegan_image: Image.Image | None  # stage 1, at the generator's resolution (None: from a photo)
    spooky_image: Image.Image  # stage 2, at the canvas size
    seed: int
    settings: dict[str, Any]  # everything needed to reproduce the result


@dataclass
class NightmareResult:
    video_path: Path
    frames: int
    bytes: int
    last_frame: Image.Image
    settings: dict[str, Any] = field(default_factory=dict)


class Renderer:
    """Runs job specs on loaded models with the pipeline's tuning; holds no per-job state."""

    def __init__(self, models: Models, pipeline: PipelineConfig) -> None:
        if pipeline.cuda_graphs and models.device.type != "cuda":
            raise ConfigError(
                f"[pipeline] cuda_graphs = true needs a CUDA device, but the models are on {models.device}",
                hint="set [pipeline] cuda_graphs = false (stages 2/3 run the same steps without it)",
            )
        self.models = models
        self.pipeline = pipeline
        self.precision: Precision = device_precision(pipeline.precision, models.device)
        self._free_bytes: int | None = None
        self._step_memory: StepMemory | None = None
        self.channels_last = use_channels_last(pipeline.channels_last)
        apply_layout(models.vqgan, self.channels_last)
        if pipeline.decoder_checkpointing == "auto":
            # Read once, right after the models loaded: later readings would count a job's tensors.
            self._free_bytes = free_bytes(models.device)
            self._step_memory = measure_step_memory(models.vqgan, models.clip, self.precision)
        try:
            check_canvas(self.default_size, self.factor)
        except InvalidSizeError as e:
            raise ConfigError(f"[pipeline] size: {e}") from e

    def decoder_checkpointing(self, size: tuple[int, int]) -> bool:
        """Whether stages 2/3 on a `size` canvas checkpoint the decoder (the setting, or `auto`'s call)."""
        setting = self.pipeline.decoder_checkpointing
        if isinstance(setting, bool):
            return setting
        assert self._step_memory is not None  # measured in __init__ for "auto"
        need = self._step_memory.plain_bytes(size, self.pipeline.cutouts)
        return use_checkpointing(setting, need, self._free_bytes)

    @property
    def factor(self) -> int:
        """Canvas sides must be multiples of this (the VQGAN's downsampling factor)."""
        return int(self.models.vqgan.factor)

    @property
    def default_size(self) -> tuple[int, int]:
        """The stage-2/3 canvas: pipeline.size when the config sets it (or for the full preset),
        otherwise the preset's own canvas (the tiny preset's toy models work at 64x64)."""
        if "size" in self.pipeline.model_fields_set or self.models.preset == "full":
            return tuple(self.pipeline.size)  # type: ignore[return-value]
        return self.models.default_size

    # --- stages 1 + 2 ---------------------------------------------------------------------------

    def spooky(
        self, job: SpookySpec, callback: ProgressCallback = no_progress, photo: Image.Image | None = None
    ) -> SpookyResult:
        """Stage 1 then stage 2; the callback sees "stylegan" progress, then "scare" progress.

        A job that starts from a member's picture (`job.from_image`) gets it as `photo`: stage 1 does
        not run, and stage 2 starts from the photo fitted to the canvas (cropped to its aspect ratio
        where it differs, so the face is not distorted).
        """
        _trusted(job, self.factor)
        assert (photo is not None) == job.from_image, "a photo job needs its photo, and only it"
        p = self.pipeline
        seed = job.seed
        size = tuple(job.size) if job.size is not None else self.default_size
        still_every = job.still_every
        scare_prompt = job.scare_prompt
        face = StyleClipParams(
            steps=job.steps,
            lr=p.stylegan_lr,
            l2_lambda=p.l2_lambda,
            still_every=still_every,
            seed=seed,
            precision=self.precision,
        )
        scare_params = VqganClipParams(
            steps=job.scare_steps,
            lr=p.scare_lr,
            cutouts=p.cutouts,
            still_every=still_every,
            seed=seed,
            size=size,  # type: ignore[arg-type]
            checkpoint=self.decoder_checkpointing(size),  # type: ignore[arg-type]
            precision=self.precision,
            compile=p.compile,
        )
        m = self.models
        if photo is None:
            stage1 = optimise_latent(m.stylegan, m.clip, job.prompt.strip(), face, callback)
            # Stage 2 stretches the square face to the canvas, as the original did.
            start: Any = stage1.image
            face_image: Image.Image | None = to_pil(stage1.image)
        else:
            start = ImageOps.fit(photo.convert("RGB"), size, Image.Resampling.LANCZOS)
            face_image = None
        scared = scare(m.vqgan, m.clip, start, parse_prompts(scare_prompt), scare_params, callback)
        settings = {
            "kind": "spooky",
            "start": "face" if photo is None else "image",
            "prompt": job.prompt.strip(),
            "scare_prompt": scare_prompt.strip(),
            "seed": seed,
            "steps": face.steps if photo is None else 0,
            "lr": face.lr,
            "l2_lambda": face.l2_lambda,
            "truncation": face.truncation,
            "scare_steps": scare_params.steps,
            "scare_lr": scare_params.lr,
            "cutouts": scare_params.cutouts,
            "cut_pow": scare_params.cut_pow,
            "size": list(size),
            "still_every": still_every,
            "precision": self.precision,
            "preset": self.models.preset,
            "models": self.models.description,
        }
        return SpookyResult(face_image, to_pil(scared), seed, settings)

    # --- stage 3 ----------------------------------------------------------------------------------

    def nightmare_size(self, image: Image.Image, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The video canvas: `size` if given; the image's own size when it is already a valid canvas
        (a stage-2 result); else the default canvas's area at the image's aspect ratio."""
        if size is not None:
            return (int(size[0]), int(size[1]))
        w, h = image.size
        if is_canvas((w, h), self.factor):
            return (w, h)
        dw, dh = self.default_size
        aspect = min(max(w / h, _ASPECT_RANGE[0]), _ASPECT_RANGE[1])
        target = (round(math.sqrt(dw * dh * aspect)), round(math.sqrt(dw * dh / aspect)))
        return snap_size(target, self.factor)

    def nightmare(
        self,
        job: NightmareSpec,
        image: Image.Image,
        out_path: Path,
        callback: ProgressCallback = no_progress,
    ) -> NightmareResult:
        """Stage 3 on `image`: one VQGAN+CLIP step per frame, piped into ffmpeg, then fitted to the
        byte budget. JobCancelled from the callback stops ffmpeg and removes the partial file.
        """
        _trusted(job, self.factor)
        if not isinstance(image, Image.Image):
            raise InvalidImageError("a nightmare needs an image to animate", hint="run /spooky first")
        p = self.pipeline
        seed = job.seed
        size = self.nightmare_size(image, job.size)
        max_bytes = job.max_bytes
        params = VqganClipParams(
            steps=job.frames,
            lr=p.nightmare_lr,
            cutouts=p.cutouts,
            still_every=job.still_every,
            seed=seed,
            size=size,
            checkpoint=self.decoder_checkpointing(size),
            precision=self.precision,
            compile=p.compile,
            cuda_graphs=p.cuda_graphs,
        )
        # Crop only what falls outside the allowed aspect range, so the face is not distorted.
        fitted = ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)
        start = from_pil(fitted, self.models.device)
        out_path = Path(out_path)
        written = 0
        last = None
        with (
            VideoWriter(out_path, size, fps=p.fps, crf=DEFAULT_CRF) as writer,
            BackgroundWriter(writer) as background,  # frame n encodes while frame n+1 computes
        ):
            stream = nightmare_frames(
                self.models.vqgan, self.models.clip, start, parse_prompts(job.prompt), params, callback
            )
            for frame in stream:
                background.write(frame)
                written += 1
                last = frame
        fit_to_budget(out_path, max_bytes)
        assert last is not None  # frames >= 1 is validated
        settings = {
            "kind": "nightmare",
            "prompt": job.prompt.strip(),
            "seed": seed,
            "frames": written,
            "lr": params.lr,
            "cutouts": params.cutouts,
            "cut_pow": params.cut_pow,
            "size": list(size),
            "fps": p.fps,
            "max_bytes": max_bytes,
            "crf": DEFAULT_CRF,
            "precision": self.precision,
            "preset": self.models.preset,
            "models": self.models.description,
        }
        return NightmareResult(
            video_path=out_path,
            frames=written,
            bytes=out_path.stat().st_size,
            last_frame=Image.fromarray(np.asarray(last)),
            settings=settings,
        )


def _trusted(job: JobSpec, factor: int) -> None:
    """A spec reaches the renderer only after the submit's checks (engine.service.admission):
    its bounds are the contract's, and its canvas suits this VQGAN."""
    assert job.size is None or is_canvas(job.size, factor), job.size

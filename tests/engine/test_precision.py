"""Precision settings: what each means per device, and bf16 quality against fp32 on the CPU.

Tolerances, with room over what the tiny preset gives (docs/operators.md): a bf16 frame of the same
latent is within 40 dB PSNR of fp32 and a step's loss within 0.005 (losses are ~1.0). At stage 2's
lr 0.1 the two runs flip different codes after a few steps and then diverge as two seeds would,
so the trajectory is compared at the nightmare's lr 0.01, and stage 2 on its first step.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline.optimisation import VqganClipParams
from engine.pipeline.precision import networks, resolve_precision, tf32_allowed
from engine.pipeline.progress import StepReport
from engine.pipeline.prompts import parse_prompts
from engine.pipeline.styleclip import StyleClipParams, optimise_latent
from engine.pipeline.vqgan_clip import nightmare_frames, scare
from spooky.config import ModelsConfig

PROMPT = "a scary clown"
MIN_PSNR_DB = 40.0
MAX_LOSS_DELTA = 0.005


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


@pytest.fixture(scope="module")
def face(models: Models) -> torch.Tensor:
    return optimise_latent(models.stylegan, models.clip, PROMPT, StyleClipParams(steps=4, seed=3)).image


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) / 255).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def psnr_pm1(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two images in [-1, 1] (peak 2)."""
    mse = ((a.double() - b.double()) / 2).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.mark.parametrize(
    ("setting", "device", "capability", "expected"),
    [
        ("auto", "cpu", None, "fp32"),
        ("auto", "cuda", (8, 0), "bf16"),
        ("auto", "cuda", (9, 0), "bf16"),
        ("auto", "cuda", (7, 5), "fp32"),  # Turing: no bf16 tensor cores, no TF32
        ("tf32", "cpu", None, "fp32"),  # TF32 is a CUDA mode
        ("tf32", "cuda", (8, 6), "tf32"),
        ("bf16", "cpu", None, "bf16"),  # forced: honoured (it is how quality is proven here)
        ("fp32", "cuda", (9, 0), "fp32"),
    ],
)
def test_resolve_precision(
    setting: str, device: str, capability: tuple[int, int] | None, expected: str
) -> None:
    assert resolve_precision(setting, device, capability) == expected  # type: ignore[arg-type]


def test_tf32_is_allowed_inside_and_restored_after() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with tf32_allowed("tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        with tf32_allowed("fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_bf16_runs_the_networks_in_bf16_and_fp32_does_not(models: Models) -> None:
    x = torch.zeros(1, 3, models.clip.image_size, models.clip.image_size)
    with networks("bf16", torch.device("cpu")):
        assert models.clip.encode_image(x).dtype == torch.bfloat16
    with networks("fp32", torch.device("cpu")):
        assert models.clip.encode_image(x).dtype == torch.float32


def test_stage1_bf16_stays_close_to_fp32(models: Models) -> None:
    runs = {
        p: optimise_latent(
            models.stylegan, models.clip, PROMPT, StyleClipParams(steps=8, seed=3, precision=p)
        )
        for p in ("fp32", "bf16")
    }
    a, b = runs["fp32"], runs["bf16"]
    assert a.latent.dtype == b.latent.dtype == torch.float32 and b.image.dtype == torch.float32
    assert not torch.equal(a.image, b.image)  # bf16 really ran
    assert psnr_pm1(a.image, b.image) >= MIN_PSNR_DB - 5  # 8 steps let the two W+ latents drift apart
    assert max(abs(x - y) for x, y in zip(a.losses, b.losses, strict=True)) <= MAX_LOSS_DELTA


def test_nightmare_bf16_frames_and_losses_stay_close_to_fp32(models: Models, face: torch.Tensor) -> None:
    out = {}
    for p in ("fp32", "bf16"):
        losses: list[float] = []
        params = VqganClipParams(
            steps=6, lr=0.01, cutouts=8, seed=0, size=(64, 64), still_every=1, precision=p
        )  # type: ignore[arg-type]
        frames = list(
            nightmare_frames(
                models.vqgan,
                models.clip,
                face,
                parse_prompts("nightmare"),
                params,
                lambda e, losses=losses: losses.append(e.loss),
            )
        )
        out[p] = (frames, losses)
    (fa, la), (fb, lb) = out["fp32"], out["bf16"]
    assert any(not torch.equal(x, y) for x, y in zip(fa, fb, strict=True))  # bf16 really ran
    assert min(psnr_uint8(x, y) for x, y in zip(fa, fb, strict=True)) >= MIN_PSNR_DB
    assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= MAX_LOSS_DELTA


def test_scare_first_step_bf16_close_to_fp32(models: Models, face: torch.Tensor) -> None:
    """Step 1 works on the same z in both: its image (the still) and its loss must agree."""
    out = {}
    for p in ("fp32", "bf16"):
        events: list[StepReport] = []
        params = VqganClipParams(steps=2, cutouts=8, seed=0, size=(64, 64), still_every=1, precision=p)  # type: ignore[arg-type]
        scare(models.vqgan, models.clip, face, parse_prompts(PROMPT), params, events.append)
        out[p] = events[0]
    a, b = out["fp32"], out["bf16"]
    assert a.image is not None and b.image is not None and b.image.dtype == torch.float32
    assert not torch.equal(a.image, b.image)
    assert psnr_pm1(a.image * 2 - 1, b.image * 2 - 1) >= MIN_PSNR_DB
    assert a.loss is not None and b.loss is not None and abs(a.loss - b.loss) <= MAX_LOSS_DELTA

"""The three optimisation stages, run for real on the tiny preset (CPU, random toy weights)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from PIL import Image

from engine.models.factory import Models, load_models
from engine.models.vqgan import build_vqgan
from engine.pipeline.canvas import nearest_valid_sizes
from engine.pipeline.decode import decode, upsample_conv
from engine.pipeline.progress import StepReport
from engine.pipeline.prompts import WeightedPrompt, parse_prompts
from engine.pipeline.styleclip import StyleClipParams, clip_score, optimise_latent, start_latent
from engine.pipeline.tensors import straight_through, to_frame, to_still
from engine.pipeline.vqgan_clip import (
    VqganClipParams,
    nightmare_frames,
    prepare_image,
    scare,
)
from spooky.config import ModelsConfig
from spooky.errors import EmptyPromptError, InvalidSizeError, JobCancelled

PROMPT = "a scary clown"


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny"))


@pytest.fixture(scope="module")
def face(models: Models) -> torch.Tensor:
    """A stage-1 image to feed stages 2 and 3."""
    return optimise_latent(models.stylegan, models.clip, PROMPT, StyleClipParams(steps=4, seed=3)).image


class Recorder:
    """A progress callback that keeps every event and can cancel at a given step."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.events: list[StepReport] = []
        self.cancel_at = cancel_at

    def __call__(self, progress: StepReport) -> None:
        self.events.append(progress)
        if progress.step == self.cancel_at:
            raise JobCancelled()

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.events]

    @property
    def still_steps(self) -> list[int]:
        return [p.step for p in self.events if p.image is not None]


class CallCounter:
    """Counts forward calls of a module (a real hook, not a fake): one per synthesis or decode.

    VQGAN decodes are counted at the decoder's last convolution (the pipeline walks the decoder
    block by block, never calling its forward), with `checkpoint=False`: checkpointed decoding
    runs the blocks again in the backward pass.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def counter() -> Iterator[list[CallCounter]]:
    made: list[CallCounter] = []
    yield made
    for c in made:
        c.remove()


def _canvas(models: Models) -> tuple[int, int]:
    return models.default_size


def _vqgan_start(models: Models, face: torch.Tensor) -> torch.Tensor:
    """The image stages 2 and 3 start from: the face's VQGAN codes (codebook rows), decoded."""
    vqgan = models.vqgan
    with torch.no_grad():
        x = prepare_image(face, _canvas(models), vqgan.factor)
        return vqgan.decode(vqgan.quantize_codes(vqgan.nearest_codes(vqgan.encode(x)))).clamp(-1, 1)


def assert_same_image(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two uint8 frames from two code paths agree within one grey level."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    diff = (a.int() - b.int()).abs().max().item()
    assert diff <= 1, f"frames differ by up to {diff} grey levels"


# --- stage 1: StyleGAN2 + CLIP -------------------------------------------------------------


def test_stage1_moves_toward_the_prompt(models: Models) -> None:
    gen, clip = models.stylegan, models.clip
    result = optimise_latent(gen, clip, PROMPT, StyleClipParams(steps=12, seed=1))
    start_image = gen.synthesis(result.start_latent).clamp(-1, 1)

    assert result.image.shape == (1, 3, gen.size, gen.size)
    assert result.image.min() >= -1 and result.image.max() <= 1
    assert not torch.allclose(result.latent, result.start_latent)  # the optimiser moved W+
    assert (result.image - start_image).abs().max() > 0.05  # ... and that changed the picture
    before = clip_score(clip, start_image, [PROMPT]).item()
    after = clip_score(clip, result.image, [PROMPT]).item()
    assert after > before + 0.05, (before, after)
    assert len(result.losses) == 12 and result.losses[-1] < result.losses[0]


def test_stage1_same_seed_same_result_and_seeds_change_the_start(models: Models) -> None:
    gen, clip = models.stylegan, models.clip
    params = StyleClipParams(steps=3, seed=7)
    a = optimise_latent(gen, clip, PROMPT, params)
    b = optimise_latent(gen, clip, PROMPT, params)
    assert torch.equal(a.image, b.image) and torch.equal(a.latent, b.latent) and a.losses == b.losses

    mean = start_latent(gen, None, 0.7)
    assert torch.equal(mean, gen.latent_avg.expand(1, gen.num_ws, gen.style_dim))
    s7, s8 = start_latent(gen, 7, 0.7), start_latent(gen, 8, 0.7)
    assert not torch.allclose(s7, s8) and not torch.allclose(s7, mean)
    assert torch.equal(a.start_latent, s7)
    assert torch.equal(start_latent(gen, 7, 0.0), mean)  # truncation 0 collapses to the mean face
    faces = [gen.synthesis(s) for s in (s7, s8)]
    assert (faces[0] - faces[1]).abs().max() > 0.05


def test_stage1_progress_every_step_with_stills(models: Models) -> None:
    rec = Recorder()
    result = optimise_latent(
        models.stylegan, models.clip, PROMPT, StyleClipParams(steps=7, still_every=3), rec
    )
    assert rec.steps == list(range(1, 8))
    assert {p.stage for p in rec.events} == {"stylegan"} and {p.total for p in rec.events} == {7}
    # Losses are read back with the stills (a host wait), and every one reaches the result.
    assert [p.loss for p in rec.events] == [
        loss if step in (3, 6, 7) else None for step, loss in enumerate(result.losses, start=1)
    ]
    assert len(result.losses) == 7 and all(isinstance(v, float) for v in result.losses)
    assert rec.still_steps == [3, 6, 7]
    for p in rec.events:
        if p.image is not None:
            assert p.image.shape == (3, 32, 32) and p.image.device.type == "cpu"
            assert p.image.min() >= 0 and p.image.max() <= 1 and not p.image.requires_grad
    assert torch.equal(rec.events[-1].image, to_still(result.image))  # the last still is the result

    only_final = Recorder()
    optimise_latent(models.stylegan, models.clip, PROMPT, StyleClipParams(steps=4, still_every=0), only_final)
    assert only_final.still_steps == [4]


def test_stage1_cancel_stops_at_that_step(models: Models, counter: list[CallCounter]) -> None:
    synth = CallCounter(models.stylegan.conv1)  # runs once per synthesis
    counter.append(synth)
    rec = Recorder(cancel_at=3)
    with pytest.raises(JobCancelled):
        optimise_latent(models.stylegan, models.clip, PROMPT, StyleClipParams(steps=10), rec)
    assert rec.steps == [1, 2, 3]
    assert synth.calls == 3


def test_stage1_trains_only_the_latent(models: Models) -> None:
    gen = models.stylegan
    gen.requires_grad_(True)  # as a caller might leave it; the stage must not train or keep grads
    try:
        optimise_latent(gen, models.clip, PROMPT, StyleClipParams(steps=2))
        assert all(p.grad is None for p in gen.parameters())
        assert all(p.requires_grad for p in gen.parameters())  # the caller's flags are restored
    finally:
        gen.requires_grad_(False)


def test_stage1_refuses_an_empty_prompt(models: Models) -> None:
    with pytest.raises(EmptyPromptError):
        optimise_latent(models.stylegan, models.clip, "   ", StyleClipParams(steps=1))


# --- stage 2: scare ------------------------------------------------------------------------


def test_prepare_image_sizes() -> None:
    with pytest.raises(InvalidSizeError) as err:
        prepare_image(torch.zeros(1, 3, 64, 64), (63, 64), 4)
    message = str(err.value)
    assert "63x64" in message and "multiples of 4" in message
    assert "64x64" in message and "60x64" in message
    assert nearest_valid_sizes((63, 64), 4) == [(64, 64), (60, 64)]
    assert nearest_valid_sizes((0, 10), 16) == [(16, 16)]
    with pytest.raises(InvalidSizeError):
        prepare_image(torch.zeros(1, 3, 64, 64), (0, 64), 4)

    x = torch.linspace(-1, 1, 32 * 32 * 3).reshape(1, 3, 32, 32)
    out = prepare_image(x, (48, 40), 4)
    assert out.shape == (1, 3, 40, 48) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(prepare_image(x, (32, 32), 4), x)  # right size: untouched

    pil = Image.new("RGB", (30, 20), (255, 0, 128))
    out = prepare_image(pil, (16, 8), 4)
    assert out.shape == (1, 3, 8, 16)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]))


def test_stage2_moves_toward_the_prompt(models: Models, face: torch.Tensor) -> None:
    vqgan, clip = models.vqgan, models.clip
    # 16 steps: the toy CLIP's pull is weak and depends on the seed.
    params = VqganClipParams(steps=16, cutouts=8, seed=0, size=_canvas(models), augment=False)
    start = _vqgan_start(models, face)
    result = scare(vqgan, clip, face, parse_prompts(PROMPT), params)

    assert result.shape == (1, 3, 64, 64) and result.min() >= -1 and result.max() <= 1
    assert (result - start).abs().mean() > 0.02  # z moved, and the picture with it
    before = clip_score(clip, start, [PROMPT]).item()
    after = clip_score(clip, result, [PROMPT]).item()
    assert after > before + 0.03, (before, after)


def test_stage2_same_seed_is_bit_identical(models: Models, face: torch.Tensor) -> None:
    params = VqganClipParams(steps=2, cutouts=4, seed=11, size=_canvas(models))
    prompts = parse_prompts(PROMPT)
    a = scare(models.vqgan, models.clip, face, prompts, params)
    b = scare(models.vqgan, models.clip, face, prompts, params)
    c = scare(models.vqgan, models.clip, face, prompts, VqganClipParams(**{**vars(params), "seed": 12}))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_stage2_prompt_weight_sign(models: Models, face: torch.Tensor, weight: float) -> None:
    vqgan, clip = models.vqgan, models.clip
    prompts = [WeightedPrompt(PROMPT, 1.0), WeightedPrompt("a smiling baby", weight)]
    start = _vqgan_start(models, face)
    params = VqganClipParams(steps=8, cutouts=8, seed=0, size=_canvas(models), augment=False)
    result = scare(vqgan, clip, face, prompts, params)
    before = clip_score(clip, start, ["a smiling baby"]).item()
    after = clip_score(clip, result, ["a smiling baby"]).item()
    assert (after - before) * weight > 0.02, (before, after)


def test_stage2_progress_stills_and_cancel(
    models: Models, face: torch.Tensor, counter: list[CallCounter]
) -> None:
    vqgan, clip = models.vqgan, models.clip
    rec = Recorder()
    result = scare(
        vqgan,
        clip,
        face,
        parse_prompts(PROMPT),
        VqganClipParams(steps=5, cutouts=2, still_every=2, size=_canvas(models)),
        rec,
    )
    assert rec.steps == [1, 2, 3, 4, 5] and {p.stage for p in rec.events} == {"scare"}
    assert rec.still_steps == [2, 4, 5]
    assert rec.events[-1].image.shape == (3, 64, 64)
    assert torch.equal(rec.events[-1].image, to_still(result))

    decodes = CallCounter(vqgan.decoder.conv_out)
    counter.append(decodes)
    cancel = Recorder(cancel_at=2)
    with pytest.raises(JobCancelled):
        scare(
            vqgan,
            clip,
            face,
            parse_prompts(PROMPT),
            VqganClipParams(steps=6, cutouts=2, checkpoint=False),
            cancel,
        )
    assert cancel.steps == [1, 2] and decodes.calls == 2


def test_stage2_trains_only_the_latent(models: Models, face: torch.Tensor) -> None:
    vqgan = models.vqgan
    vqgan.requires_grad_(True)
    try:
        scare(
            vqgan,
            models.clip,
            face,
            parse_prompts(PROMPT),
            VqganClipParams(steps=2, cutouts=2, size=(64, 64)),
        )
        assert all(p.grad is None for p in vqgan.parameters())
        assert all(p.requires_grad for p in vqgan.parameters())
    finally:
        vqgan.requires_grad_(False)


def test_stage2_zero_steps_returns_the_resized_input(models: Models, face: torch.Tensor) -> None:
    rec = Recorder()
    out = scare(
        models.vqgan, models.clip, face, parse_prompts(PROMPT), VqganClipParams(steps=0, size=(64, 64)), rec
    )
    assert torch.equal(out, prepare_image(face, (64, 64), models.vqgan.factor)) and rec.events == []


def test_stage2_refuses_bad_sizes_and_no_prompt(models: Models, face: torch.Tensor) -> None:
    with pytest.raises(InvalidSizeError, match="60x64"):
        scare(models.vqgan, models.clip, face, parse_prompts(PROMPT), VqganClipParams(size=(62, 64)))
    with pytest.raises(EmptyPromptError):
        scare(models.vqgan, models.clip, face, [], VqganClipParams(steps=1))


# --- stage 3: nightmare frames --------------------------------------------------------------


def _nightmare(**kw: object) -> VqganClipParams:
    return VqganClipParams(**{"steps": 6, "lr": 0.01, "cutouts": 4, "seed": 0, "size": (64, 64), **kw})


def test_stage3_yields_one_frame_per_step_lazily(
    models: Models, face: torch.Tensor, counter: list[CallCounter]
) -> None:
    vqgan, clip = models.vqgan, models.clip
    decodes = CallCounter(vqgan.decoder.conv_out)
    counter.append(decodes)
    rec = Recorder()
    frames = nightmare_frames(
        vqgan,
        clip,
        face,
        parse_prompts("nightmare"),
        _nightmare(still_every=4, lr=0.1, checkpoint=False),
        rec,
    )
    assert decodes.calls == 0 and rec.events == []  # nothing runs until the first frame is asked for

    first = next(frames)
    assert decodes.calls == 1 and rec.steps == [1]
    rest = list(frames)
    assert decodes.calls == 6  # one decode per frame, none extra
    assert len(rest) == 5 and rec.steps == [1, 2, 3, 4, 5, 6]
    assert {p.stage for p in rec.events} == {"nightmare"} and rec.still_steps == [4, 6]
    assert first.shape == (64, 64, 3) and first.dtype == torch.uint8 and first.device.type == "cpu"
    assert_same_image(first, to_frame(_vqgan_start(models, face)))  # frame 1: the input's codes
    assert not torch.equal(first, rest[-1])
    assert_same_image(to_frame(rec.events[-1].image[None] * 2 - 1), rest[-1])  # still vs frame


def test_stage3_decodes_exact_codebook_rows_starting_from_the_inputs_codes(
    models: Models, face: torch.Tensor
) -> None:
    vqgan = models.vqgan
    seen: list[torch.Tensor] = []
    handle = vqgan.post_quant_conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        frames = list(
            nightmare_frames(
                vqgan,
                models.clip,
                face,
                parse_prompts("nightmare"),
                _nightmare(steps=3, lr=0.1, checkpoint=False),
            )
        )
    finally:
        handle.remove()
    assert len(frames) == 3 and len(seen) == 3  # one decode per step
    with torch.no_grad():
        x = prepare_image(face, (64, 64), vqgan.factor)
        start_codes = vqgan.nearest_codes(vqgan.encode(x))
    # The same arithmetic (an index into the codebook) on both sides: exact, not within a tolerance.
    assert torch.equal(seen[0], vqgan.quantize_codes(start_codes))
    for z_q in seen:
        assert torch.equal(z_q, vqgan.quantize_codes(vqgan.nearest_codes(z_q)))
    assert not torch.equal(seen[0], seen[-1])  # and the codes do move


def test_straight_through_is_exact_forward_and_identity_backward() -> None:
    source = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    target = torch.randn(2, 3, generator=torch.Generator().manual_seed(1)) * 1e4
    out = straight_through(source, target)
    assert torch.equal(out, target)
    weights = torch.arange(6.0).view(2, 3)
    (out * weights).sum().backward()
    assert torch.equal(source.grad, weights)


def test_stage3_drifts_toward_its_prompt(models: Models, face: torch.Tensor) -> None:
    frames = list(
        nightmare_frames(
            models.vqgan,
            models.clip,
            face,
            parse_prompts("nightmare"),
            _nightmare(steps=10, lr=0.1, cutouts=8, augment=False),
        )
    )

    def score(frame: torch.Tensor) -> float:
        image = frame.permute(2, 0, 1)[None].float() / 127.5 - 1
        return clip_score(models.clip, image, ["nightmare"]).item()

    assert score(frames[-1]) > score(frames[0]) + 0.03, (score(frames[0]), score(frames[-1]))


def test_stage3_same_seed_same_frames(models: Models, face: torch.Tensor) -> None:
    prompts = parse_prompts("nightmare")
    a = list(nightmare_frames(models.vqgan, models.clip, face, prompts, _nightmare(steps=3)))
    b = list(nightmare_frames(models.vqgan, models.clip, face, prompts, _nightmare(steps=3)))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_stage3_cancel_stops_the_stream(
    models: Models, face: torch.Tensor, counter: list[CallCounter]
) -> None:
    decodes = CallCounter(models.vqgan.decoder.conv_out)
    counter.append(decodes)
    rec = Recorder(cancel_at=3)
    got = []
    with pytest.raises(JobCancelled):
        for frame in nightmare_frames(
            models.vqgan, models.clip, face, parse_prompts("nightmare"), _nightmare(checkpoint=False), rec
        ):
            got.append(frame)
    assert rec.steps == [1, 2, 3] and decodes.calls == 3
    assert len(got) == 2  # the cancelled step's frame is never handed out


def test_stage3_checks_the_size_at_the_call(models: Models, face: torch.Tensor) -> None:
    with pytest.raises(InvalidSizeError):
        nightmare_frames(
            models.vqgan, models.clip, face, parse_prompts("nightmare"), _nightmare(size=(63, 64))
        )


def test_stage3_accepts_an_uploaded_picture(models: Models) -> None:
    upload = Image.new("RGB", (49, 31), (200, 30, 30))  # no size given: snapped to 48x32
    params = _nightmare(steps=2, size=None)
    frames = list(nightmare_frames(models.vqgan, models.clip, upload, parse_prompts("nightmare"), params))
    assert [f.shape for f in frames] == [(32, 48, 3), (32, 48, 3)]


# --- checkpointed decoding ------------------------------------------------------------------

_ATTN_VQGAN = {
    "model": {
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 8,
            "n_embed": 32,
            "ddconfig": {
                "double_z": False,
                "z_channels": 8,
                "resolution": 16,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 1],
                "num_res_blocks": 1,
                "attn_resolutions": [8],  # attention blocks in the decoder's lower level and middle
                "dropout": 0.0,
            },
        },
    }
}


@pytest.mark.parametrize("which", ["tiny", "with_attention"])
def test_checkpointed_decode_equals_plain_decode(models: Models, which: str) -> None:
    if which == "tiny":
        vqgan = models.vqgan
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vqgan = build_vqgan(_ATTN_VQGAN).eval().requires_grad_(False)
        assert len(vqgan.decoder.up[1].attn) > 0
    z = torch.randn(1, vqgan.embed_dim, 5, 7, generator=torch.Generator().manual_seed(0))
    grads, outs = [], []
    for checkpointed in (False, True):
        zz = z.clone().requires_grad_(True)
        out = decode(vqgan, zz, checkpointed=checkpointed)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(zz.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    # taming's own forward (nearest x2 + 3x3 convolution, x * sigmoid(x)): the same function,
    # summed in another order (one grey level is 8e-3 here).
    zz = z.clone().requires_grad_(True)
    reference = vqgan.decode(zz)
    (reference * torch.linspace(-1, 1, reference.numel()).view_as(reference)).sum().backward()
    torch.testing.assert_close(outs[0], reference.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], zz.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("channels", "height", "width", "channels_last"),
    [(8, 5, 7, False), (16, 1, 1, False), (4, 6, 3, True), (32, 12, 9, True)],
)
def test_sub_pixel_upsampling_equals_nearest_upsampling_then_convolution(
    channels: int, height: int, width: int, channels_last: bool
) -> None:
    from taming.modules.diffusionmodules.model import Upsample

    torch.manual_seed(channels)
    module = Upsample(channels, with_conv=True)
    x = torch.randn(2, channels, height, width)
    weight = torch.randn(2, channels, 2 * height, 2 * width)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    results = []
    for run in (module, lambda h: upsample_conv(module.conv, h)):
        xx = x.clone().to(memory_format=layout).requires_grad_(True)
        out = run(xx)
        (out * weight).sum().backward()
        results.append((out.detach(), xx.grad))
    (ref, ref_grad), (out, grad) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=layout)


def test_sub_pixel_upsampling_refuses_other_convolutions() -> None:
    with pytest.raises(ValueError, match="3x3 upsampling convolution"):
        upsample_conv(torch.nn.Conv2d(4, 4, kernel_size=3, padding=0), torch.zeros(1, 4, 3, 3))


def test_scare_is_the_same_with_and_without_checkpointing(models: Models, face: torch.Tensor) -> None:
    base = VqganClipParams(steps=3, cutouts=4, seed=5, size=_canvas(models))
    prompts = parse_prompts(PROMPT)
    a = scare(models.vqgan, models.clip, face, prompts, base)
    b = scare(
        models.vqgan, models.clip, face, prompts, VqganClipParams(**{**vars(base), "checkpoint": False})
    )
    assert torch.equal(a, b)


def test_stage3_of_a_gumbel_vqgan_starts_from_the_codes_its_quantiser_picks(models: Models) -> None:
    """A Gumbel model picks codes from its `proj` logits: the nearest code vector is another picture."""
    try:
        from .test_vqgan import toy_yaml
    except ImportError:
        from test_vqgan import toy_yaml
    torch.manual_seed(6)
    gumbel = build_vqgan(toy_yaml(target="taming.models.vqgan.GumbelVQ"))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    seen: list[torch.Tensor] = []
    handle = gumbel.post_quant_conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        frames = nightmare_frames(
            gumbel, models.clip, x, parse_prompts("nightmare"), _nightmare(steps=1, size=(32, 32))
        )
        next(frames)
        frames.close()
    finally:
        handle.remove()
    with torch.no_grad():
        canvas = prepare_image(x, (32, 32), gumbel.factor)
        picked = gumbel.encode_to_codes(canvas)
        assert not torch.equal(picked, gumbel.nearest_codes(gumbel.encode(canvas)))  # the case matters
        assert torch.equal(seen[0], gumbel.quantize_codes(picked))

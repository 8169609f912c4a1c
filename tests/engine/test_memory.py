"""decoder_checkpointing = "auto": the decision, the memory estimate it rests on, and the Renderer."""

from __future__ import annotations

import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline import memory
from engine.pipeline.decode import decode
from engine.pipeline.memory import StepMemory, measure_step_memory, use_checkpointing
from engine.pipeline.render import Renderer
from engine.pipeline.tensors import frozen
from engine.service.spec import spooky_spec
from spooky.config import ModelsConfig, PipelineConfig

GiB = 1024**3


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


def test_forced_settings_win_whatever_the_memory() -> None:
    assert use_checkpointing(True, need_bytes=1, free_bytes=100 * GiB) is True
    assert use_checkpointing(False, need_bytes=100 * GiB, free_bytes=1) is False


def test_auto_turns_checkpointing_on_only_where_the_plain_backward_does_not_fit() -> None:
    assert use_checkpointing("auto", need_bytes=4 * GiB, free_bytes=40 * GiB) is False
    assert use_checkpointing("auto", need_bytes=4 * GiB, free_bytes=4 * GiB) is True  # no headroom left
    assert use_checkpointing("auto", need_bytes=1, free_bytes=None) is True  # unknown: keep the promise
    with pytest.raises(ValueError, match="decoder_checkpointing"):
        use_checkpointing("maybe", need_bytes=1, free_bytes=1)


def test_auto_keeps_the_8_gb_promise_at_the_default_canvas() -> None:
    # What the f16 decoder's plain backward keeps at 608x752 in fp32 (docs/operators.md), on a card
    # with about 7 GiB free once the three models are loaded (8 GB).
    fp32 = StepMemory(decoder_per_pixel=7.3 * GiB / (608 * 752), clip_per_cutout=18e6)
    need = fp32.plain_bytes((608, 752), 32)
    assert use_checkpointing("auto", need, free_bytes=7 * GiB) is True
    assert use_checkpointing("auto", need, free_bytes=70 * GiB) is False  # an 80 GB card goes fast


def test_the_estimate_scales_from_the_probe_to_the_canvas(models: Models) -> None:
    """The 8x8-latent probe, scaled, matches what a 128x96 canvas really saves (within 10 %)."""
    est = measure_step_memory(models.vqgan, models.clip, "fp32")
    vqgan = models.vqgan
    z = vqgan.codebook[:1].detach().view(1, -1, 1, 1).expand(1, -1, 96 // 4, 128 // 4).clone()
    z.requires_grad_(True)
    weights = {t.untyped_storage().data_ptr() for t in vqgan.state_dict().values()}
    with frozen(vqgan):  # as in a step
        real = memory._saved_bytes(lambda: decode(vqgan, z), weights)
    assert est.decoder_per_pixel * 128 * 96 == pytest.approx(real, rel=0.10)
    bf16 = measure_step_memory(models.vqgan, models.clip, "bf16")
    assert bf16.decoder_per_pixel < est.decoder_per_pixel  # bf16 activations are smaller


def _decoder_runs(models: Models, setting: object, monkeypatch: pytest.MonkeyPatch, free: int | None) -> int:
    monkeypatch.setattr(memory, "free_bytes", lambda _device: free)
    monkeypatch.setattr("engine.pipeline.render.free_bytes", lambda _device: free)
    renderer = Renderer(models, PipelineConfig(cutouts=2, decoder_checkpointing=setting))
    calls = []
    hook = models.vqgan.decoder.conv_out.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        renderer.spooky(
            spooky_spec(PipelineConfig(), None, prompt="a pale vampire", steps=1, scare_steps=2, seed=5)
        )
    finally:
        hook.remove()
    return len(calls)


def test_renderer_auto_follows_the_free_memory(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _decoder_runs(models, False, monkeypatch, free=None)
    checkpointed = _decoder_runs(models, True, monkeypatch, free=None)
    assert checkpointed > plain  # the recomputation shows as extra decoder runs
    assert _decoder_runs(models, "auto", monkeypatch, free=64 * GiB) == plain
    assert _decoder_runs(models, "auto", monkeypatch, free=1024**2) == checkpointed
    assert _decoder_runs(models, "auto", monkeypatch, free=None) == checkpointed


def test_renderer_reads_real_free_memory_on_this_machine(models: Models) -> None:
    # The tiny preset needs a few MiB: whatever RAM this machine has, auto turns checkpointing off.
    renderer = Renderer(models, PipelineConfig())
    assert renderer.decoder_checkpointing((64, 64)) is False
    assert memory.free_bytes(torch.device("cpu")) > 0

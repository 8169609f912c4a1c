"""channels_last for the VQGAN (per device) and the opt-in torch.compile of stages 2/3, on the tiny preset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline import compiled
from engine.pipeline.layout import use_channels_last
from engine.pipeline.render import Renderer
from engine.service.spec import spooky_spec
from spooky.config import ModelsConfig, PipelineConfig
from spooky.contract import SpookySpec


@pytest.fixture
def models() -> Models:
    # Per test: a Renderer puts the VQGAN in its layout in place.
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


def job(seed: int = 7) -> SpookySpec:
    return spooky_spec(PipelineConfig(), None, prompt="a pale vampire", steps=2, scare_steps=3, seed=seed)


def conv_weights(models: Models) -> list[torch.Tensor]:
    return [m.weight for m in models.vqgan.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize(("setting", "expected"), [("auto", True), (True, True), (False, False)])
def test_channels_last_decision(setting: object, expected: bool) -> None:
    assert use_channels_last(setting) is expected  # type: ignore[arg-type]


def test_channels_last_reaches_the_vqgan_and_keeps_the_image(models: Models) -> None:
    plain = Renderer(models, PipelineConfig(cutouts=4, channels_last=False))
    assert not plain.channels_last
    assert all(w.is_contiguous() for w in conv_weights(models))
    before = np.asarray(plain.spooky(job()).spooky_image, dtype=np.int16)

    nhwc = Renderer(models, PipelineConfig(cutouts=4))  # auto: NHWC, on the CPU too
    assert nhwc.channels_last
    weights = [w for w in conv_weights(models) if w.shape[-1] > 1 or w.shape[-2] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    after = np.asarray(nhwc.spooky(job()).spooky_image, dtype=np.int16)
    # Two layouts sum in different orders: the same image within one grey level.
    assert np.abs(before - after).max() <= 1
    assert after.tobytes() == np.asarray(nhwc.spooky(job()).spooky_image, dtype=np.int16).tobytes()


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_decoder_runs_in_its_weights_layout(models: Models, channels_last: bool) -> None:
    """The codebook lookup yields NHWC strides; the decoder must not carry them into NCHW weights."""
    from engine.pipeline.decode import decode
    from engine.pipeline.layout import apply_layout

    vqgan = models.vqgan
    apply_layout(vqgan, channels_last)
    try:
        codes = torch.randint(0, vqgan.n_embed, (1, 5, 7), generator=torch.Generator().manual_seed(0))
        z_q = vqgan.quantize_codes(codes)
        assert z_q.is_contiguous(memory_format=torch.channels_last) and not z_q.is_contiguous()
        seen: list[torch.Tensor] = []
        # taming's attention reshapes to NCHW inside the block (its output projection): not ours.
        handles = [
            m.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            for name, m in vqgan.decoder.named_modules()
            if isinstance(m, torch.nn.Conv2d) and "attn" not in name
        ]
        try:
            decode(vqgan, z_q.clone().requires_grad_(True)).sum().backward()
        finally:
            for h in handles:
                h.remove()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert seen and all(x.is_contiguous(memory_format=layout) for x in seen)
    finally:
        apply_layout(vqgan, False)


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.fx.GraphModule]]:
    """torch.compile through dynamo + AOT autograd (what inductor builds on), counting the graphs."""
    seen: list[torch.fx.GraphModule] = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def counting(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        seen.append(gm)
        return aot_eager(gm, inputs)

    monkeypatch.setattr(compiled, "BACKEND", counting)
    torch._dynamo.reset()
    yield seen
    torch._dynamo.reset()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_decoder_and_clip_give_the_eager_image(
    models: Models, graphs: list[torch.fx.GraphModule], checkpointing: bool
) -> None:
    eager = Renderer(models, PipelineConfig(cutouts=4, decoder_checkpointing=checkpointing))
    expected = np.asarray(eager.spooky(job()).spooky_image, dtype=np.int16)
    assert not graphs

    fast = Renderer(models, PipelineConfig(cutouts=4, decoder_checkpointing=checkpointing, compile=True))
    first = np.asarray(fast.spooky(job()).spooky_image, dtype=np.int16)
    # Checkpointed blocks are sub-graphs (higher-order ops) of the captured graph.
    subgraphs = [m for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)]
    ops = {str(n.target) for g in subgraphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("group_norm" in op for op in ops), ops  # the decoder (taming normalises by groups)
    assert any("layer_norm" in op for op in ops), ops  # and CLIP's transformer
    assert np.abs(first - expected).max() <= 1
    captured = len(graphs)
    again = np.asarray(fast.spooky(job()).spooky_image, dtype=np.int16)
    assert len(graphs) == captured  # the second job reuses the compiled networks
    assert again.tobytes() == first.tobytes()

"""channels_last for the VQGAN (per device) and the opt-in torch.compile of stages 2/3, on the tiny preset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline import compiled
from engine.pipeline.layout import use_channels_last
from engine.pipeline.render import Renderer, SpookyJob
from spooky.config import ModelsConfig, PipelineConfig


@pytest.fixture
def models() -> Models:
    # Per test: a Renderer puts the VQGAN in its layout in place.
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


def job(seed: int = 7) -> SpookyJob:
    return SpookyJob("a pale vampire", steps=2, scare_steps=3, seed=seed)


def conv_weights(models: Models) -> list[torch.Tensor]:
    return [m.weight for m in models.vqgan.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False)],
)
def test_channels_last_decision(setting: object, device: str, expected: bool) -> None:
    assert use_channels_last(setting, device) is expected  # type: ignore[arg-type]


def test_channels_last_reaches_the_vqgan_and_keeps_the_image(models: Models) -> None:
    plain = Renderer(models, PipelineConfig(cutouts=4))  # auto on the CPU: NCHW (measured faster)
    assert not plain.channels_last
    assert all(w.is_contiguous() for w in conv_weights(models))
    before = np.asarray(plain.spooky(job()).spooky_image, dtype=np.int16)

    nhwc = Renderer(models, PipelineConfig(cutouts=4, channels_last=True))
    weights = [w for w in conv_weights(models) if w.shape[-1] > 1 or w.shape[-2] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    after = np.asarray(nhwc.spooky(job()).spooky_image, dtype=np.int16)
    # Two layouts sum in different orders: the same image within one grey level.
    assert np.abs(before - after).max() <= 1
    assert after.tobytes() == np.asarray(nhwc.spooky(job()).spooky_image, dtype=np.int16).tobytes()


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

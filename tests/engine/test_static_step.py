"""The static stage-2/3 step (engine.pipeline.graphs) on the CPU, where it runs eagerly, tiny preset.

On CUDA the same `StaticStep.update` is what the graph captures; here it is held to the ordinary
loop's frames and losses, and to the properties a capture relies on: the same ops on the same
shapes every step, and the same buffers. `[pipeline] cuda_graphs` is refused off CUDA.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline import graphs
from engine.pipeline.optimisation import VqganClipOptimisation, VqganClipParams
from engine.pipeline.progress import StepReport
from engine.pipeline.prompts import parse_prompts
from engine.pipeline.render import Renderer
from engine.pipeline.styleclip import StyleClipParams, optimise_latent
from engine.pipeline.tensors import frame_copy
from engine.pipeline.vqgan_clip import nightmare_frames, prepare_image, run_steps
from spooky.config import ModelsConfig, PipelineConfig, load_settings
from spooky.errors import ConfigError
from tests.engine.op_log import OpLog

PROMPT = "a drowned ghost"


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


@pytest.fixture(scope="module")
def face(models: Models) -> torch.Tensor:
    return optimise_latent(models.stylegan, models.clip, PROMPT, StyleClipParams(steps=2, seed=3)).image


def _nightmare(models: Models, face: torch.Tensor, static: bool) -> tuple[list[torch.Tensor], list[float]]:
    """Six fp32 frames at a learning rate that moves them within six steps, and their losses."""
    losses: list[float] = []

    def progress(p: StepReport) -> None:
        assert p.loss is not None  # still_every=1: every step reads its loss
        losses.append(p.loss)

    config = VqganClipParams(steps=6, lr=0.05, cutouts=6, seed=5, still_every=1, cuda_graphs=static)
    stream = nightmare_frames(models.vqgan, models.clip, face, parse_prompts(PROMPT), config, progress)
    return list(stream), losses


def assert_same_frames(expected: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    """Two code paths: the same frames within one grey level, and frames that do move."""
    assert len(got) == len(expected) == 6
    for a, b in zip(expected, got, strict=True):
        assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape
        assert (a.int() - b.int()).abs().max() <= 1
    # Equal frames must not be six copies of the start image.
    assert (expected[0].int() - expected[-1].int()).abs().max() > 1


def test_static_step_gives_the_loops_frames_and_losses(models: Models, face: torch.Tensor) -> None:
    """N static steps (static-shape crops too) against the ordinary loop (looped crops), same seed."""
    loop_frames, loop_losses = _nightmare(models, face, False)
    static_frames, static_losses = _nightmare(models, face, True)
    assert_same_frames(loop_frames, static_frames)
    torch.testing.assert_close(torch.tensor(static_losses), torch.tensor(loop_losses), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("precision", "checkpoint"), [("bf16", True), ("bf16", False), ("fp32", True)]
)
def test_precision_and_checkpointing_apply_inside_the_static_step(
    models: Models, face: torch.Tensor, precision: str, checkpoint: bool
) -> None:
    """The static step against the loop on the same static-shape crops: in bf16 a crop's rounding
    decides codes within a few steps, so only the step itself is compared here."""
    x = prepare_image(face, models.default_size, models.vqgan.factor)
    runs = []
    # A checkpointed decoder runs its blocks again in the backward pass.
    calls: list[int] = []
    block = models.vqgan.decoder.mid.block_1.norm1
    for static in (False, True):
        params = VqganClipParams(steps=6, lr=0.05, cutouts=6, seed=5, cuda_graphs=static)
        params.precision, params.checkpoint = precision, checkpoint  # type: ignore[assignment]
        calls.clear()
        hook = block.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            with VqganClipOptimisation(models.vqgan, models.clip, x, parse_prompts(PROMPT), params) as run:
                run.cutouts.static_shapes = True  # the loop cuts the same way
                frames = [frame.result() for _, _, frame in run_steps(run, frames=True) if frame is not None]
                runs.append((frames, run.losses.values()))
        finally:
            hook.remove()
        assert len(calls) == 6 * (2 if checkpoint else 1)
    (loop_frames, loop_losses), (static_frames, static_losses) = runs
    assert_same_frames(loop_frames, static_frames)
    torch.testing.assert_close(torch.tensor(static_losses), torch.tensor(loop_losses), atol=1e-6, rtol=1e-6)


def test_static_step_runs_the_same_ops_on_the_same_buffers_every_step(
    models: Models, face: torch.Tensor
) -> None:
    """What a CUDA graph capture needs: a step's work does not depend on its draws, and the
    tensors it reads and writes stay where they are."""
    params = VqganClipParams(steps=4, cutouts=6, seed=2, size=models.default_size, cuda_graphs=True)
    x = torch.rand(1, 3, *reversed(models.default_size)) * 2 - 1
    with VqganClipOptimisation(models.vqgan, models.clip, x, parse_prompts(PROMPT), params) as run:
        step = graphs.StaticStep(run)
        buffers = [run.z, run.codes, step.boxes, step.decoded, step.loss]
        where = [t.data_ptr() for t in buffers]
        logs, boxes, codes = [], [], []
        for _ in range(4):
            step.load_crops()
            boxes.append(step.boxes.clone())
            with OpLog() as log:
                step.update()
            logs.append(log.ops)
            codes.append(run.codes.clone())
        assert [t.data_ptr() for t in buffers] == where
        assert run.codes is buffers[1]
    assert not torch.equal(boxes[1], boxes[2])  # different crops each step ...
    assert logs[1] == logs[2] == logs[3]  # ... the same work (step 1 also creates Adam's state)
    assert not any("adaptive_avg_pool" in op for op, _ in logs[1])
    assert not torch.equal(codes[0], codes[-1])  # the codes are re-picked in place


def test_static_step_draws_the_loops_crops(models: Models) -> None:
    """The boxes come from the run's crop stream in the loop's order: the loop's own draws."""
    params = VqganClipParams(steps=2, cutouts=6, seed=9, size=models.default_size, cuda_graphs=True)
    x = torch.zeros(1, 3, *reversed(models.default_size))
    with VqganClipOptimisation(models.vqgan, models.clip, x, parse_prompts(PROMPT), params) as run:
        step = graphs.StaticStep(run)
        expected = run.cutouts.draw(random.Random(9), run.canvas)
        step.load_crops()
        assert [tuple(b) for b in step.boxes.tolist()] == expected


def test_cuda_graphs_are_refused_off_cuda(models: Models, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cuda_graphs = true needs a CUDA device.*cpu"):
        Renderer(models, PipelineConfig(cuda_graphs=True))
    Renderer(models, PipelineConfig(cuda_graphs=False))

    cfg = tmp_path / "config.toml"
    cfg.write_text('[models]\ndevice = "cpu"\n[pipeline]\ncuda_graphs = true\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert "pipeline.cuda_graphs" in str(e.value) and "'cpu'" in str(e.value)
    # "auto" may be CUDA: the renderer decides once the device is known.
    assert load_settings(None, env={"SPOOKY_PIPELINE__CUDA_GRAPHS": "true"}).pipeline.cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: captures a CUDA graph")
def test_cuda_graph_replays_give_the_eager_frames() -> None:
    """On CUDA: 3 eager warm-up steps, a capture, then replays; the eager loop's frames."""
    cuda = load_models(ModelsConfig(preset="tiny", device="cuda"))
    x = torch.rand(1, 3, *reversed(cuda.default_size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x.to(cuda.device)
    runs = []
    for static in (False, True):
        params = VqganClipParams(steps=8, lr=0.05, cutouts=6, seed=5, cuda_graphs=static)
        with VqganClipOptimisation(cuda.vqgan, cuda.clip, x, parse_prompts(PROMPT), params) as run:
            if static:
                step = graphs.StaticStep(run)
                graphed = graphs.GraphedStep(step)
                frames = []
                for _ in range(params.steps):
                    step.load_crops()
                    graphed()
                    frames.append(frame_copy(step.decoded).result())
                assert graphed.graph is not None  # steps 5-8 were replays
            else:
                frames = [f.result() for _, _, f in run.steps(frames=True) if f is not None]
            runs.append(frames)
    eager, replayed = runs
    assert len(replayed) == len(eager) == 8
    for a, b in zip(eager, replayed, strict=True):
        assert (a.int() - b.int()).abs().max() <= 1

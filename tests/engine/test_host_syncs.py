"""No host waits inside a step of stages 1-3, counted on the CPU with the sync points patched.

On a GPU each of these makes the host wait until the device has run everything queued so far
(`.item()`, `float(t)`, `.tolist()`, `.cpu()`, `.numpy()`, `bool(t)` in a Python branch) or copies
Python data to the device from pageable memory (`torch.tensor(...)`). On the CPU they cost
nothing, so they are counted where they are called: a step count of 6 against 2 gives the
per-step calls, which must be none (the setup and the last step's still may read back).
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from engine.models.factory import Models, load_models
from engine.pipeline.optimisation import VqganClipParams
from engine.pipeline.prompts import parse_prompts
from engine.pipeline.styleclip import StyleClipParams, optimise_latent
from engine.pipeline.vqgan_clip import nightmare_frames, scare
from spooky.config import ModelsConfig

ROOT = Path(__file__).resolve().parents[2]
READ_BACKS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
#: torch.optim.Adam reads its step counters with `.item()`: CPU tensors even when the parameters
#: are on a GPU (state["step"] lives on the CPU unless `capturable`), so they never wait on it.
CPU_BOOKKEEPING = ("torch/optim/adam.py", "torch/optim/optimizer.py")


class SyncCounter:
    """Counts calls of the patched sync points by (what, calling file)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.active = False

    def wrap(self, name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def counted(*args: object, **kwargs: object) -> object:
            if self.active:
                caller = sys._getframe(1).f_code.co_filename
                self.calls[(name, _short(caller))] += 1
            return fn(*args, **kwargs)

        return counted

    def run(self, fn: Callable[[], object]) -> collections.Counter[tuple[str, str]]:
        self.calls.clear()
        self.active = True
        try:
            fn()
        finally:
            self.active = False
        return collections.Counter(self.calls)


def _short(path: str) -> str:
    p = Path(path)
    if p.is_relative_to(ROOT):
        return str(p.relative_to(ROOT))
    return "/".join(p.parts[-3:])


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    counter = SyncCounter()
    for name in READ_BACKS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "tensor", counter.wrap("torch.tensor", torch.tensor))
    monkeypatch.setattr(torch.cuda, "synchronize", counter.wrap("cuda.synchronize", torch.cuda.synchronize))
    yield counter


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


@pytest.fixture(scope="module")
def face(models: Models) -> torch.Tensor:
    return optimise_latent(models.stylegan, models.clip, "a ghost", StyleClipParams(steps=2, seed=3)).image


def per_step(syncs: SyncCounter, run: Callable[[int], object]) -> dict[tuple[str, str], float]:
    """Sync calls per step, from runs of 6 and 2 steps (setup and the final still cancel out)."""
    run(1)  # warm the caches (prompt embeddings, device constants) the first run fills
    long, short = syncs.run(lambda: run(6)), syncs.run(lambda: run(2))
    keys = set(long) | set(short)
    return {k: (long[k] - short[k]) / 4 for k in keys if long[k] != short[k]}


def assert_no_waits(found: dict[tuple[str, str], float]) -> None:
    waits = {k: v for k, v in found.items() if not k[1].endswith(CPU_BOOKKEEPING)}
    assert waits == {}, f"host syncs per step: {waits}"


def test_stage1_step_has_no_host_sync(models: Models, syncs: SyncCounter) -> None:
    def run(steps: int) -> None:
        params = StyleClipParams(steps=steps, seed=1, still_every=0)
        optimise_latent(models.stylegan, models.clip, "a ghost", params)

    assert_no_waits(per_step(syncs, run))


def test_stage2_step_has_no_host_sync(models: Models, face: torch.Tensor, syncs: SyncCounter) -> None:
    def run(steps: int) -> None:
        params = VqganClipParams(steps=steps, cutouts=4, seed=0, size=(64, 64), still_every=0)
        scare(models.vqgan, models.clip, face, parse_prompts("a ghost"), params)

    assert_no_waits(per_step(syncs, run))


def test_stage3_step_has_no_host_sync(models: Models, face: torch.Tensor, syncs: SyncCounter) -> None:
    def run(steps: int) -> None:
        params = VqganClipParams(steps=steps, lr=0.01, cutouts=4, seed=0, size=(64, 64), still_every=0)
        for frame in nightmare_frames(models.vqgan, models.clip, face, parse_prompts("nightmare"), params):
            assert frame.dtype == torch.uint8  # consumed like the renderer does (no read-back)

    assert_no_waits(per_step(syncs, run))


def test_stage3_static_step_has_no_host_sync(models: Models, face: torch.Tensor, syncs: SyncCounter) -> None:
    """The step a CUDA graph captures (engine.pipeline.graphs), run eagerly: crops drawn on the
    host and copied in, the update in place, frames and losses queued."""

    def run(steps: int) -> None:
        params = VqganClipParams(
            steps=steps, lr=0.01, cutouts=4, seed=0, size=(64, 64), still_every=0, cuda_graphs=True
        )
        for frame in nightmare_frames(models.vqgan, models.clip, face, parse_prompts("nightmare"), params):
            assert frame.dtype == torch.uint8

    assert_no_waits(per_step(syncs, run))


def test_the_counter_sees_a_read_back(models: Models, syncs: SyncCounter) -> None:
    """The patching works: a loss read every step (the host wait the stages avoid) is counted."""

    def run(steps: int) -> None:
        x = torch.zeros(3)
        for _ in range(steps):
            x.sum().item()
            float(x.mean())

    found = per_step(syncs, run)
    assert found == {
        ("item", "tests/engine/test_host_syncs.py"): 1.0,
        ("__float__", "tests/engine/test_host_syncs.py"): 1.0,
    }

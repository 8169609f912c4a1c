"""Stage-2/3 steps on fixed buffers: one whole update that a CUDA graph can capture and replay.

A nightmare runs the same step hundreds of times on the same shapes. `StaticStep` is that step
(forward, backward, Adam, clamp, re-picking the codes) written to read and write only buffers it
owns or that live as long as the run: z, the codes, Adam's state, the crop boxes, the loss and the
decoded frame, with the cutouts' static-shape crops. On the CPU it simply runs. On CUDA,
`GraphedStep` runs it eagerly for a few warm-up frames on a side stream (they create the lazy
state: Adam's moments, cuBLAS workspaces, cached constants), captures the next one with
`torch.cuda.graph`, and replays that capture for every later frame: one launch per frame instead
of thousands, and the host never waits. The warm-up frames are real frames, and a capture runs
nothing, so the frames are the eager loop's whatever the frame count.

Only the crop boxes change from the host between replays: drawn from the run's crop stream as
ever and copied in without blocking. The cutouts' augmentations draw from the run's device
generator, registered with the graph so that each replay advances it as the eager step would.
`[pipeline] cuda_graphs` is off by default; benchmarks/graph_check.py is the check to run on a GPU
before turning it on (docs/operators.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from engine.pipeline.optimisation import StepOutput, VqganClipOptimisation
from engine.pipeline.tensors import frame_copy

#: Eager steps before the capture (PyTorch's CUDA-graph examples warm up with 3).
WARMUP_STEPS = 3


class StaticStep:
    """One whole update of `run` that touches only fixed buffers; `update()` runs it once."""

    def __init__(self, run: VqganClipOptimisation) -> None:
        self.run = run
        device = run.z.device
        self.boxes = torch.zeros((run.params.cutouts, 3), dtype=torch.int64, device=device)
        self.decoded = torch.zeros((1, 3, *run.canvas), dtype=torch.float32, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)

    def load_crops(self) -> None:
        """Draw the next step's crops on the host into `boxes` (without blocking, on CUDA)."""
        self.run.draw_boxes(self.boxes)

    def update(self) -> None:
        """Forward, backward, Adam, clamp and nearest codes, all in place on the run's tensors."""
        decoded, loss = self.run.forward(self.boxes)
        self.decoded.copy_(decoded)
        self.loss.copy_(loss.detach())
        self.run.update(loss)


class GraphedStep:
    """`step.update` run eagerly `warmup` times, then captured once as a CUDA graph and replayed."""

    def __init__(self, step: StaticStep, warmup: int = WARMUP_STEPS) -> None:
        self.step = step
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warmed = 0
        self._side = torch.cuda.Stream(step.boxes.device)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self._warmed < self.warmup:
            # A side stream, as torch.cuda.graph's documentation asks: lazy initialisation that
            # would otherwise happen during the capture happens here, outside it.
            current = torch.cuda.current_stream(self._side.device)
            self._side.wait_stream(current)
            with torch.cuda.stream(self._side):
                self.step.update()
            current.wait_stream(self._side)
            self._warmed += 1
            return
        graph = torch.cuda.CUDAGraph()
        # The cutouts draw from their own generator, not the default one: each replay must read
        # its current offset and advance it, as an eager step would.
        graph.register_generator_state(self.step.run.generator)
        # "thread_local": the background writer thread may free the pinned memory of earlier
        # frames meanwhile (an event record there), which "global" would turn into an error.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.step.update()
        self.graph = graph
        graph.replay()  # the capture recorded this step without running it


def static_steps(run: VqganClipOptimisation, *, frames: bool) -> Iterator[StepOutput]:
    """`run.steps` through a `StaticStep`: a CUDA graph on CUDA, eager elsewhere."""
    step = StaticStep(run)
    update: Callable[[], None] = GraphedStep(step) if step.boxes.device.type == "cuda" else step.update
    for i in range(run.params.steps):
        step.load_crops()
        update()
        # The buffers are overwritten by the next step; what leaves here is a copy (queued, no wait).
        frame = frame_copy(step.decoded) if frames else None
        run.losses.add(step.loss.clone())
        yield i + 1, step.decoded.clone(), frame

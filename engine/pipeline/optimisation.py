"""The optimisation stages 2 and 3 share: Adam on the VQGAN latent z toward weighted prompts.

`VqganClipOptimisation` holds one run's state (z, its codes, Adam, the cutouts and their random
streams, the losses) and keeps the VQGAN frozen while it is entered. Its public methods are the
one interface both ways of stepping use: the eager loop (`steps`) and the static-shape step that a
CUDA graph captures (engine.pipeline.graphs), each calling `forward` then `update`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.vqgan import VQGAN
from engine.pipeline import compiled
from engine.pipeline.cutouts import MakeCutouts
from engine.pipeline.decode import decode
from engine.pipeline.host_memory import reuse_freed_memory
from engine.pipeline.losses import weighted_prompt_loss
from engine.pipeline.precision import Precision, networks, tf32_allowed
from engine.pipeline.progress import LossLog
from engine.pipeline.prompts import WeightedPrompt
from engine.pipeline.tensors import HostCopy, clamp_with_grad, frame_copy, frozen, straight_through
from spooky.errors import EmptyPromptError

#: What a run yields after each step: (1-based step, that step's decoded image detached, the copy
#: of its frame to host memory when frames were asked for).
StepOutput = tuple[int, Tensor, HostCopy | None]


@dataclass
class VqganClipParams:
    steps: int = 10  # stage 3: the number of frames
    lr: float = 0.1  # 0.1 for the scare pass, 0.01 for the nightmare video
    cutouts: int = 32  # CLIP crops per step
    cut_pow: float = 1.0  # > 1 favours small crops
    still_every: int = 5  # a progress still every this many steps (0: only the last)
    seed: int | None = None  # seeds the cutouts; None draws a fresh seed
    size: tuple[int, int] | None = None  # canvas (w, h); None keeps the image's size, snapped
    # Augment the cutouts (flip, warp, colour; noise is always added). Off only for toy models:
    # a random CLIP is not invariant to flips or warps, so augmented crops would not steer it.
    augment: bool = True
    # Recompute decoder activations block by block in the backward pass: the same result for more
    # arithmetic per step and much less memory (docs/operators.md has the figures).
    checkpoint: bool = True
    # Arithmetic of the decoder and CLIP (see engine.pipeline.precision); z and the loss stay fp32.
    precision: Precision = "fp32"
    # torch.compile the decoder and CLIP's image tower (engine.pipeline.compiled); the same images
    # within float rounding, a slow first step.
    compile: bool = False
    # Run each step as one static-shape update (engine.pipeline.graphs): captured once and replayed
    # as a CUDA graph on CUDA, eager elsewhere (the same frames within float rounding).
    cuda_graphs: bool = False


class VqganClipOptimisation:
    """The Adam steps on z for one run; a context manager that keeps the VQGAN frozen meanwhile.

    While entered, `z` (the latent Adam moves) and `codes` (the codebook indices a step decodes)
    are tensors that stay where they are: `update` writes both in place, which is what lets a
    captured CUDA graph read them. `losses` collects each step's loss on the device; `generator`
    is the device RNG the cutouts' augmentations draw from.
    """

    def __init__(
        self,
        vqgan: VQGAN,
        clip: ClipModel,
        x: Tensor,
        prompts: Sequence[WeightedPrompt],
        params: VqganClipParams,
    ) -> None:
        if not prompts:
            raise EmptyPromptError("no prompt was given", hint="give at least one prompt")
        self.vqgan, self.clip, self.x, self.params = vqgan, clip, x, params
        self.text_embeds = clip.encode_text([p.text for p in prompts])
        self.weights = torch.tensor([p.weight for p in prompts], device=self.text_embeds.device)
        # Static-shape crops on CUDA (fewer launches, nothing shape-dependent) and for a static
        # step; on the CPU the per-crop loop is faster (benchmarks/bench_cutouts.py).
        static = params.cuda_graphs or x.device.type == "cuda"
        self.cutouts = MakeCutouts(
            clip.image_size, params.cutouts, params.cut_pow, augment=params.augment, static_shapes=static
        )
        # On the canvas's device, so the cutouts' noise is drawn where it is used; the crop
        # positions come from a host RNG with the same seed (Python ints, no device read-back).
        self.generator = torch.Generator(device=x.device)
        if params.seed is None:
            seed = self.generator.seed()
        else:
            seed = params.seed
            self.generator.manual_seed(seed)
        self.crops = random.Random(seed)
        self._decode = compiled.decoder(vqgan, checkpointed=params.checkpoint, compile=params.compile)
        self._encode_image = compiled.image_tower(clip, compile=params.compile)
        self.losses = LossLog()
        self._stack = contextlib.ExitStack()

    @property
    def canvas(self) -> tuple[int, int]:
        """(H, W) of the image a step decodes."""
        return (int(self.x.shape[-2]), int(self.x.shape[-1]))

    def __enter__(self) -> VqganClipOptimisation:
        self._stack.enter_context(frozen(self.vqgan))
        self._stack.enter_context(tf32_allowed(self.params.precision))
        # Each CPU step frees and reallocates gigabytes of activations: keep the pages.
        self._stack.enter_context(reuse_freed_memory(self.x.device.type == "cpu"))
        with torch.no_grad():
            # Start from the codes of the image, picked the way the model's quantiser picks them
            # (a Gumbel model scores codes with its `proj` logits): z is exactly those codebook
            # rows, so the first step decodes the input's codes.
            self.codes = self.vqgan.encode_to_codes(self.x)
            z = self.vqgan.quantize_codes(self.codes)
        self.z = z.detach().clone().requires_grad_(True)
        # A static step on CUDA keeps Adam's step counts on the device and reads nothing back, so
        # a graph can capture it; its state is created that way from the first step.
        capturable = self.params.cuda_graphs and self.x.device.type == "cuda"
        self.optimiser = torch.optim.Adam([self.z], lr=self.params.lr, capturable=capturable)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def steps(self, *, frames: bool = False) -> Iterator[StepOutput]:
        """The eager loop: `params.steps` times `forward` then `update`; see `StepOutput`.

        Nothing here reads a value back to the host: the loss goes to `losses` (read when a
        caller asks), and with `frames` the frame's copy to host memory is queued right after
        the decode, so on a GPU it lands while the backward pass still runs.
        """
        for i in range(self.params.steps):
            decoded, loss = self.forward()
            frame = frame_copy(decoded) if frames else None
            self.update(loss)
            self.losses.add(loss)
            del loss  # hold no graph across the yield
            yield i + 1, decoded, frame

    def draw_boxes(self, out: Tensor) -> None:
        """Draw the next step's crops from the run's crop stream into `out` [cutouts, 3] (side,
        x0, y0 per crop), without blocking on CUDA: what `forward(boxes=...)` cuts."""
        self.cutouts.boxes(self.crops, self.canvas, out.device, out=out)

    def forward(self, boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(decoded image detached, loss) of the current codes; `boxes`: crops drawn already
        (`draw_boxes`), otherwise this step draws its own."""
        precision, device = self.params.precision, self.x.device
        z_q = straight_through(self.z, self.vqgan.quantize_codes(self.codes))
        with networks(precision, device):
            decoded = self._decode(z_q)
        # Cutouts and their augmentations in fp32: cheap, and their noise is not rounded away.
        decoded = decoded.float()
        # Keep the gradient of pixels the decoder pushes past [0, 1] so the loss can pull them back.
        x01 = clamp_with_grad(decoded.add(1).div(2), 0.0, 1.0)
        cuts = self.cutouts(x01, self.generator, self.crops, boxes=boxes)
        with networks(precision, device):
            embeds = self._encode_image(self.clip.normalize(cuts))
        loss = weighted_prompt_loss(embeds.float(), self.text_embeds, self.weights)
        return decoded.detach(), loss

    def update(self, loss: Tensor) -> None:
        """Adam on z from `loss`, then clamp z and re-pick its codes, all in place."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            self.z.copy_(self.vqgan.clamp(self.z))
            # Quantised once per update, not again in the forward: the codes a step decodes are
            # those of the z it starts from (for step 1, the input's own codes).
            self.codes.copy_(self.vqgan.nearest_codes(self.z))

    @torch.no_grad()
    def decode_latent(self) -> Tensor:
        """The image of the current z, [1, 3, h, w] clamped to [-1, 1]."""
        with networks(self.params.precision, self.x.device):
            decoded = decode(self.vqgan, self.vqgan.quantize_codes(self.codes))
        return decoded.float().clamp(-1, 1)

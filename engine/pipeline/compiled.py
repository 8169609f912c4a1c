"""Opt-in `torch.compile` of the two networks of a stage-2/3 step: the VQGAN decoder and CLIP's image tower.

Their shapes are static for a run (the canvas, and `[cutouts, 3, 224, 224]`), so each compiles
once per canvas size and model; the cutouts between them (crop sizes drawn per step) stay eager.
The compiled callables are kept per model, so later jobs reuse them.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.vqgan import VQGAN
from engine.pipeline.decode import decode

Net = Callable[[Tensor], Tensor]
#: torch.compile's backend; tests swap in a graph-counting one (inductor's C++ build takes minutes).
BACKEND: str | Callable[..., object] = "inductor"
_NON_LEAF_GRAD = "The .grad attribute of a Tensor that is not a leaf"
_decoders: weakref.WeakKeyDictionary[VQGAN, dict[bool, Net]] = weakref.WeakKeyDictionary()
_towers: weakref.WeakKeyDictionary[ClipModel, Net] = weakref.WeakKeyDictionary()


def decoder(vqgan: VQGAN, *, checkpointed: bool, compile: bool) -> Net:
    """`decode(vqgan, z_q, checkpointed=...)`, compiled when asked."""
    plain = functools.partial(decode, vqgan, checkpointed=checkpointed)
    if not compile:
        return plain
    per_model = _decoders.setdefault(vqgan, {})
    if checkpointed not in per_model:
        per_model[checkpointed] = _quiet(torch.compile(plain, dynamic=False, backend=BACKEND))
    return per_model[checkpointed]


def image_tower(clip: ClipModel, *, compile: bool) -> Net:
    """`clip.encode_image`, compiled when asked (its shape check is static, so it compiles away)."""
    if not compile:
        return clip.encode_image
    if clip not in _towers:
        _towers[clip] = _quiet(torch.compile(clip.encode_image, dynamic=False, backend=BACKEND))
    return _towers[clip]


def _quiet(fn: Net) -> Net:
    """`fn` without the warning dynamo triggers itself while tracing a non-leaf input.

    Tracing reads `.grad` of every input to copy it into a fake tensor; z_q is the straight-through
    output (not a leaf), and the read warns although nothing in this code uses that `.grad`.
    """

    @functools.wraps(fn)
    def call(x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _NON_LEAF_GRAD, UserWarning)
            return fn(x)

    return call

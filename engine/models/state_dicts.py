"""Strict state-dict loading with errors that name the file and the first difference."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from spooky.errors import CheckpointMismatchError

_SHOWN = 6  # keys listed per kind of difference; the count says how many more there are


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{head}{more}"


def describe_mismatch(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Say how `state_dict` differs from what `module` expects (None when it fits exactly)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    parts = []
    if missing:
        parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_listing(unexpected)}")
    for key, want in expected.items():
        got = state_dict.get(key)
        if isinstance(got, torch.Tensor) and got.shape != want.shape:
            parts.append(
                f"first shape mismatch: {key} is {tuple(got.shape)} in the file, "
                f"{tuple(want.shape)} in the model"
            )
            break
    return "; ".join(parts) or None


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str,
    path: str | Path,
    hint: str,
) -> None:
    """Copy `state_dict` into `module`; any missing, extra or mis-shaped key is a CheckpointMismatchError."""
    problem = describe_mismatch(module, state_dict)
    if problem:
        if not any(k in state_dict for k in module.state_dict()):
            problem = f"none of the keys fit; {describe_contents(state_dict)}"
        raise CheckpointMismatchError(f"{what} at {path} does not fit the architecture: {problem}", hint=hint)
    # Tensors may arrive as fp16; copy_ casts them to the module's dtype (float32).
    module.load_state_dict(dict(state_dict), strict=True)


# Key names that identify each kind of model file: (what it is, keys that must all be present).
_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a rosinality StyleGAN2 checkpoint", ("g_ema",)),
    ("a PyTorch Lightning checkpoint (taming-transformers' last.ckpt)", ("state_dict", "global_step")),
    ("a CLIP state dict (OpenAI / open_clip)", ("token_embedding.weight", "visual.proj")),
    ("a CLIP state dict (OpenAI / open_clip)", ("token_embedding.weight", "visual.conv1.weight")),
    ("a taming VQGAN state dict", ("encoder.conv_in.weight", "decoder.conv_out.weight")),
    ("a bare StyleGAN2 generator state dict (no 'g_ema' wrapper)", ("style.1.weight", "conv1.conv.weight")),
)


def _groups(keys: list[str]) -> str:
    """Top-level names with how many keys sit under each: 'visual.* (150), logit_scale'."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    return _listing([f"{h}.* ({len(ks)})" if len(ks) > 1 else ks[0] for h, ks in groups.items()])


def describe_contents(obj: object) -> str:
    """A short account of what a loaded file holds, for errors about the wrong file."""
    if not isinstance(obj, Mapping):
        return f"it holds a {type(obj).__name__}, not a dict"
    keys = [str(k) for k in obj]
    kind = next((name for name, need in _SIGNATURES if all(k in obj for k in need)), None)
    looks = f"it looks like {kind}" if kind else "it is no model file SpookyGAN knows"
    return f"{looks}: {len(keys)} entries, {_groups(keys)}"

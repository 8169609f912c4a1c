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
        raise CheckpointMismatchError(f"{what} at {path} does not fit the architecture: {problem}", hint=hint)
    # Tensors may arrive as fp16; copy_ casts them to the module's dtype (float32).
    module.load_state_dict(dict(state_dict), strict=True)

"""Strict state-dict loading with errors that name the file and the first difference."""

from __future__ import annotations

import contextlib
import reprlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from spooky.errors import CheckpointMismatchError, CorruptWeightsError

_SHOWN = 6  # keys listed per kind of difference; the count says how many more there are


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{head}{more}"


_RANDOM_INIT = frozenset(
    {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_"}
    | {"xavier_normal_", "orthogonal_"}
)


class _SkipRandomInit(TorchFunctionMode):
    # A meta tensor has no values to draw; torch draws them anyway through its Python
    # decompositions, whose first use imports torch._dynamo (docs/operators.md has the cost).
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _RANDOM_INIT:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside have their shapes and no memory: a file is checked against them first."""
    with torch.device("meta"), _SkipRandomInit():
        yield


def tensor_problem(t: torch.Tensor) -> str | None:
    """What keeps `t` (read from a file) from being copied into a model's weights; None when nothing."""
    try:
        if t.is_nested:
            return "a nested tensor"
        if t.layout != torch.strided:
            return f"a sparse tensor ({t.layout})"
        if t.is_quantized:
            return "a quantized tensor"
        if t.is_meta:
            return "a tensor without data (on the meta device)"
        nbytes = t.untyped_storage().nbytes()
        if t.numel() * t.element_size() > nbytes:
            return f"a {tuple(t.shape)} view of {nbytes} bytes (its strides repeat the same data)"
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return f"a tensor whose data cannot be reached ({type(e).__name__}: {e})"
    return None


def check_state_dict(obj: object, *, what: str, path: str | Path, hint: str) -> dict[str, torch.Tensor]:
    """`obj` as a dict when it maps names to tensors that hold data; CorruptWeightsError otherwise."""
    if not isinstance(obj, Mapping):
        raise CorruptWeightsError(f"{what} at {path}: no state dict; {describe_contents(obj)}", hint=hint)
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CorruptWeightsError(
                f"{what} at {path}: one of its keys is {reprlib.repr(key)} ({type(key).__name__}), "
                "not a name; a state dict maps names to tensors",
                hint=hint,
            )
        if not isinstance(value, torch.Tensor):
            raise CorruptWeightsError(
                f"{what} at {path}: {reprlib.repr(key)} is a {type(value).__name__}, not a tensor", hint=hint
            )
        problem = tensor_problem(value)
        if problem:
            raise CorruptWeightsError(f"{what} at {path}: {reprlib.repr(key)} is {problem}", hint=hint)
    return dict(obj)


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
    shape = dtype = None
    for key, want in expected.items():
        got = state_dict.get(key)
        if not isinstance(got, torch.Tensor):
            continue
        if shape is None and got.shape != want.shape:
            shape = (
                f"first shape mismatch: {key} is {tuple(got.shape)} in the file, "
                f"{tuple(want.shape)} in the model"
            )
        if dtype is None and want.is_floating_point() and not got.is_floating_point():
            dtype = f"first dtype mismatch: {key} is {got.dtype} in the file, the model takes floating point"
    parts += [p for p in (shape, dtype) if p]
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
    copy_state_dict(module, state_dict, what=what, path=path, hint=hint)


def copy_state_dict(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str, path: str | Path, hint: str
) -> None:
    """`module.load_state_dict(state_dict)`, its refusal a CheckpointMismatchError naming the file."""
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(
            f"{what} at {path} could not be copied into the model: {e}", hint=hint
        ) from e


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

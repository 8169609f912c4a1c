"""VQGAN.nearest_codes keeps the squared code norms between steps and drops them when the codebook changes."""

from __future__ import annotations

import copy

import torch
from torch.overrides import TorchFunctionMode

from engine.models.vqgan import build_vqgan
from tests.engine.test_vqgan import toy_yaml


class _Pows(TorchFunctionMode):
    """Records the shape of every tensor squared while active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in (torch.Tensor.pow, torch.pow):
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def _brute_force(model, z: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return torch.cdist(flat, model.codebook.detach()).argmin(1).view(z.shape[0], *z.shape[2:])


def test_norms_are_computed_once_per_codebook() -> None:
    torch.manual_seed(0)
    model = build_vqgan(toy_yaml()).requires_grad_(False)
    z = torch.randn(1, 8, 4, 5) * 0.05
    model.nearest_codes(z)  # fills the cache
    with _Pows() as pows:
        for _ in range(3):
            codes = model.nearest_codes(z)
    codebook_shape = tuple(model.codebook.shape)
    assert codebook_shape not in pows.shapes, pows.shapes
    assert pows.shapes == [(20, 8)] * 3  # only z's own norms, every step
    assert torch.equal(codes, _brute_force(model, z))


def test_a_loaded_or_edited_codebook_is_searched_with_its_own_norms() -> None:
    torch.manual_seed(1)
    model = build_vqgan(toy_yaml()).requires_grad_(False)
    z = torch.randn(1, 8, 4, 5) * 0.05
    model.nearest_codes(z)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.codebook.mul_(3).add_(0.02)  # in place: the version counter moves
    assert torch.equal(other.nearest_codes(z), _brute_force(other, z))

    model.load_state_dict(other.state_dict())
    assert torch.equal(model.nearest_codes(z), _brute_force(other, z))

    with torch.no_grad():
        model.codebook.data.copy_(torch.randn_like(model.codebook) * 0.05)  # .data: no version bump
    model.refresh_codebook_range()
    assert torch.equal(model.nearest_codes(z), _brute_force(model, z))

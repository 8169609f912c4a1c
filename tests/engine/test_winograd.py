"""The decoder's 3x3 convolutions on NNPACK (engine.pipeline.winograd) against PyTorch's own."""

from __future__ import annotations

import pytest
import torch

from engine.pipeline import winograd
from engine.pipeline.winograd import conv3x3

needs_nnpack = pytest.mark.skipif(not winograd.available(), reason="this PyTorch build has no NNPACK")


def _conv(cin: int, cout: int, **kwargs: object) -> torch.nn.Conv2d:
    torch.manual_seed(cin * 31 + cout)
    return torch.nn.Conv2d(cin, cout, **{"kernel_size": 3, "padding": 1, **kwargs}).requires_grad_(False)


def _value_and_grad(fn, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    xx = x.clone().requires_grad_(True)
    out = fn(xx)
    (out * weight).sum().backward()
    return out.detach(), xx.grad


@needs_nnpack
@pytest.mark.parametrize(
    ("cin", "cout", "height", "width", "bias"),
    [(16, 16, 13, 9, True), (32, 3, 8, 20, True), (8, 24, 1, 1, True), (12, 12, 6, 7, False)],
)
def test_winograd_convolution_equals_the_direct_one(
    cin: int, cout: int, height: int, width: int, bias: bool
) -> None:
    conv = _conv(cin, cout, bias=bias)
    x = torch.randn(1, cin, height, width, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(1, cout, height, width, generator=torch.Generator().manual_seed(2))
    calls: list[str] = []
    original = torch._nnpack_spatial_convolution

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("nnpack")
        return original(*args, **kwargs)

    ref, ref_grad = _value_and_grad(conv, x, weight)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "_nnpack_spatial_convolution", counted)
        out, grad = _value_and_grad(lambda h: conv3x3(conv, h), x, weight)
    assert calls == ["nnpack", "nnpack"]  # the forward and the input gradient
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    # The same path twice is bit for bit the same (checkpointed decoding recomputes it).
    again, again_grad = _value_and_grad(lambda h: conv3x3(conv, h), x, weight)
    assert torch.equal(again, out) and torch.equal(again_grad, grad)


@pytest.mark.parametrize(
    "case", ["trainable weights", "channels_last", "bf16 autocast", "stride 2", "no padding", "5x5"]
)
def test_other_convolutions_run_unchanged(case: str) -> None:
    conv = {
        "stride 2": lambda: _conv(8, 8, stride=2),
        "no padding": lambda: _conv(8, 8, padding=0),
        "5x5": lambda: _conv(8, 8, kernel_size=5, padding=2),
    }.get(case, lambda: _conv(8, 8))()
    x = torch.randn(1, 8, 10, 12)
    if case == "trainable weights":
        conv.requires_grad_(True)
    if case == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "_nnpack_spatial_convolution", lambda *a, **k: calls.append(1))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16 autocast"):
            out = conv3x3(conv, x)
            ref = conv(x)
    assert calls == [] and torch.equal(out, ref)

"""Uploads with more than 8 bits per sample are converted by their real range, not clipped."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.pipeline.image_files import load_image


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _ramp(h: int = 16, w: int = 64) -> np.ndarray:
    """A left-to-right ramp from 0 to 1."""
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def test_a_16_bit_greyscale_png_keeps_its_greys():
    ramp = _ramp()
    data = _encoded(Image.fromarray(np.round(ramp * 65535).astype(np.uint16)), "PNG")
    got = np.asarray(load_image(data)).astype(int)
    want = np.round(ramp * 255).astype(int)
    assert got.shape == (*ramp.shape, 3)
    assert np.abs(got[..., 0] - want).max() <= 1
    assert (got[..., 0] == got[..., 2]).all()
    assert (got == 255).mean() < 0.05  # PIL's plain convert turns nearly all of it white


def test_a_float_tiff_in_0_1_is_not_black():
    ramp = _ramp().astype(np.float32)
    data = _encoded(Image.fromarray(ramp, mode="F"), "TIFF")
    got = np.asarray(load_image(data)).astype(int)
    assert np.abs(got[..., 1] - np.round(ramp * 255)).max() <= 1


def test_a_float_tiff_outside_0_1_is_stretched_from_its_own_range():
    ramp = (_ramp() * 4000.0 - 1000.0).astype(np.float32)
    data = _encoded(Image.fromarray(ramp, mode="F"), "TIFF")
    got = np.asarray(load_image(data)).astype(int)
    assert got.min() == 0 and got.max() == 255
    assert np.abs(got[..., 0] - np.round(_ramp() * 255)).max() <= 1


def test_an_8_bit_image_is_unchanged():
    rgb = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    assert (np.asarray(load_image(_encoded(Image.fromarray(rgb), "PNG"))) == rgb).all()

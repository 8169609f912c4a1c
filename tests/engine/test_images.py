"""Tensor <-> PIL conversions, PNG metadata, and refusing bad uploads."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.pipeline.image_files import load_image, png_bytes, png_metadata, save_png
from engine.pipeline.images import from_pil, to_pil
from spooky.errors import InvalidImageError


def png_of(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_to_pil_maps_both_value_ranges() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 5)
    img = to_pil(x)
    assert img.size == (5, 2) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 128, 255)
    still = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    assert to_pil(still, value_range=(0, 1)).getpixel((3, 3)) == (0, 128, 255)
    with pytest.raises(ValueError, match="one image"):
        to_pil(torch.zeros(2, 3, 4, 4))


def test_from_pil_round_trips() -> None:
    x = torch.rand(1, 3, 6, 7) * 2 - 1
    back = from_pil(to_pil(x))
    assert back.shape == (1, 3, 6, 7)
    assert (back - x).abs().max() <= 1 / 127.5 + 1e-6


def test_png_carries_its_metadata(tmp_path: Path) -> None:
    settings = json.dumps({"seed": 7, "steps": 40})
    meta = {"prompt": "dracula pale fangs", "seed": "7", "settings": settings, "preset": "tiny"}
    data = png_bytes(Image.new("RGB", (8, 8)), meta)
    assert png_metadata(data) == meta
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "sub" / "a.png", meta)
    assert png_metadata(path) == meta
    assert b"tEXtprompt\x00dracula pale fangs" in path.read_bytes()


def test_load_image_reads_a_good_upload() -> None:
    img = load_image(png_of(12, 9))
    assert img.size == (12, 9) and img.mode == "RGB"


def test_load_image_refuses_non_images_and_truncated_files() -> None:
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(b"GIF89 but not really" * 10)
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(b"")
    with pytest.raises(InvalidImageError, match="damaged or truncated"):
        load_image(png_of(64, 64)[:-60])


def test_load_image_refuses_a_decompression_bomb_before_decoding() -> None:
    # A valid PNG header that claims 100000x100000 pixels: only the header is read.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    def bomb(side: int) -> bytes:
        ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
        idat = zlib.compress(b"\0" * 1000)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

    # Under PIL's own hard limit: our limit refuses it from the header.
    with pytest.raises(InvalidImageError, match="10000x10000 = 100000000 pixels; the limit is 16777216"):
        load_image(bomb(10_000))
    # Over PIL's hard limit: PIL refuses it at open, still as our typed error.
    with pytest.raises(InvalidImageError, match="too large to decode safely"):
        load_image(bomb(100_000))
    with pytest.raises(InvalidImageError, match="12x9 = 108 pixels; the limit is 100"):
        load_image(png_of(12, 9), max_pixels=100)

"""Tensors <-> PIL images (the image files themselves: engine.pipeline.image_files)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pil(image: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Image.Image:
    """[1, 3, H, W] or [3, H, W] with values in `value_range` ((-1, 1) stage outputs, (0, 1) stills)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"to_pil expects [3, H, W] or [1, 3, H, W], got {list(image.shape)}")
    low, high = value_range
    x = (image.detach().float().cpu() - low) / (high - low)
    arr = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr)


def from_pil(image: Image.Image, device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB PIL image -> float [1, 3, H, W] in [-1, 1] on `device`."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1)
    return x.unsqueeze(0).to(device)

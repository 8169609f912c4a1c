"""Images as files, without torch: decoding untrusted uploads, and PNGs that carry their settings.

An API node checks uploads with these (it imports no torch); the renderer and the worker too.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from spooky.errors import InvalidImageError

#: Largest upload we decode (about 16 megapixels, e.g. 4096x4096). A decompression bomb declares
#: a huge size in a tiny file; the header is checked before any pixel is decoded.
DEFAULT_MAX_PIXELS = 4096 * 4096


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos resize to (w, h); the same image when it already has that size."""
    if image.size == tuple(size):
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """Encode as PNG with one tEXt chunk per metadata entry (e.g. prompt, seed, settings JSON)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `png_bytes` to `path` (creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image, metadata))
    return path


def png_metadata(source: bytes | Path | str) -> dict[str, str]:
    """The text chunks of a PNG (what `png_bytes` wrote)."""
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    with Image.open(io.BytesIO(data)) as img:
        return dict(getattr(img, "text", {}))


def load_image(source: bytes | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an untrusted image into RGB; InvalidImageError for non-images, truncation and bombs.

    Only the header is read before the size check, so a decompression bomb costs nothing; EXIF
    rotation is applied so phone photos come out upright; animations give their first frame.
    """
    name = str(source) if isinstance(source, str | Path) else "the upload"
    try:
        data = Path(source).read_bytes() if isinstance(source, str | Path) else bytes(source)
    except OSError as e:
        raise InvalidImageError(f"cannot read {name}: {e.strerror or e}") from e
    if not data:
        raise InvalidImageError(f"{name} is empty", hint="attach a PNG, JPEG, WebP or GIF image")
    try:
        # Our own limit is checked below; PIL's bomb warning must not turn into a test failure or
        # a log line, and its hard error (2x its limit) is mapped to ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidImageError(
                    f"{name} is {w}x{h} = {w * h} pixels; the limit is {max_pixels}",
                    hint="send a smaller image",
                )
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as e:
        raise InvalidImageError(f"{name} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise InvalidImageError(
            f"{name} is not an image PIL can read", hint="attach a PNG, JPEG, WebP or GIF image"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") or, for some
        # formats, SyntaxError/ValueError from the decoder.
        raise InvalidImageError(f"{name} is damaged or truncated: {e}", hint="send the file again") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB by the image's real range: PIL's own convert clips 16-bit and 32-bit greys at 255 (a
    16-bit PNG comes out nearly all white) and truncates floats in [0, 1] to 0 (a float TIFF is black).
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img.convert("RGB")
    import numpy as np  # only for these rare modes: an API node checking a PNG stays light

    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F":
        # Floats are conventionally in [0, 1]; anything else is stretched from its own min..max.
        scale_low, scale_high = (0.0, 1.0) if low >= 0.0 and high <= 1.0 else (low, high)
    else:
        # 16-bit greys (PIL gives "I" or "I;16"): the format's full range, unless values lie outside.
        scale_low, scale_high = (0.0, 65535.0) if low >= 0.0 and high <= 65535.0 else (low, high)
    span = scale_high - scale_low
    grey = np.zeros_like(arr) if span <= 0 else (arr - scale_low) / span
    out = np.clip(np.round(grey * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB")

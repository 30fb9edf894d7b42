"""Safe image decoding: bytes in, an RGB ``PIL.Image`` out, or an ``ImageError`` that says why.

Used by the TorchServe handler, the in-process embedder, the gateway (to refuse bad uploads before a
model call) and the index build. It imports no torch so the gateway stays light.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats we decode. Anything else is refused before Pillow's other decoders see the bytes.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF")
#: Decompression-bomb guard: refuse images with more pixels than this (checked before decoding).
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that is not a usable image. ``str(err)`` is safe to show to a user."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise ``ImageError`` with a clear reason.

    Handles EXIF rotation, animated images (first frame), palette/alpha (composited on white),
    CMYK and 16-bit greyscale. ``draft``: a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale, never
    below ``draft`` pixels on either side (the model resizes its input to about that anyway), which
    makes decoding a 12-megapixel photo several times cheaper.
    """
    if not data:
        raise ImageError("empty image: no bytes received")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not a supported image: send JPEG, PNG, WebP or GIF") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large: more than {max_pixels:,} pixels") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input, not a crash
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} is more than {max_pixels:,} pixels")
    if draft and img.format == "JPEG":
        img.draft(img.mode, (draft, draft))
    try:
        img.seek(0)  # first frame of GIF/WebP animations
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    try:
        return _to_rgb(img)
    except (ValueError, OSError) as exc:  # a pixel format Pillow cannot convert: the input's fault
        raise ImageError(f"unsupported image: {exc}") from None


def _top_byte(deep: np.ndarray) -> np.ndarray:
    """16/32-bit grey values scaled to 8 bits (value // 256, clipped to 0–255) in integers, in place of a
    float64 copy: a 24-megapixel 16-bit PNG costs 48 MB of uint16 and 24 MB of uint8, not 192 MB of floats."""
    deep = deep.astype(np.int32, copy=False) if deep.dtype != np.uint16 else deep  # byte order: native
    out = np.right_shift(deep, 8)
    if deep.dtype != np.uint16:  # 32-bit "I" may hold values below 0 or above 65,535
        np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB; transparent pixels become white, like a product page."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white (through NumPy:
        # Pillow's point() refuses the byte-ordered 16-bit modes).
        img = Image.fromarray(_top_byte(np.asarray(img)))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")

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
#: Memory one decode may take at its peak, estimated before decoding (``decode_cost``): a 24-megapixel RGB or
#: RGBA PNG fits, as does any JPEG up to ``max_pixels`` (decoded at reduced size); a 24-megapixel WebP does not.
DEFAULT_MAX_DECODE_BYTES = 256 * 1024 * 1024
#: Peak memory of a decode per byte of the decoded image, by format, measured (tests/test_imaging.py checks
#: each stays under its estimate): PNG and GIF hold the decoded image and one working copy, libjpeg its
#: buffers beside the image, Pillow's WebP decoder about four copies.
FORMAT_COST = {"JPEG": 3, "PNG": 2, "GIF": 2, "WEBP": 4}
#: Added to every estimate: the decoder's own buffers and the small copies made after shrinking.
DECODE_OVERHEAD = 32 * 1024 * 1024


#: What is wrong with an input, in kinds a gateway can word for a shopper.
IMAGE_KINDS = ("empty", "format", "damaged", "too_large")


class ImageError(ValueError):
    """An input that is not a usable image: ``str(err)`` says exactly why (for logs and API callers of the
    model server), ``kind`` (one of ``IMAGE_KINDS``) which kind of problem it is."""

    def __init__(self, message: str, kind: str = "damaged") -> None:
        super().__init__(message)
        self.kind = kind


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None,
                 max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise ``ImageError`` with a clear reason.

    Handles EXIF rotation, animated images (first frame), palette/alpha (composited on white),
    CMYK and 16-bit greyscale. ``draft``: a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale, never
    below ``draft`` pixels on either side (the model resizes its input to about that anyway), which
    makes decoding a 12-megapixel photo several times cheaper; any other format is shrunk the same way
    right after decoding. ``max_decode_bytes`` bounds the decode's estimated peak memory (``decode_cost``),
    checked before any pixel is decoded.
    """
    if not data:
        raise ImageError("empty image: no bytes received", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not a supported image: send JPEG, PNG, WebP or GIF", "format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large: more than {max_pixels:,} pixels", "too_large") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input, not a crash
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} is more than {max_pixels:,} pixels", "too_large")
    cost = decode_cost(img.format or "", img.mode, img.size, draft)
    if cost > max_decode_bytes:
        raise ImageError(f"image too large to open: {width}x{height} {img.format} needs about {cost >> 20} MB "
                         f"(the limit is {max_decode_bytes >> 20} MB); send a smaller or JPEG photo", "too_large")
    if draft and img.format == "JPEG":
        img.draft(img.mode, (draft, draft))
    try:
        img.seek(0)  # first frame of GIF/WebP animations
        img.load()
        if draft:
            img = shrink(img, draft)  # before any conversion: each later copy is of the small image
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    try:
        return _to_rgb(img)
    except (ValueError, OSError) as exc:  # a pixel format Pillow cannot convert: the input's fault
        raise ImageError(f"unsupported image: {exc}", "format") from None


def jpeg_scale(size: tuple[int, int], draft: int | None) -> int:
    """The reduction (1, 2, 4 or 8) a JPEG of ``size`` is decoded at for ``draft``: the largest keeping both
    sides at least ``draft`` pixels, as Pillow's ``draft`` chooses."""
    scale = 1
    while draft and scale < 8 and min(size) // (scale * 2) >= draft:
        scale *= 2
    return scale


def decode_cost(fmt: str, mode: str, size: tuple[int, int], draft: int | None) -> int:
    """Estimated peak bytes of decoding an image of ``fmt``/``mode``/``size``: the pixels decoded (a JPEG at
    its reduced scale) × bytes per pixel × the format's ``FORMAT_COST``, plus ``DECODE_OVERHEAD``."""
    scale = jpeg_scale(size, draft) if fmt == "JPEG" else 1
    pixels = -(-size[0] // scale) * -(-size[1] // scale)
    try:
        per_pixel = len(Image.new(mode, (1, 1)).tobytes())
    except ValueError:
        per_pixel = 4  # a mode Pillow cannot make: count the widest
    return pixels * per_pixel * FORMAT_COST.get(fmt, 4) + DECODE_OVERHEAD


#: Modes whose pixels may be averaged when shrinking; the others (palette indices, bilevel, byte-ordered 16-bit)
#: are sampled instead, since an average of two palette indices is a third, unrelated colour.
AVERAGED_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})


def shrink(img: Image.Image, side: int) -> Image.Image:
    """``img`` reduced by a whole factor that keeps both sides at least ``side`` pixels (itself when none does).

    What ``draft`` does for a JPEG inside its decoder, done after decoding for every other format, so that
    a large PNG, WebP or GIF costs one full-size copy, not one per conversion step."""
    factor = min(img.size) // side
    if factor < 2:
        return img
    if img.mode in AVERAGED_MODES:
        return img.reduce(factor)
    return img.resize((img.width // factor, img.height // factor), Image.Resampling.NEAREST)


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

"""Decoding of odd and hostile image bytes (handlers/imaging.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from handlers.imaging import ImageError, decode_image
from tests.conftest import demo_image, jpeg_bytes


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty image"),
        (b"hello, I am text", "not a supported image"),
        (jpeg_bytes()[:200], "corrupt or truncated"),
        (demo_image(10109)[: len(demo_image(10109)) // 2], "corrupt or truncated"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), "not a supported image"),
    ],
    ids=["empty", "text", "truncated-header", "truncated-scan", "bmp-not-allowed"],
)
def test_refuses_bad_bytes_with_reason(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_pixel_cap_refuses_before_decoding():
    big = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageError, match="too large"):
        decode_image(big, max_pixels=1_000_000)


def test_png_with_alpha_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30] * 256)
    out = decode_image(encode(img, "PNG", transparency=0))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_jpeg_and_16bit_png():
    cmyk = decode_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200
    grey16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    out = decode_image(encode(grey16, "PNG"))
    assert out.mode == "RGB" and 120 <= out.getpixel((0, 0))[0] <= 135  # scaled, not clipped to white


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(data).getpixel((0, 0))
    assert r > 200 and b < 50


def test_exif_rotation_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)

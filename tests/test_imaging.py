"""Decoding of odd and hostile image bytes (modelio/imaging.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelio import imaging
from modelio.imaging import ImageError, _to_rgb, decode_image
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


def fake_png(width: int, height: int) -> bytes:
    """A PNG header that claims ``width``×``height`` and carries no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_refusals_are_worded_for_people():
    for data, message in [(b"", "empty image: no bytes received"),
                          (b"GIF87", "not a supported image: send JPEG, PNG, WebP or GIF"),
                          (fake_png(7000, 7000), "image too large: 7000x7000 is more than 40,000,000 pixels"),
                          (fake_png(10000, 10000), "image too large: more than 40,000,000 pixels")]:
        with pytest.raises(ImageError) as refused:
            decode_image(data)
        assert str(refused.value) == message


def test_the_pixel_limit_admits_exactly_its_value():
    data = encode(Image.new("RGB", (100, 50), (1, 2, 3)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageError, match="100x50 is more than 4,999 pixels"):
        decode_image(data, max_pixels=4999)
    assert decode_image(encode(Image.new("RGB", (1, 1)), "PNG"), max_pixels=1).size == (1, 1)
    # The default: 40 million pixels. A header at the limit passes the size check (then has no pixel data).
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(fake_png(8000, 5000), max_decode_bytes=2**40)
    with pytest.raises(ImageError, match="8000x5001 is more than 40,000,000"):
        decode_image(fake_png(8000, 5001))


def test_a_large_jpeg_decodes_at_reduced_size_but_never_below_the_draft():
    data = encode(Image.new("RGB", (2000, 1000), (0, 0, 255)), "JPEG")
    assert decode_image(data).size == (2000, 1000)  # no draft: full size
    assert decode_image(data, draft=224).size == (500, 250)  # 1/4 keeps both sides ≥ 224 (1/8 would not)
    assert decode_image(data, draft=250).size == (500, 250)
    assert decode_image(data, draft=251).size == (1000, 500)
    reduced = decode_image(data, draft=224)
    assert reduced.mode == "RGB" and reduced.getpixel((10, 10))[2] > 240
    png = encode(Image.new("RGB", (2000, 1000)), "PNG")
    assert decode_image(png).size == (2000, 1000)
    assert decode_image(png, draft=224).size == (500, 250)  # other formats are shrunk right after decoding


@pytest.mark.parametrize(("size", "side", "shrunk"), [
    ((2000, 1000), 500, (1000, 500)), ((2000, 1000), 501, (2000, 1000)),
    ((999, 3000), 333, (333, 1000)), ((999, 3000), 334, (500, 1500))])
def test_shrinking_keeps_both_sides_at_least_the_draft_on_both_sides_of_each_factor(size, side, shrunk):
    from modelio.imaging import shrink

    assert shrink(Image.new("RGB", size), side).size == shrunk


def test_palette_images_are_sampled_not_averaged_when_shrunk():
    """An average of palette indices 0 and 2 would be index 1, a colour neither pixel has."""
    from modelio.imaging import shrink

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    for x in range(0, 8, 2):
        for y in range(8):
            palette.putpixel((x + 1, y), 2)
    small = shrink(palette, 2)
    assert small.size == (2, 2) and set(small.get_flattened_data()) <= {0, 2}
    out = decode_image(encode(palette, "PNG"), draft=2)
    assert set(out.get_flattened_data()) <= {(255, 0, 0), (0, 0, 255)}


@pytest.mark.parametrize(("fmt", "mode", "size", "draft", "expected"), [
    ("PNG", "RGB", (100, 50), None, 100 * 50 * 3 * 2),
    ("PNG", "RGBA", (100, 50), 1024, 100 * 50 * 4 * 2),
    ("PNG", "I;16", (10, 10), None, 10 * 10 * 2 * 2),
    ("WEBP", "RGB", (10, 10), None, 10 * 10 * 3 * 4),
    ("JPEG", "RGB", (4096, 2048), 1024, 2048 * 1024 * 3 * 3),  # decoded at 1/2: 1/4 would be under 1024 a side
    ("JPEG", "RGB", (4096, 2048), None, 4096 * 2048 * 3 * 3),
    ("JPEG", "CMYK", (8192, 8192), 1024, 1024 * 1024 * 4 * 3),  # 1/8 at most
])
def test_the_decode_cost_estimate(fmt, mode, size, draft, expected):
    from modelio.imaging import DECODE_OVERHEAD, decode_cost

    assert decode_cost(fmt, mode, size, draft) == expected + DECODE_OVERHEAD


def test_the_decode_memory_limit_admits_exactly_its_value():
    from modelio.imaging import decode_cost

    data = encode(Image.new("RGB", (100, 50), (1, 2, 3)), "PNG")
    cost = decode_cost("PNG", "RGB", (100, 50), None)
    assert decode_image(data, max_decode_bytes=cost).size == (100, 50)
    with pytest.raises(ImageError, match="100x50 PNG needs about 32 MB"):
        decode_image(data, max_decode_bytes=cost - 1)


PEAK_SCRIPT = """
import io, resource, sys
from PIL import Image
from modelio.imaging import decode_cost, decode_image
for fmt in ("PNG", "JPEG", "GIF", "WEBP"):  # load every decoder first: their code is not the image's cost
    b = io.BytesIO(); Image.new("RGB", (8, 8)).save(b, fmt); decode_image(b.getvalue(), draft=1024)
data = open(sys.argv[1], "rb").read()
probe = Image.open(io.BytesIO(data)); estimate = decode_cost(probe.format, probe.mode, probe.size, 1024); del probe
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_image(data, 10**9, draft=1024, max_decode_bytes=2**40)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, estimate)
"""


@pytest.mark.parametrize(("fmt", "mode", "size"), [
    ("PNG", "RGBA", (6000, 4000)), ("PNG", "RGB", (6000, 4000)), ("PNG", "I;16", (6000, 4000)),
    ("GIF", "P", (6000, 4000)), ("WEBP", "RGBA", (4000, 3000)), ("JPEG", "RGB", (6000, 4000))])
def test_a_decodes_peak_memory_stays_under_its_estimate(fmt, mode, size, tmp_path):
    """Measured in a fresh process (peak RSS): what the limit promises is what a decode takes."""
    import subprocess
    import sys

    image = Image.fromarray(np.zeros(size[::-1], np.uint16)) if mode == "I;16" else Image.new(mode, size, 7)
    path = tmp_path / f"big.{fmt.lower()}"
    image.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    del image
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    peak, estimate = map(int, out.stdout.split())
    assert peak <= estimate, f"{fmt} {mode} {size}: {peak >> 20} MB measured, {estimate >> 20} MB estimated"


def test_every_mode_becomes_rgb_with_its_colours():
    grey16 = Image.fromarray(np.array([[32768, 65535, 0]], dtype=np.uint16))
    out = decode_image(encode(grey16, "PNG"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(128, 128, 128), (255, 255, 255), (0, 0, 0)]
    palette = Image.new("P", (2, 1), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)
    assert decode_image(encode(palette, "PNG")).getpixel((0, 0)) == (10, 20, 30)  # no transparency: as drawn
    half = decode_image(encode(Image.new("RGBA", (1, 1), (255, 0, 0, 128)), "PNG")).getpixel((0, 0))
    assert half[0] == 255 and 125 <= half[1] == half[2] <= 128  # half-transparent red over white
    grey_alpha = Image.new("LA", (2, 1), (100, 255))
    grey_alpha.putpixel((1, 0), (100, 0))
    out = decode_image(encode(grey_alpha, "PNG"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(100, 100, 100), (255, 255, 255)]
    assert decode_image(encode(Image.new("L", (1, 1), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    assert decode_image(encode(Image.new("1", (1, 1), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (1, 1), (9, 8, 7))
    assert decode_image(encode(rgb, "PNG")).getpixel((0, 0)) == (9, 8, 7)


def test_exif_rotation_moves_the_pixels():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the left half becomes the top
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.getpixel((10, 5))[0] > 200 and out.getpixel((10, 35))[0] < 50


@pytest.mark.parametrize("mode", ["I", "I;16", "I;16B", "I;16L"])
def test_every_deep_grey_mode_is_scaled_to_eight_bits(mode):
    img = Image.new(mode, (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        img.putpixel((x, 0), value)
    out = _to_rgb(img)  # Pillow's point() used to refuse the byte-ordered modes with a ValueError
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_every_mode_with_alpha_is_composited_on_white(mode):
    img = Image.new(mode, (2, 1))
    if mode == "PA":
        img.putpalette([10, 20, 30] * 256)
    img.putpixel((0, 0), (0, 0, 0, 255) if mode == "RGBA" else (0, 255))
    img.putpixel((1, 0), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    out = _to_rgb(img)
    opaque = (10, 20, 30) if mode == "PA" else (0, 0, 0)
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(2)] == [opaque, (255, 255, 255)]


def test_a_pixel_format_that_cannot_be_converted_is_a_clear_refusal(monkeypatch):
    def refuse(img):
        raise ValueError("conversion from XYZ not supported")

    monkeypatch.setattr(imaging, "_to_rgb", refuse)
    with pytest.raises(ImageError) as refused:
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"))
    assert str(refused.value) == "unsupported image: conversion from XYZ not supported"


def test_deep_grey_is_scaled_in_integers_exactly_as_dividing_by_256():
    """Every 16-bit value and 32-bit values past both ends give value // 256, clipped: what the float64 path
    gave, with a fraction of its memory."""
    from modelio.imaging import _top_byte

    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(_top_byte(every), (every.astype(np.float64) / 256).astype(np.uint8))
    assert np.array_equal(_top_byte(every.astype(">u2")), _top_byte(every))  # big-endian (I;16B) as well
    wide = np.array([-70000, -1, 0, 255, 256, 65535, 65536, 10**9], dtype=np.int32)
    assert _top_byte(wide).tolist() == [0, 0, 0, 0, 1, 255, 255, 255]


def test_a_large_16_bit_png_decodes_without_a_float_copy():
    import tracemalloc

    img = Image.fromarray(np.full((1000, 2000), 40000, dtype=np.uint16))  # 2 megapixels, 4 MB of samples
    data = encode(img, "PNG")
    tracemalloc.start()
    out = decode_image(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.size == (2000, 1000) and out.getpixel((5, 5)) == (156, 156, 156)
    assert peak < 6 * 2_000_000  # the float64 path alone took 8 bytes per pixel (16 MB here)

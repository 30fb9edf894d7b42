"""Query-image crop and picture (gateway/images.py): each limit on both sides."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gateway.errors import BadRequest
from gateway.images import MIN_CROP_PX, PICTURE_SIDE, Crop, cropped, picture


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", (width, height), "white")
    img.paste((200, 0, 0), (width // 2, 0, width, height))  # right half red
    img.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("text", ["0,0,1,1", "0.25,0.5,0.75,1", " 0 , 0 , 1 , 1 "])
def test_crops_in_range_parse(text):
    assert isinstance(Crop.parse(text), Crop)


@pytest.mark.parametrize("text", ["", None, "  "])
def test_no_crop(text):
    assert Crop.parse(text) is None


@pytest.mark.parametrize("text", ["-0.001,0,1,1", "0,0,1.001,1", "0,-0.001,1,1", "0,0,1,1.001", "0.5,0,0.5,1",
                                  "0,0.5,1,0.5", "0.6,0,0.5,1", "0,0,1", "0,0,1,1,1", "a,b,c,d", "nan,0,1,1",
                                  "0,0,inf,1"])
def test_crops_out_of_range_or_malformed_are_refused(text):
    with pytest.raises(BadRequest, match="selected area"):
        Crop.parse(text)


def test_the_smallest_crop_on_both_sides():
    width = 100
    exact = Crop(0, 0, MIN_CROP_PX / width, MIN_CROP_PX / width)
    assert exact.box(width, width) == (0, 0, MIN_CROP_PX, MIN_CROP_PX)
    one_less = Crop(0, 0, (MIN_CROP_PX - 1) / width, 1)
    with pytest.raises(BadRequest, match="too small"):
        one_less.box(width, width)


def test_cropped_keeps_only_the_region():
    out = Image.open(io.BytesIO(cropped(png(200, 100), Crop(0.5, 0, 1, 1), 10**7)))
    assert out.size == (100, 100)
    r, g, b = out.convert("RGB").getpixel((50, 50))
    assert r > 180 and g < 40 and b < 40  # red: the right half


def test_the_picture_is_a_small_jpeg_data_url():
    url = picture(png(1000, 500), 10**7)
    assert url.startswith("data:image/jpeg;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert shown.format == "JPEG" and max(shown.size) == PICTURE_SIDE

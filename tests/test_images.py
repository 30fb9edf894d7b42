"""Query-image crop and picture (gateway/images.py): each limit on both sides."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from gateway import images
from gateway.config import Config
from gateway.errors import BadRequest, Busy
from gateway.images import CROP_MARGIN, MIN_CROP_PX, PICTURE_SIDE, Crop, QueryImage, on_studio_background
from modelio.imaging import ImageError


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


def test_cropped_keeps_only_the_region_on_the_studio_background():
    region = QueryImage.decode(png(200, 100), 10**7).cropped(Crop(0.5, 0, 1, 1))
    assert region.image.size == (100, 100)  # what the colour histogram and the picture read: the region
    out = Image.open(io.BytesIO(region.data)).convert("RGB")  # what the model is sent: it, centred on white
    assert out.size == (110, 110) and CROP_MARGIN == 0.10
    r, g, b = out.getpixel((55, 55))
    assert r > 180 and g < 40 and b < 40  # red: the right half
    assert min(out.getpixel((1, 1))) > 240 and min(out.getpixel((108, 108))) > 240  # the margin: white


def test_a_wide_crop_is_centred_on_a_square_a_margin_wider_than_its_longer_side():
    wide = on_studio_background(Image.new("RGB", (200, 50), (0, 0, 255)))
    assert wide.size == (220, 220)
    assert wide.getpixel((110, 110)) == (0, 0, 255) and wide.getpixel((110, 80)) == (255, 255, 255)
    assert wide.getpixel((10, 110)) == (0, 0, 255) and wide.getpixel((8, 110)) == (255, 255, 255)
    tall = on_studio_background(Image.new("L", (10, 40), 0))
    assert tall.size == (44, 44) and tall.mode == "RGB" and tall.getpixel((22, 2)) == (0, 0, 0)
    assert tall.getpixel((16, 22)) == (255, 255, 255) and tall.getpixel((17, 22)) == (0, 0, 0)


def test_the_picture_is_a_small_jpeg_data_url():
    url = QueryImage.decode(png(1000, 500), 10**7).picture()
    assert url.startswith("data:image/jpeg;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert shown.format == "JPEG" and max(shown.size) == PICTURE_SIDE


def test_the_box_in_pixels_with_offsets():
    assert Crop(0.25, 0.5, 0.75, 1).box(200, 100) == (50, 50, 150, 100)
    # the size is measured from the box's own left and top, not from the photo's corner
    with pytest.raises(BadRequest, match="too small"):
        Crop(0.5, 0.0, 0.5 + (MIN_CROP_PX - 1) / 100, 1).box(100, 100)
    with pytest.raises(BadRequest, match="too small"):
        Crop(0.0, 0.5, 1, 0.5 + (MIN_CROP_PX - 1) / 100).box(100, 100)
    assert Crop(0.5, 0.5, 0.5 + MIN_CROP_PX / 100, 0.5 + MIN_CROP_PX / 100).box(100, 100) == (50, 50, 66, 66)


@pytest.mark.parametrize(("text", "message"), [
    ("a,b,c,d", "the selected area is not valid: draw the box again (crop is left,top,right,bottom, each between "
                "0 and 1)"),
    ("0.6,0,0.5,1", "the selected area is outside the photo: draw the box again (crop is left,top,right,bottom, "
                    "each between 0 and 1, left < right, top < bottom)"),
])
def test_crop_refusals_word_for_word(text, message):
    with pytest.raises(BadRequest) as caught:
        Crop.parse(text)
    assert caught.value.message == message


def test_the_pixel_limit_on_both_sides():
    data = png(100, 50)  # 5,000 pixels
    assert QueryImage.decode(data, 5000).image.size == (100, 50)
    with pytest.raises(ImageError, match="too large"):
        QueryImage.decode(data, 4999)


class Slow:
    """Stands in for safe_get: records its arguments, and holds each fetch until released."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.release = threading.Event()

    def __call__(self, *args, **kwargs) -> bytes:
        self.calls.append((args, kwargs))
        self.release.wait(5)
        return b"image"


def test_fetch_slots_limit_on_both_sides(monkeypatch):
    slow = Slow()
    monkeypatch.setattr(images, "safe_get", slow)
    config = Config(max_upload_mb=2, url_fetch_timeout=7, allow_private_urls=True, allowed_image_networks="10.0.0.0/8")
    slots = images.FetchSlots(2)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(slots.fetch, f"http://x/{i}.jpg", config) for i in range(2)]
        while len(slow.calls) < 2:  # both slots taken (bounded: each call waits at most 5 s)
            time.sleep(0.01)
        with pytest.raises(Busy, match="too many image links"):
            slots.fetch("http://x/3.jpg", config)  # one past the limit
        slow.release.set()
        assert [f.result() for f in held] == [b"image", b"image"]
    assert slots.fetch("http://x/4.jpg", config) == b"image"  # the slots came back
    args, kwargs = slow.calls[-1]
    assert args == ("http://x/4.jpg", 2 * 1024 * 1024, 7, True)
    assert kwargs == {"user_agent": images.USER_AGENT, "allow_networks": ("10.0.0.0/8",)}


DECODES = images.DecodeSlots(2)


class Slots:
    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def fetch(self, url: str, config: Config) -> bytes:
        self.asked.append((url, config))
        return self.data


def test_query_image_takes_the_upload_then_the_link():
    config = Config()
    jpeg = png(40, 40)
    slots = Slots(png(30, 30))
    assert images.query_image(jpeg, "http://x/a.jpg", config, slots, DECODES).data == jpeg and slots.asked == []
    assert images.query_image(None, " http://x/a.jpg ", config, slots, DECODES).data == slots.data
    assert slots.asked == [(" http://x/a.jpg ", config)]
    with pytest.raises(BadRequest) as none:
        images.query_image(None, "  ", config, slots, DECODES)
    assert none.value.message == "no image: choose or drop a photo, or paste a link to one"
    with pytest.raises(BadRequest) as empty:
        images.query_image(b"", "", config, slots, DECODES)
    assert empty.value.message == "the uploaded file is empty"


def test_query_image_checks_the_pixel_limit_on_both_sides():
    data = png(100, 50)
    assert images.query_image(None, "http://x", Config(max_pixels=5000), Slots(data), DECODES).data == data
    with pytest.raises(ImageError, match="too large"):
        images.query_image(None, "http://x", Config(max_pixels=4999), Slots(data), DECODES)


def test_a_crop_is_measured_before_it_is_parsed():
    from gateway.images import MAX_CROP_CHARS

    padded = "0.1,0.1,0.9," + "0.9".ljust(MAX_CROP_CHARS - len("0.1,0.1,0.9,"), "0")  # exactly the limit
    assert len(padded) == MAX_CROP_CHARS and Crop.parse(padded) == Crop(0.1, 0.1, 0.9, 0.9)
    with pytest.raises(BadRequest, match="not valid"):
        Crop.parse(padded + "0")
    with pytest.raises(BadRequest, match="not valid"):
        Crop.parse("," * 10_000_000)  # a 10 MB field: refused by its length, never split
    assert Crop.parse(" " * MAX_CROP_CHARS) is None


def test_query_image_checks_the_decode_memory_limit_on_both_sides():
    """A 100×50 RGB PNG is estimated at 100·50·3·2 bytes plus the overhead: that many MB passes, one byte less
    does not (the estimate is checked before any pixel is decoded)."""
    from modelio.imaging import decode_cost

    data = png(100, 50)
    cost = decode_cost("PNG", "RGB", (100, 50), images.DECODE_SIDE)
    assert images.query_image(None, "http://x", Config(max_decode_mb=cost / 2**20), Slots(data), DECODES).data == data
    with pytest.raises(ImageError, match="too large to open"):
        images.query_image(None, "http://x", Config(max_decode_mb=(cost - 1) / 2**20), Slots(data), DECODES)


def test_decodes_wait_for_a_turn_and_a_long_wait_is_busy():
    """With one slot taken, a second decode waits; past its wait it gets 503 in the shopper's words; when the
    slot comes back decoding works again."""
    import threading

    from gateway.errors import Busy

    slots = images.DecodeSlots(1, wait_s=0.2)
    slots._slots.acquire()  # another request is decoding
    with pytest.raises(Busy) as busy:
        slots.decode(png(20, 20), Config())
    assert busy.value.message == "too many photos are being opened right now; try again in a moment"
    threading.Timer(0.05, slots._slots.release).start()  # the other decode ends while this one waits
    assert slots.decode(png(20, 20), Config()).image.size == (20, 20)

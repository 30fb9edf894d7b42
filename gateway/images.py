"""Query images from strangers: the upload or the bytes behind an image URL, decoded once (``QueryImage``)
before any model call.

Refusals raise the error of the layer that found them (``BadRequest``, ``UnsafeURL``, ``ImageError``);
gateway/routes/errors.py turns each into its answer.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from dataclasses import dataclass, field

from PIL import Image

from gateway.config import Config
from gateway.errors import BadRequest, Busy
from modelio.imaging import DEFAULT_MAX_DECODE_BYTES, decode_image
from safeio.safe_http import safe_get

USER_AGENT = "photo-gateway/0.1"
#: A query is decoded once, a large JPEG at reduced size but never below this many pixels a side: enough for
#: a crop of a fifth of the photo to keep the model's 224 pixels, and a 24-megapixel JPEG costs 1/4 of a
#: full decode (1/2 scale, 3000 × 2000).
DECODE_SIDE = 1024
#: A crop must keep at least this many pixels of the image on each side.
MIN_CROP_PX = 16
#: A cropped region is sent to the model at most this large (it resizes to 224 anyway).
CROP_MAX_SIDE = 1024
#: A crop is searched as the catalog photographs a product: centred on a square of the studio background, with
#: this margin on its longer side. The model's centre crop (224 of 256) would otherwise cut the item's edges,
#: and the scene around a tight box would vote (docs/QUALITY.md, shopper photos: recall@1 0.63 → 0.83).
CROP_MARGIN = 0.10
#: The catalog's studio background (the sample and Myntra catalogs: white).
STUDIO_BACKGROUND = (255, 255, 255)
#: The query picture the page shows (and crops again) is at most this large.
PICTURE_SIDE = 384


class FetchSlots:
    """At most ``limit`` image-URL fetches at once in this process: slow hosts cannot take every thread."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def fetch(self, image_url: str, config: Config) -> bytes:
        if not self._slots.acquire(blocking=False):
            raise Busy("too many image links are being fetched right now; try again in a moment, or upload "
                       "the photo instead")
        try:
            fetch = config.fetch
            return safe_get(image_url, fetch.max_bytes, fetch.timeout_s, fetch.allow_private, user_agent=USER_AGENT,
                            allow_networks=fetch.networks)
        finally:
            self._slots.release()


class DecodeSlots:
    """At most ``limit`` query decodes at once in this process, so that a worker's decoding memory is bounded
    (``limit`` × ``MAX_DECODE_MB``); a request that finds none free within ``wait_s`` gets 503."""

    def __init__(self, limit: int, wait_s: float = 10.0) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self.wait_s = wait_s

    def decode(self, data: bytes, config: Config) -> QueryImage:
        if not self._slots.acquire(timeout=self.wait_s):
            raise Busy("too many photos are being opened right now; try again in a moment")
        try:
            return QueryImage.decode(data, config.max_pixels, int(config.max_decode_mb * 1024 * 1024))
        finally:
            self._slots.release()


def query_image(upload: bytes | None, image_url: str, config: Config, slots: FetchSlots,
                decodes: DecodeSlots) -> QueryImage:
    """The uploaded photo, else the one behind ``image_url``; decoded once (``ImageError`` when it is not one)."""
    if upload is not None:
        if not upload:
            raise BadRequest("the uploaded file is empty")
        data = upload
    elif image_url.strip():
        data = slots.fetch(image_url, config)
    else:
        raise BadRequest("no image: choose or drop a photo, or paste a link to one")
    return decodes.decode(data, config)


@dataclass(frozen=True)
class QueryImage:
    """A query photo decoded once: its check, crop, colour histogram and the picture the page shows all read
    ``image``; the model is sent ``data`` (the bytes as received, or the crop as a JPEG)."""

    data: bytes
    image: Image.Image = field(repr=False)

    @classmethod
    def decode(cls, data: bytes, max_pixels: int, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> QueryImage:
        """The one decode of a query: a large JPEG at reduced size, any other format shrunk right after, never
        below ``DECODE_SIDE`` a side; its peak memory at most ``max_decode_bytes`` (estimated before)."""
        return cls(data, decode_image(data, max_pixels, draft=DECODE_SIDE, max_decode_bytes=max_decode_bytes))

    def cropped(self, crop: Crop) -> QueryImage:
        """The ``crop`` region, at most ``CROP_MAX_SIDE`` pixels a side; the model is sent it as a JPEG on the
        studio background (``on_studio_background``, no decode), the colour and the picture read the region."""
        region = self.image.crop(crop.box(*self.image.size))
        region.thumbnail((CROP_MAX_SIDE, CROP_MAX_SIDE))
        out = io.BytesIO()
        on_studio_background(region).save(out, "JPEG", quality=92)
        return QueryImage(out.getvalue(), region)

    def picture(self) -> str:
        """The query picture the page shows: a small JPEG as a ``data:`` URL (no second request, no storage)."""
        img = self.image.copy()
        img.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def on_studio_background(region: Image.Image) -> Image.Image:
    """``region`` centred on a square of ``STUDIO_BACKGROUND``, ``CROP_MARGIN`` wider than its longer side."""
    side = max(1, round(max(region.size) * (1 + CROP_MARGIN)))
    canvas = Image.new("RGB", (side, side), STUDIO_BACKGROUND)
    canvas.paste(region.convert("RGB"), ((side - region.width) // 2, (side - region.height) // 2))
    return canvas


#: The longest crop a page sends is four numbers of a few digits: far below this.
MAX_CROP_CHARS = 100
NOT_A_BOX = ("the selected area is not valid: draw the box again (crop is left,top,right,bottom, each between 0 "
             "and 1)")


@dataclass(frozen=True)
class Crop:
    """A region of the query image as fractions of its width and height, measured from the top left."""

    left: float
    top: float
    right: float
    bottom: float

    def fractions(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom)."""
        return self.left, self.top, self.right, self.bottom

    @classmethod
    def parse(cls, text: object) -> Crop | None:
        """``"left,top,right,bottom"`` (fractions, 0 to 1); None for no crop; ``BadRequest`` when malformed."""
        if text is None:
            return None
        raw = str(text)
        if len(raw) > MAX_CROP_CHARS:  # checked before any parsing: a 10 MB field costs nothing
            raise BadRequest(NOT_A_BOX)
        if not raw.strip():
            return None
        try:
            parts = [float(part) for part in raw.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 4 or not all(math.isfinite(p) for p in parts):
            raise BadRequest(NOT_A_BOX)
        crop = cls(*parts)
        if not (0 <= crop.left < crop.right <= 1 and 0 <= crop.top < crop.bottom <= 1):
            raise BadRequest("the selected area is outside the photo: draw the box again (crop is "
                             "left,top,right,bottom, each between 0 and 1, left < right, top < bottom)")
        return crop

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The region in pixels of a ``width`` × ``height`` image; ``BadRequest`` when it is too small."""
        box = (round(self.left * width), round(self.top * height), round(self.right * width),
               round(self.bottom * height))
        if box[2] - box[0] < MIN_CROP_PX or box[3] - box[1] < MIN_CROP_PX:
            raise BadRequest(f"the selected area is too small: draw a bigger box around the product (at least "
                             f"{MIN_CROP_PX} pixels of the photo each way)")
        return box

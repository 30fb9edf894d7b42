"""Query images from strangers: the upload or the bytes behind an image URL, checked before any model call.

Refusals raise the error of the layer that found them (``BadRequest``, ``UnsafeURL``, ``ImageError``);
routes.py turns each into its answer.
"""

from __future__ import annotations

import threading

from werkzeug.datastructures import FileStorage

from catalog.safe_http import safe_get
from gateway.config import Config
from gateway.errors import BadRequest, Busy
from handlers.imaging import decode_image

USER_AGENT = "photo-gateway/0.1"
#: The check decodes a large JPEG at reduced size, never below this many pixels a side (2× the model's
#: input): a 24-megapixel JPEG then costs a few megabytes and milliseconds, not hundreds.
CHECK_DRAFT = 448


class FetchSlots:
    """At most ``limit`` image-URL fetches at once in this process: slow hosts cannot take every thread."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def fetch(self, image_url: str, config: Config) -> bytes:
        if not self._slots.acquire(blocking=False):
            raise Busy("too many image links are being fetched right now; try again in a moment, or upload "
                       "the photo instead")
        try:
            return safe_get(image_url, int(config.max_upload_mb * 1024 * 1024), config.url_fetch_timeout,
                            config.allow_private_urls, user_agent=USER_AGENT, allow_networks=config.image_networks)
        finally:
            self._slots.release()


def query_image(upload: FileStorage | None, image_url: str, config: Config, slots: FetchSlots) -> bytes:
    """The uploaded file, or the bytes behind ``image_url``; checked to be a decodable image."""
    if upload is not None and upload.filename:
        data = upload.read()
        if not data:
            raise BadRequest("the uploaded file is empty")
    elif image_url.strip():
        data = slots.fetch(image_url, config)
    else:
        raise BadRequest("no image: choose or drop a photo, or paste a link to one")
    decode_image(data, config.max_pixels, draft=CHECK_DRAFT)
    return data

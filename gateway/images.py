"""Query images from strangers: the upload or the bytes behind an image URL, checked before any model call.

Refusals raise the error of the layer that found them (``BadRequest``, ``UnsafeURL``, ``ImageError``);
routes.py turns each into its answer.
"""

from __future__ import annotations

from werkzeug.datastructures import FileStorage

from catalog.safe_http import safe_get
from gateway.config import Config
from gateway.errors import BadRequest
from handlers.imaging import decode_image

USER_AGENT = "photo-gateway/0.1"


def query_image(upload: FileStorage | None, image_url: str, config: Config) -> bytes:
    """The uploaded file, or the bytes behind ``image_url``; checked to be a decodable image."""
    if upload is not None and upload.filename:
        data = upload.read()
        if not data:
            raise BadRequest("the uploaded file is empty")
    elif image_url.strip():
        data = safe_get(image_url, int(config.max_upload_mb * 1024 * 1024), config.url_fetch_timeout,
                        config.allow_private_urls, user_agent=USER_AGENT, allow_networks=config.image_networks)
    else:
        raise BadRequest("no image: upload a file (field 'file') or give an image_url")
    decode_image(data, config.max_pixels)
    return data

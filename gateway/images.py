"""Query images from strangers: uploads and URLs, checked before any model call."""

from __future__ import annotations

from catalog.safe_http import UnsafeURL, safe_get
from handlers.imaging import ImageError, decode_image


class QueryImageError(ValueError):
    """Bad query image input; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse anything the model could not embed, with the decoder's reason."""
    try:
        decode_image(data, max_pixels)
    except ImageError as exc:
        raise QueryImageError(str(exc)) from None


def fetch_url(url: str, max_bytes: int, timeout: float, allow_private: bool = False,
              allow_networks: tuple[str, ...] = ()) -> bytes:
    """Download a query image URL with every SSRF guard of ``catalog.safe_http``."""
    try:
        return safe_get(url, max_bytes, timeout, allow_private, user_agent="photo-gateway/0.1",
                        allow_networks=allow_networks)
    except UnsafeURL as exc:
        raise QueryImageError(str(exc), exc.status) from None

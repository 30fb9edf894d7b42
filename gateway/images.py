"""Query images from strangers: uploads and URLs, checked before any model call.

URL fetching refuses non-http(s) schemes and, unless ``allow_private`` is set, hosts that resolve to
loopback, private, link-local or otherwise non-public addresses; it streams with a byte cap and
timeouts and follows at most ``MAX_REDIRECTS`` redirects, checking every hop.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import requests

from handlers.imaging import ImageError, decode_image

MAX_REDIRECTS = 3
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


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


def _check_host(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise QueryImageError("image_url must start with http:// or https://")
    if not parts.hostname:
        raise QueryImageError("image_url has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise QueryImageError(f"cannot resolve host {parts.hostname!r}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        if not (mapped or addr).is_global:
            raise QueryImageError(f"image_url host {parts.hostname!r} is not a public address")


def fetch_url(url: str, max_bytes: int, timeout: float, allow_private: bool = False) -> bytes:
    """Download an image URL with every guard; ``QueryImageError`` says what was wrong."""
    url = url.strip()
    with requests.Session() as session:
        for _ in range(MAX_REDIRECTS + 1):
            _check_host(url, allow_private)
            try:
                resp = session.get(url, stream=True, timeout=(min(timeout, 5.0), timeout), allow_redirects=False)
            except requests.Timeout:
                raise QueryImageError(f"image_url timed out after {timeout:g}s", 400) from None
            except requests.RequestException as exc:
                raise QueryImageError(f"could not fetch image_url ({type(exc).__name__})") from None
            with resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise QueryImageError(f"image_url answered HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype and ctype not in IMAGE_TYPES and ctype != "application/octet-stream":
                    raise QueryImageError(f"image_url is not an image (content-type {ctype})")
                chunks, size = [], 0
                for chunk in resp.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise QueryImageError(f"image_url is larger than {max_bytes // (1024 * 1024)} MB", 413)
                    chunks.append(chunk)
                return b"".join(chunks)
    raise QueryImageError(f"image_url redirected more than {MAX_REDIRECTS} times")

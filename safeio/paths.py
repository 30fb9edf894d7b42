"""Catalog image locations: an http(s) URL, or a path relative to the catalog's folder that may not leave it.

Shared by the index build (reading local catalog images) and the gateway (serving them under /catalog/).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class UnsafePath(ValueError):
    """A catalog image path that is unusable or points outside the catalog folder."""


def is_remote(image_url: str) -> bool:
    return urlsplit(image_url).scheme.lower() in ("http", "https")


#: Longest product link kept (browsers and proxies handle this much everywhere).
MAX_PRODUCT_URL = 2_048


def product_link(text: object) -> str | None:
    """``text`` when it is a link a card may follow: an absolute http(s) URL with a host, no user name or
    password, no spaces or control characters, at most ``MAX_PRODUCT_URL`` characters; else None."""
    if not isinstance(text, str) or not text or len(text) > MAX_PRODUCT_URL:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    return text


def resolve_local(image_url: str, root: Path) -> Path:
    """A catalog-relative path, refused if it escapes ``root`` (``..``, absolute, symlinks)."""
    if urlsplit(image_url).scheme:
        raise UnsafePath(f"unsupported URL scheme in {image_url!r}: use http, https or a relative path")
    if "\0" in image_url:
        raise UnsafePath("path contains a NUL byte")
    root = root.resolve()
    try:
        path = (root / image_url).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # symlink loops, over-long names
        raise UnsafePath(f"unusable path {image_url!r}: {exc}") from None
    if not path.is_relative_to(root):
        raise UnsafePath(f"path escapes the catalog folder: {image_url}")
    return path


def redact_url(url: str) -> str:
    """``url`` without its query string and fragment (signed URLs carry credentials there), for reports."""
    if not is_remote(url):
        return url
    parts = urlsplit(url)
    hidden = "?…" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")) + hidden


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, CR) shown escaped."""
    clean = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return clean if len(clean) <= limit else clean[:limit] + "…"


def cache_home(xdg_cache_home: str = "") -> Path:
    """This project's folder in the user's cache: under ``xdg_cache_home`` (the ``XDG_CACHE_HOME`` setting),
    else ~/.cache. Index copies and downloaded catalog images live there."""
    return Path(xdg_cache_home or Path.home() / ".cache") / "photo"

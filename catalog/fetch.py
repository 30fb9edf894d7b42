"""Get a catalog image's bytes: a local path inside the catalog folder, or an http(s) URL via a cache.

The cache is keyed by URL, so a second build downloads nothing; ``refresh=True`` re-downloads.
Downloads go through ``safeio.safe_http``: private and loopback hosts only with ``allow_private``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

from safeio.paths import UnsafePath, is_remote, redact_url, resolve_local
from safeio.safe_http import UnsafeURL, safe_get

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
USER_AGENT = "photo-index-builder/0.1"


class FetchError(RuntimeError):
    """The image could not be obtained; the message is one line for the error report."""


class ImageSource:
    """Thread-safe fetcher with a download cache and counters for the build report."""

    def __init__(
        self,
        root: Path,
        cache_dir: Path,
        timeout: float = 15.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        refresh: bool = False,
        allow_private: bool = False,
    ) -> None:
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.refresh = refresh
        self.allow_private = allow_private
        self.downloads = 0
        self.cache_hits = 0
        self._lock = threading.Lock()

    def fetch(self, image_url: str) -> bytes:
        if not is_remote(image_url):
            try:
                path = resolve_local(image_url, self.root)
            except UnsafePath as exc:
                raise FetchError(str(exc)) from None
            return self._read_local(path, image_url)
        cached = self.cache_dir / hashlib.sha256(image_url.encode()).hexdigest()
        if cached.is_file() and not self.refresh:
            with self._lock:
                self.cache_hits += 1
            return cached.read_bytes()
        data = self._download(image_url)
        self._store(cached, data)
        with self._lock:
            self.downloads += 1
        return data

    def _read_local(self, path: Path, image_url: str) -> bytes:
        """A regular file's bytes, at most ``max_bytes``: checked before reading (a FIFO or a device would
        block or never end), and counted while reading (a file that grows meanwhile)."""
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(f"not a regular file: {image_url}")
            if info.st_size > self.max_bytes:
                raise FetchError(f"image larger than {self.max_bytes} bytes")
            with path.open("rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise FetchError(f"image file not found: {image_url}") from None
        except OSError as exc:
            raise FetchError(f"cannot read {image_url}: {exc.strerror}") from None
        if len(data) > self.max_bytes:
            raise FetchError(f"image larger than {self.max_bytes} bytes")
        return data

    def _download(self, url: str) -> bytes:
        try:
            return safe_get(url, self.max_bytes, self.timeout, self.allow_private, user_agent=USER_AGENT)
        except UnsafeURL as exc:
            raise FetchError(f"{exc}: {redact_url(url)}") from None

    def _store(self, path: Path, data: bytes) -> None:
        """Atomic write: an interrupted build never leaves a half file in the cache."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

"""The loaded catalog index, and the manager that keeps it current.

``IndexManager`` loads the published version, verifies it, keeps a local copy of the last good
version (so a restart while the store is unreachable still serves), and polls for new versions,
swapping them in with one reference assignment: in-flight requests finish on the version they began.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from catalog.calibration import UNCALIBRATED, Calibration
from catalog.category_first import Grouping
from catalog.store import IndexData, LocalStore, current_version, open_store, read_current, read_version, save_copy
from gateway import metrics
from gateway.search import ExactSearch, SearchBackend

log = logging.getLogger(__name__)


class CatalogIndex:
    """One immutable index version, ready to search. Holds the search-space vectors once (in its backend),
    never the raw file bytes."""

    def __init__(self, data: IndexData) -> None:
        self.manifest = data.manifest
        self.products = data.products
        self.backbone_id: str = data.backbone_id
        self.version: str = data.version
        self.row_of = {str(p["id"]): i for i, p in enumerate(self.products)}
        # The same catalog-fitted transform is applied to the stored vectors here and to every query
        # vector in ``prepare``: both sides of the cosine live in the same space.
        self.whitening = data.whitening()
        self.calibration = Calibration.from_manifest(data.manifest)
        self.grouping = Grouping.from_labels([str(p.get("category", "")) for p in self.products],
                                             self.calibration.percent)
        self.categories = self.grouping.names  # for the page's category list
        self._codes_by_folded: dict[str, frozenset[int]] = {}
        for code, name in enumerate(self.categories):
            folded = name.casefold()
            self._codes_by_folded[folded] = self._codes_by_folded.get(folded, frozenset()) | {code}
        vectors = self.whitening.apply(data.embeddings) if self.whitening else data.embeddings
        self.backend: SearchBackend = ExactSearch(vectors, self.grouping.codes)

    def prepare(self, query: np.ndarray) -> np.ndarray:
        """A model vector (as TorchServe returns it) → the search space of this index."""
        return self.whitening.apply(query) if self.whitening else np.asarray(query, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.products)

    def category_codes(self, category: str | None) -> frozenset[int] | None:
        """Codes of the categories named ``category`` (case-insensitive); None: no category filter."""
        if not category:
            return None
        return self._codes_by_folded.get(category.strip().casefold(), frozenset())

    @property
    def calibration_info(self) -> dict | None:
        """The manifest's calibration, or None for an uncalibrated index."""
        return self.manifest.get("calibration") if self.calibration.points != UNCALIBRATED else None


def default_cache_dir(uri: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "photo" / "index"
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


class IndexManager:
    def __init__(self, uri: str, cache_dir: str | Path | None = None, poll_s: float = 30.0) -> None:
        self.uri = uri
        self.store = open_store(uri)
        self.cache = LocalStore(Path(cache_dir) if cache_dir else default_cache_dir(uri))
        self.poll_s = poll_s
        self.current: CatalogIndex | None = None
        self.checked_at = time.monotonic()  # when the store was last asked for the published version
        self.polling = False  # a background thread polls (not on AWS Lambda: see refresh_if_due)
        self.from_cache = False  # serving the local copy because the store could not be read
        self.error: str | None = None  # the last problem with the store, if any
        self._lock = threading.Lock()

    def load(self) -> None:
        """Initial load: the published version, else the local copy of the last good one."""
        try:
            self._swap(read_current(self.store), from_cache=False)
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the local copy
            self.error = f"index not loaded from {self.uri}: {exc}"
            log.error(self.error)
            try:
                self._swap(read_current(self.cache), from_cache=True)
                log.warning("serving cached copy of version %s from %s", self.current.version, self.cache.uri)
            except Exception as cache_exc:  # noqa: BLE001
                log.error("no usable local copy in %s: %s", self.cache.uri, cache_exc)

    def refresh_if_due(self) -> None:
        """``refresh`` when ``poll_s`` has passed since the last check (``poll_s`` 0: never)."""
        if self.poll_s > 0 and time.monotonic() - self.checked_at >= self.poll_s:
            self.refresh()

    def refresh(self) -> bool:
        """Swap in the published version if it changed and verifies; True if a swap happened."""
        with self._lock:
            self.checked_at = time.monotonic()
            try:
                version = current_version(self.store)
                if self.current is not None and version == self.current.version:
                    if self.from_cache:
                        log.info("index store reachable again; version %s unchanged", version)
                    self.from_cache, self.error = False, None
                    return False
                data = read_version(self.store, version)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have, say why
                reason = f"keeping version {self.current.version if self.current else None}: {exc}"
                if reason != self.error:
                    log.error("index refresh failed, %s", reason)
                self.error = reason
                return False
            self._swap(data, from_cache=False)
            return True

    def _swap(self, data: IndexData, from_cache: bool) -> None:
        index = CatalogIndex(data)
        previous = self.current.version if self.current else None
        metrics.index_served(index.version, index.backbone_id, len(index), previous,
                             self.current.backbone_id if self.current else None)
        self.current = index
        self.from_cache = from_cache
        if not from_cache:
            self.error = None
            try:
                save_copy(data, self.cache)
            except OSError as exc:
                log.warning("could not keep a local copy in %s: %s", self.cache.uri, exc)
        log.info("serving index version %s (%d products, %s)%s", index.version, len(index), index.backbone_id,
                 f", replacing {previous}" if previous else "")

    def start_polling(self) -> None:
        if self.poll_s <= 0:
            return
        thread = threading.Thread(target=self._poll, name="index-poller", daemon=True)
        thread.start()
        self.polling = True

    def _poll(self) -> None:
        while True:  # a daemon thread: it ends with the process
            time.sleep(self.poll_s)
            self.refresh()

"""The loaded catalog index, and the manager that keeps it current.

``IndexManager`` loads the published version, verifies it, keeps a local copy of the last good
version (so a restart while the store is unreachable still serves), and polls for new versions,
swapping them in with one reference assignment: in-flight requests finish on the version they began.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import numpy as np

from catalog.products import ProductTable
from gateway import metrics
from gateway.config import Config
from indexstore.store import (
    ANN,
    APPEARANCE,
    APPEARANCE_VECTORS,
    EMBEDDINGS,
    LOCAL_COUNTS,
    LOCAL_DESCRIPTORS,
    LOCAL_FILES,
    LOCAL_POINTS,
    PROTOTYPES,
    CorruptIndex,
    IndexData,
    LocalStore,
    NotFetched,
    current_version,
    open_local,
    open_store,
    prune,
    read_manifest,
    sync_version,
)
from ranking import RankingView
from ranking.appearance import COARSE_SIZE, DESCRIPTOR, FEATURE_SIZE, Appearance
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import Grouping
from ranking.prototypes import from_bytes as prototypes_from_bytes
from search import BackendSettings, BackendSource, SearchBackend, open_backend
from search.factory import DEFAULT_BACKENDS, needs_matrix

log = logging.getLogger(__name__)


class CatalogIndex:
    """One immutable index version, ready to search. Its vectors live in its backend (memory-mapped for
    the ANN backend, in Milvus for milvus), its products in a ``ProductTable`` over the local copy."""

    def __init__(self, data: IndexData, backends: BackendSettings = DEFAULT_BACKENDS) -> None:
        if not isinstance(data.products, ProductTable):
            raise TypeError("CatalogIndex serves a memory-mapped version (indexstore.store.open_local)")
        self.manifest = data.manifest
        self.products: ProductTable = data.products
        self.backbone_id: str = data.backbone_id
        self.version: str = data.version
        self.model_dim = int(data.embeddings.shape[1])  # the length of the model's vectors
        # the stored model vectors, when this replica fetched them (exact search does; ANN and Milvus do not)
        self._model_vectors = None if isinstance(data.embeddings, NotFetched) else data.embeddings
        # The same catalog-fitted transform is applied to the stored vectors here and to every query
        # vector in ``prepare``: both sides of the cosine live in the same space.
        self.whitening = data.whitening()
        self.search_dim = int(self.whitening.projection.shape[1]) if self.whitening else self.model_dim
        info = data.info  # checked when the version was read from the store
        self.calibration = Calibration([list(p) for p in info.calibration] if info.calibration else UNCALIBRATED)
        self.no_match_percent = info.no_match_percent
        labels, self.prices = self.products.scan(hashed=("id", "image_url"), listed="category", numeric="price")
        self.has_prices = bool(np.isfinite(self.prices).any())  # the page offers a price range only then
        self.grouping = Grouping.from_labels(labels, self.calibration.percent)
        self.categories = self.grouping.names  # for the page's category list
        self.backend: SearchBackend = open_backend(backends, BackendSource(
            data.version, len(self.products), self.search_dim, self.grouping.codes,
            vectors=lambda: self._search_vectors(data),
            ann_path=data.folder / ANN if data.folder is not None and data.has_file(ANN) else None))
        self.appearance, self.appearance_rows = _appearance(data, len(self.products), self.search_dim,
                                                                info.appearance_descriptor)
        #: Each product's keypoints, when the version has them (``build_index.py --local-features``).
        self.keypoints = _keypoints(data, len(self.products), info.local_features)
        #: What the catalog's products look like (ranking/prototypes.py), when the version has them: a whole
        #: photo's item is found where its feature map looks like any of them (gateway/outline.py).
        self.prototypes = _prototypes(data, self.model_dim)
        #: All that ranking (ranking/) sees of this version.
        self.view = RankingView(self.backend, self.grouping, self.calibration, self.appearance, self.appearance_rows,
                                self.no_match_percent, self.prices)

    def _search_vectors(self, data: IndexData) -> np.ndarray:
        """The stored vectors in the search space (a view of the memory map when there is no whitening)."""
        return self.whitening.apply(data.embeddings) if self.whitening else data.embeddings

    def retire(self) -> None:
        """This version is no longer served: let the backend free what it holds outside the process."""
        self.backend.close()

    def model_vector(self, row: int) -> np.ndarray | None:
        """Row ``row``'s vector as the model made it (before whitening), or None when this replica does not
        hold the matrix (it serves the ANN file or Milvus)."""
        return None if self._model_vectors is None else np.asarray(self._model_vectors[row], dtype=np.float32)

    def prepare(self, query: np.ndarray) -> np.ndarray:
        """A model vector (as TorchServe returns it) → the search space of this index."""
        return self.whitening.apply(query) if self.whitening else np.asarray(query, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.products)

    def row_of(self, product_id: str) -> int | None:
        return self.products.row_of(product_id)

    def has_image(self, path: str) -> bool:
        """Whether a product of this version names ``path`` as its (local) image."""
        return self.products.first_row("image_url", path) is not None

    def category_codes(self, category: str | None) -> frozenset[int] | None:
        """Codes of the categories named ``category`` (case-insensitive); None: no category filter."""
        return self.view.category_codes(category)

    @property
    def calibration_info(self) -> dict | None:
        """The manifest's calibration, or None for an uncalibrated index."""
        return self.manifest.get("calibration") if self.calibration.points != UNCALIBRATED else None


def _appearance(data: IndexData, rows: int, search_dim: int,
                descriptor: str | None) -> tuple[Appearance | None, np.ndarray | None]:
    """The version's appearance space and row vectors, checked (the store is untrusted); (None, None) for a
    version without them or with another descriptor (its order inside a category is then the CNN's)."""
    if descriptor is None or not (data.has_file(APPEARANCE) and data.has_file(APPEARANCE_VECTORS)):
        return None, None
    if descriptor != DESCRIPTOR:
        log.warning("version %s: appearance descriptor %r is not this gateway's %r: not used", data.version,
                    descriptor, DESCRIPTOR)
        return None, None
    try:
        space = Appearance.from_bytes(data.file_bytes(APPEARANCE))
        vectors = (np.load(data.folder / APPEARANCE_VECTORS, mmap_mode="r", allow_pickle=False) if data.folder
                   else np.load(io.BytesIO(data.file_bytes(APPEARANCE_VECTORS)), allow_pickle=False))
    except ValueError as exc:
        raise CorruptIndex(f"version {data.version}: {exc}") from None
    width = COARSE_SIZE if space.projection is None else space.projection.shape[1]
    if vectors.dtype != np.float32 or vectors.shape != (rows, width) or (
            space.projection is not None and space.projection.shape[0] != FEATURE_SIZE + search_dim):
        raise CorruptIndex(f"version {data.version}: the appearance files do not match the index")
    return space, vectors


class KeypointRows:
    """A version's keypoint files (memory-mapped): one product's ``LocalFeatures`` at a time. A row whose
    stored values are not keypoints (a count over the width, points not finite) has none: the store is
    untrusted, and one bad row must not stop the others from being confirmed."""

    def __init__(self, descriptors: np.ndarray, points: np.ndarray, counts: np.ndarray) -> None:
        self.descriptors, self.points, self.counts = descriptors, points, counts

    def features(self, row: int):  # -> localfeatures.sift.LocalFeatures (imported here: OpenCV is lazy)
        from localfeatures.sift import NONE, LocalFeatures

        n = int(self.counts[row]) if 0 <= row < len(self.counts) else -1
        if not 0 <= n <= self.points.shape[1]:
            return NONE
        points = np.asarray(self.points[row, :n], dtype=np.float32)
        if not np.isfinite(points).all():
            return NONE
        return LocalFeatures(points, np.asarray(self.descriptors[row, :n]))


def _prototypes(data: IndexData, dim: int) -> np.ndarray | None:
    """The version's prototypes, checked (the store is untrusted); None for a version built before them."""
    if not data.has_file(PROTOTYPES):
        return None
    try:
        return prototypes_from_bytes(data.file_bytes(PROTOTYPES), dim)
    except ValueError as exc:
        raise CorruptIndex(f"version {data.version}: {exc}") from None


def _keypoints(data: IndexData, rows: int, descriptor: str | None) -> KeypointRows | None:
    """The version's keypoint files, checked; None for a version without them or with another descriptor."""
    if descriptor is None or data.folder is None or not all(data.has_file(name) for name in LOCAL_FILES):
        return None
    from localfeatures.sift import DESCRIPTOR, DESCRIPTOR_BYTES, KEYPOINTS

    if descriptor != DESCRIPTOR:
        log.warning("version %s: local features %r are not this gateway's %r: not used", data.version,
                    descriptor, DESCRIPTOR)
        return None
    try:
        arrays = [np.load(data.folder / name, mmap_mode="r", allow_pickle=False)
                  for name in (LOCAL_DESCRIPTORS, LOCAL_POINTS, LOCAL_COUNTS)]
    except ValueError as exc:
        raise CorruptIndex(f"version {data.version}: {exc}") from None
    expected = [(np.uint8, (rows, KEYPOINTS, DESCRIPTOR_BYTES)), (np.float16, (rows, KEYPOINTS, 2)),
                (np.uint16, (rows,))]
    if any(a.dtype != dtype or a.shape != shape for a, (dtype, shape) in zip(arrays, expected, strict=True)):
        raise CorruptIndex(f"version {data.version}: the keypoint files do not match the index")
    return KeypointRows(*arrays)


class IndexManager:
    #: Versions kept in the local copy: the served one and the one before (a rollback needs no download).
    CACHE_KEEP = 2

    def __init__(self, uri: str, cache_dir: str | Path | None = None, poll_s: float = 30.0,
                 backends: BackendSettings = DEFAULT_BACKENDS) -> None:
        self.uri = uri
        self.store = open_store(uri)
        self.cache = LocalStore(Path(cache_dir) if cache_dir else Config(index_uri=uri).index_cache)
        self.poll_s = poll_s
        self.backends = backends
        self.current: CatalogIndex | None = None
        self.checked_at = time.monotonic()  # when the store was last asked for the published version
        self.polling = False  # a background thread polls (not on AWS Lambda: see refresh_if_due)
        self.from_cache = False  # serving the local copy because the store could not be read
        self.error: str | None = None  # the last problem with the store, if any
        self._lock = threading.Lock()

    def _open(self, version: str) -> CatalogIndex:
        """Copy ``version`` into the local cache (streamed, verified; only the files its backend reads) and open it
        from there."""
        manifest = read_manifest(self.store, version)
        skip = self._unread(manifest)
        sync_version(self.store, version, self.cache, skip, manifest)
        return CatalogIndex(open_local(self.cache, version, verify=False, skip=skip), self.backends)

    def _unread(self, manifest: dict) -> frozenset[str]:
        """The files of a version that this replica's backend never reads: the raw matrix, when the backend is
        the ANN file (its vectors are in the graph) or Milvus (in the collection the build filled)."""
        if needs_matrix(self.backends, manifest["count"], ANN in manifest["files"]):
            return frozenset()
        return frozenset({EMBEDDINGS})

    def _open_cached(self) -> CatalogIndex:
        version = current_version(self.cache)
        return CatalogIndex(open_local(self.cache, version, skip=self._unread(read_manifest(self.cache, version))),
                            self.backends)

    def load(self) -> None:
        """Initial load: the published version, else the local copy of the last good one."""
        try:
            self._swap(self._open(current_version(self.store)), from_cache=False)
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the local copy
            self.error = f"index not loaded from {self.uri}: {exc}"
            log.error(self.error)
            try:
                index = self._open_cached()
                self._swap(index, from_cache=True)
                log.warning("serving cached copy of version %s from %s", index.version, self.cache.uri)
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
                index = self._open(version)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have, say why
                reason = f"keeping version {self.current.version if self.current else None}: {exc}"
                if reason != self.error:
                    log.error("index refresh failed, %s", reason)
                self.error = reason
                return False
            self._swap(index, from_cache=False)
            return True

    def _swap(self, index: CatalogIndex, from_cache: bool) -> None:
        old = self.current
        previous = old.version if old else None
        metrics.index_served(index.version, index.backbone_id, len(index), previous,
                             old.backbone_id if old else None)
        self.current = index
        self.from_cache = from_cache
        if not from_cache:
            self.error = None
            try:
                prune(self.cache, self.CACHE_KEEP)
            except OSError as exc:
                log.warning("could not prune the local copy in %s: %s", self.cache.uri, exc)
        if old is not None and old.version != index.version:
            old.retire()
        log.info("serving index version %s (%d products, %s, %s search)%s", index.version, len(index),
                 index.backbone_id, index.backend.name, f", replacing {previous}" if previous else "")

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

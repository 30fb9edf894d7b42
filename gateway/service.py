"""Search as the routes see it: query image or product id in, ranked products out."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from gateway.config import Config
from gateway.index import CatalogIndex, IndexManager
from handlers.client import TorchServeClient, TorchServeError
from handlers.imaging import ImageError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request that cannot be answered; ``status`` and ``message`` go to the user as they are."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Hit:
    product: dict
    score: float  # cosine similarity in the index's search space
    similarity: float  # calibrated percent (see catalog/calibration.py)

    @property
    def percent(self) -> float:
        return round(self.similarity, 1)


class SearchService:
    def __init__(self, config: Config, client: TorchServeClient) -> None:
        self.config = config
        self.client = client
        self.indexes = IndexManager(config.index_uri, config.index_cache_dir or None, config.index_poll_s)
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        self._ready_lock = threading.Lock()

    @property
    def index(self) -> CatalogIndex | None:
        return self.indexes.current

    def require_index(self) -> CatalogIndex:
        index = self.indexes.current
        if index is None:
            raise ServiceError(503, self.indexes.error or "index not loaded")
        return index

    def embed(self, image: bytes, index: CatalogIndex) -> np.ndarray:
        try:
            vector, model = self.client.embed(image)
        except ImageError as exc:
            raise ServiceError(400, str(exc)) from None
        except TorchServeError as exc:
            log.warning("embedding failed: %s", exc)
            raise ServiceError(503, f"search is temporarily unavailable: {exc}") from None
        if model != index.backbone:
            raise ServiceError(503, f"the embedding model ({model}) does not match the index ({index.backbone}); "
                                    "rebuild the index or deploy the matching model archive")
        return vector

    def search_image(self, image: bytes, threshold: float, top_k: int, category: str | None = None) -> list[Hit]:
        index = self.require_index()
        vector = index.prepare(self.embed(image, index))
        return self._rank(index, vector, threshold, top_k, index.category_mask(category))

    def similar(self, product_id: str, threshold: float, top_k: int, category: str | None = None) -> list[Hit]:
        """More like this: the stored vector of a product, the product itself left out. No model call."""
        index = self.require_index()
        row = index.row_of.get(str(product_id))
        if row is None:
            raise ServiceError(404, f"no product with id {product_id!r} in the catalog")
        mask = np.ones(len(index), dtype=bool) if category is None else index.category_mask(category).copy()
        mask[row] = False
        return self._rank(index, index.vector(row), threshold, top_k, mask)

    @staticmethod
    def _rank(index: CatalogIndex, vector: np.ndarray, threshold: float, top_k: int, mask) -> list[Hit]:
        found = index.engine.search(vector, top_k, index.calibration.cosine(threshold), mask)
        return [Hit(index.products[row], score, float(index.calibration.percent(score))) for row, score in found]

    def readiness(self) -> tuple[bool, str]:
        """Index loaded, TorchServe answering, and serving the index's backbone. Cached briefly."""
        with self._ready_lock:
            checked, ok, reason = self._ready
            if time.monotonic() - checked < self.config.ready_cache_s:
                return ok, reason
            ok, reason = self._check_ready()
            self._ready = (time.monotonic(), ok, reason)
            return ok, reason

    def _check_ready(self) -> tuple[bool, str]:
        index = self.indexes.current
        if index is None:
            return False, self.indexes.error or "index not loaded"
        try:
            served = self.client.probe()
        except (TorchServeError, ImageError) as exc:
            return False, f"embedding model not ready: {exc}"
        if served != index.backbone:
            return False, f"model mismatch: TorchServe serves {served}, index was built with {index.backbone}"
        if self.indexes.from_cache:
            return True, f"ready, serving the cached copy of version {index.version} ({self.indexes.error})"
        return True, "ready"

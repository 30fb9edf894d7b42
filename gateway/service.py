"""Search as the routes see it: query image or product id in, ranked products out."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from gateway.config import Config
from gateway.index import CatalogIndex, IndexManager
from gateway.search import top_rows
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


@dataclass(frozen=True)
class Guess:
    """The category ranked first: guessed by a vote of the nearest products, or the anchor product's own."""

    category: str
    confidence: float  # the winner's share of the vote weight (1.0 for a product's own category)
    source: str  # "vote" or "product"
    code: int  # the category's code in the index's grouping


@dataclass(frozen=True)
class Results:
    hits: list[Hit]
    guess: Guess | None  # None: ranked by similarity alone
    first_group: int = 0  # how many leading hits are in the guessed category
    anchor: dict | None = None  # the product of "more like this"


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

    def search_image(self, image: bytes, threshold: float, top_k: int, category: str | None = None,
                     category_first: bool = True) -> Results:
        """Products that look like ``image``; with ``category_first`` its guessed category ranks first."""
        index = self.require_index()
        vector = index.prepare(self.embed(image, index))
        scores = index.engine.scores(vector, index.category_mask(category))
        guess = self._vote(index, scores) if category_first and not category else None
        return self._rank(index, scores, threshold, top_k, guess)

    def similar(self, product_id: str, threshold: float, top_k: int, category: str | None = None,
                category_first: bool = True) -> Results:
        """More like this: the stored vector of a product, the product itself left out. No model call.

        Category-first here means the product's own category first (no guessing needed)."""
        index = self.require_index()
        row = index.row_of.get(str(product_id))
        if row is None:
            raise ServiceError(404, f"no product with id {product_id!r} in the catalog")
        mask = np.ones(len(index), dtype=bool) if category is None else index.category_mask(category).copy()
        mask[row] = False
        scores = index.engine.scores(index.vector(row), mask)
        code = int(index.grouping.codes[row])
        guess = Guess(index.grouping.names[code], 1.0, "product", code) \
            if category_first and not category and code >= 0 else None
        return self._rank(index, scores, threshold, top_k, guess, anchor=index.products[row])

    @staticmethod
    def _vote(index: CatalogIndex, scores: np.ndarray) -> Guess | None:
        winner, share = index.grouping.guess(scores)
        code = int(winner[0])
        return Guess(index.grouping.names[code], round(float(share[0]), 3), "vote", code) if code >= 0 else None

    @staticmethod
    def _rank(index: CatalogIndex, scores: np.ndarray, threshold: float, top_k: int, guess: Guess | None,
              anchor: dict | None = None) -> Results:
        keys = None if guess is None else index.grouping.keys(scores, [guess.code])[0]
        found = top_rows(scores, top_k, index.calibration.cosine(threshold), keys)
        percents = index.calibration.percent(np.array([score for _, score in found]))
        hits = [Hit(index.products[row], score, float(pct)) for (row, score), pct in zip(found, percents, strict=True)]
        first_group = 0 if guess is None else next(
            (i for i, (row, _) in enumerate(found) if index.grouping.codes[row] != guess.code), len(found))
        return Results(hits, guess, first_group, anchor)

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

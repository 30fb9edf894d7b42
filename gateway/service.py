"""Search as the routes see it: query image or product id in, ranked products out.

The service asks the index's search backend for candidates (gateway/search.py) and ranks them:
the threshold, the category filter and category-first ranking all work on what the backend returns,
so every backend ranks the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from catalog.appearance import HIST_SIZE, RERANK_DEPTH, colour_histogram_or_none, reorder
from gateway import metrics
from gateway.config import Config
from gateway.errors import NotFound, Unavailable
from gateway.images import FetchSlots
from gateway.index import BackendSettings, CatalogIndex, IndexManager
from gateway.query_token import QueryTokens, new_key
from gateway.search import Candidates, Filter
from handlers.imaging import ImageError
from modelserver.client import ModelClient, ModelServerError

#: Vectors are float32, so a cosine exactly at the threshold can come out a few 1e-8 below it: a product the
#: page shows at 85 % must not be dropped by a threshold of 85 %. Far below any difference a shopper can set.
THRESHOLD_SLACK = 1e-6

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """What a shopper can set on one search (checked by the routes)."""

    threshold: float  # minimum calibrated similarity, percent
    top_k: int
    category: str | None = None  # only this category (case-insensitive)
    category_first: bool = True  # rank the guessed (or the anchor's) category first
    offset: int = 0  # leave out this many leading results ("Show more": the next page of the same ranking)
    min_price: float | None = None  # only products with a known price in [min_price, max_price]
    max_price: float | None = None


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
    no_close_match: bool = False  # the best match is below the catalog's fitted rule: we don't carry this
    vector: np.ndarray | None = None  # a query image's model vector (for its query token) ...
    model: str = ""  # ... and the backbone that made it
    hist: np.ndarray | None = None  # ... and its colour histogram (catalog/appearance.py)


class SideWork:
    """A small thread pool for the part of a query that does not need its vector (the colour histogram), so
    that it runs while the model server computes the vector instead of after it. One pool per process: a
    forked gunicorn worker inherits the parent's pool without its threads, and would wait on it forever."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args: object) -> Future:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="photo-side")
                self._pid = os.getpid()
            return self._pool.submit(fn, *args)


class SearchService:
    def __init__(self, config: Config, client: ModelClient) -> None:
        self.config = config
        self.client = client
        self.indexes = IndexManager(config.index_uri, config.index_cache_dir or None, config.index_poll_s,
                                    BackendSettings.from_config(config))
        self.url_fetches = FetchSlots(config.url_fetch_concurrency)
        self.tokens = QueryTokens(config.query_token_key or new_key(), config.query_token_ttl_s)
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        self._ready_lock = threading.Lock()
        self.side_work = SideWork()

    @property
    def index(self) -> CatalogIndex | None:
        return self.indexes.current

    def require_index(self) -> CatalogIndex:
        index = self.indexes.current
        if index is None:
            raise Unavailable(self.indexes.error or "index not loaded")
        return index

    def embed_image(self, image: bytes) -> tuple[np.ndarray, str]:
        """The model's vector of ``image`` and the backbone that made it (``ImageError``/``ModelServerError``)."""
        with metrics.EMBEDDING.time():
            return self.client.embed(image)

    def search_image(self, image: bytes, options: SearchOptions) -> Results:
        """Products that look like ``image``; with ``category_first`` its guessed category ranks first.
        The colour histogram (~3 ms of CPU) is computed while the model server works on the vector."""
        hist = self.side_work.submit(colour_histogram_or_none, image, self.config.max_pixels)
        try:
            vector, backbone_id = self.embed_image(image)
        except BaseException:
            hist.cancel()  # not started yet: a failed query leaves no work (and no image) queued behind it
            raise
        return self.search_vector(vector, backbone_id, options, hist.result())

    def search_vector(self, vector: np.ndarray, backbone_id: str, options: SearchOptions,
                      hist: np.ndarray | None = None) -> Results:
        """Products close to a model vector (a fresh embedding, or a query token's) and, inside a category,
        to its colour histogram ``hist``: 503 when the vector's model is not the index's, since the two
        spaces cannot be compared."""
        index = self.require_index()
        if backbone_id != index.backbone_id:
            raise Unavailable(f"the embedding model ({backbone_id}) does not match the index ({index.backbone_id}); "
                              "rebuild the index or deploy the matching model archive")
        if np.shape(vector) != (index.model_dim,):
            raise Unavailable(f"the query vector has {np.size(vector)} numbers, the index's model {index.model_dim}")
        query = index.prepare(vector)
        where = Filter(categories=index.category_codes(options.category),
                       rows=index.price_rows(options.min_price, options.max_price))
        look = None
        if index.appearance is not None and hist is not None and np.shape(hist) == (HIST_SIZE,):
            look = index.appearance.vectors(hist, query)[0]
        found = self._rank(index, query, where, options, guess_code=None,
                           vote=options.category_first and not options.category, look=look)
        return replace(found, vector=np.asarray(vector, dtype=np.float32), model=backbone_id, hist=hist)

    def similar(self, product_id: str, options: SearchOptions) -> Results:
        """More like this: the stored vector of a product, the product itself left out. No model call.

        Category-first here means the product's own category first (no guessing needed)."""
        index = self.require_index()
        row = index.row_of(str(product_id))
        if row is None:
            raise NotFound(f"no product with id {product_id!r} in the catalog")
        where = Filter(categories=index.category_codes(options.category), exclude_rows=frozenset({row}),
                       rows=index.price_rows(options.min_price, options.max_price))
        own = int(index.grouping.codes[row])
        code = own if options.category_first and not options.category else -1
        look = None if index.appearance_rows is None else np.asarray(index.appearance_rows[row])
        return self._rank(index, index.backend.vector(row), where, options, guess_code=code,
                          anchor=index.products[row], look=look)

    def _rank(self, index: CatalogIndex, query: np.ndarray, where: Filter, options: SearchOptions,
              guess_code: int | None, anchor: dict | None = None, vote: bool = True,
              look: np.ndarray | None = None) -> Results:
        """Candidates → results. ``guess_code``: None for a query image (no-match rule applies; the category
        is voted for when ``vote``), -1 for no category first, else that code. ``look``: the query's
        appearance vector, which orders the results inside one category (the first group, or a filter's)."""
        min_score = index.calibration.cosine(options.threshold) - THRESHOLD_SLACK
        top_k = options.top_k + options.offset  # rank through the page asked for, answer only that page
        cands = index.backend.search(query, max(top_k, index.grouping.vote.k), where)
        lost = guess_code is None and _no_close_match(index, cands)
        # no category claim when nothing is close, or when the shopper did not ask for one
        guess = None if lost or (guess_code is None and not vote) else self._guess(index, cands, guess_code)
        if guess is None:
            found = _in_category(index, query, cands, where, top_k, min_score, look if options.category else None)
        else:
            group = frozenset({guess.code})
            found = _in_category(index, query, cands, where.narrowed(categories=group), top_k, min_score, look)
            found += _best(index, query, cands, where.narrowed(exclude_categories=group), top_k - len(found),
                           min_score)
        first_group = 0 if guess is None else sum(int(index.grouping.codes[row]) == guess.code for row, _ in found)
        found = found[options.offset:]
        first_group = max(0, first_group - options.offset)
        percents = index.calibration.percent(np.array([score for _, score in found]))
        hits = [Hit(index.products[row], score, float(pct)) for (row, score), pct in zip(found, percents, strict=True)]
        return Results(hits, guess, first_group, anchor, lost)

    @staticmethod
    def _guess(index: CatalogIndex, cands: Candidates, code: int | None) -> Guess | None:
        grouping = index.grouping
        if code is None:
            code, share = grouping.guess_candidates(cands.rows, cands.scores)
            return Guess(grouping.names[code], round(share, 3), "vote", code) if code >= 0 else None
        return Guess(grouping.names[code], 1.0, "product", code) if code >= 0 else None

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
        except (ModelServerError, ImageError) as exc:
            return False, f"embedding model not ready: {exc}"
        if served != index.backbone_id:
            return False, f"model mismatch: TorchServe serves {served}, index was built with {index.backbone_id}"
        if self.indexes.from_cache:
            return True, f"ready, serving the cached copy of version {index.version} ({self.indexes.error})"
        return True, "ready"


def _no_close_match(index: CatalogIndex, cands: Candidates) -> bool:
    """Whether a query image's best candidate is below the catalog's "no close match" rule."""
    if index.no_match_percent is None:
        return False
    return not len(cands) or float(index.calibration.percent(cands.scores[0])) < index.no_match_percent


def _in_category(index: CatalogIndex, query: np.ndarray, cands: Candidates, where: Filter, k: int,
                 min_score: float, look: np.ndarray | None) -> list[tuple[int, float]]:
    """``_best`` rows of one category; with ``look`` and a version with appearance vectors, its best
    ``RERANK_DEPTH`` (by the CNN, over the threshold) re-ordered by the fused score (catalog/appearance.py)."""
    if look is None or index.appearance is None:
        return _best(index, query, cands, where, k, min_score)
    deep = _best(index, query, cands, where, max(k, RERANK_DEPTH), min_score)
    if len(deep) < 2:
        return deep[:k]
    rows = np.array([row for row, _ in deep])
    order = reorder(np.array([score for _, score in deep]), index.appearance_rows[rows] @ look, index.appearance)
    return [deep[i] for i in order[:k]]


def _best(index: CatalogIndex, query: np.ndarray, cands: Candidates, where: Filter, k: int,
          min_score: float) -> list[tuple[int, float]]:
    """The best ``k`` rows admitted by ``where`` (a narrowing of the filter ``cands`` came from) with score
    ≥ ``min_score``: taken from ``cands`` when they settle it, else from one more backend search.

    ``cands`` settle it when they hold ``k`` such rows, or when every row they left out scores below
    ``min_score`` (their last score is below it) or none was left out (exhausted)."""
    if k <= 0:
        return []
    codes = index.grouping.codes
    admitted = [(row, score) for row, score in cands.pairs()
                if score >= min_score and where.admits(row, int(codes[row]))]
    if len(admitted) >= k or cands.exhausted or (len(cands) and cands.scores[-1] < min_score):
        return admitted[:k]
    return index.backend.search(query, k, where, min_score).pairs()

"""Search backends: the best rows of the index for a query vector, under a filter. Swappable.

The service asks a backend for *candidates* (row ids and cosine scores, best first) and does
everything else (category-first ranking, the threshold, "more like this") on what comes back; it
never sees a backend's matrix. ``ExactSearch`` is brute-force NumPy, exact and fast to ~10^5 rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Filter:
    """Which rows may be returned: by category code (see catalog/category_first.py), by row, and by a
    per-row mask of what no category says (a price range)."""

    categories: frozenset[int] | None = None  # only rows of these category codes (None: any)
    exclude_categories: frozenset[int] = frozenset()
    exclude_rows: frozenset[int] = frozenset()
    rows: np.ndarray | None = field(default=None, compare=False)  # bool per row: only rows marked True

    def narrowed(self, categories: frozenset[int] | None = None,
                 exclude_categories: frozenset[int] = frozenset()) -> Filter:
        """This filter and, in addition, the given category conditions."""
        if categories is not None and self.categories is not None:
            categories = categories & self.categories
        return Filter(categories if categories is not None else self.categories,
                      self.exclude_categories | exclude_categories, self.exclude_rows, self.rows)

    def admits(self, row: int, code: int) -> bool:
        """Whether row ``row`` of category code ``code`` may be returned."""
        return ((self.categories is None or code in self.categories) and code not in self.exclude_categories
                and row not in self.exclude_rows and (self.rows is None or bool(self.rows[row])))

    def mask(self, codes: np.ndarray) -> np.ndarray | None:
        """Bool per row (``codes``: category code per row), or None when every row is admitted."""
        if self.categories is None and not self.exclude_categories and not self.exclude_rows and self.rows is None:
            return None
        keep = np.ones(len(codes), dtype=bool) if self.rows is None else np.array(self.rows, dtype=bool)
        if self.categories is not None:
            keep &= _member(codes, self.categories)
        if self.exclude_categories:
            keep &= ~_member(codes, self.exclude_categories)
        if self.exclude_rows:
            keep[list(self.exclude_rows)] = False
        return keep


def _member(codes: np.ndarray, wanted: frozenset[int]) -> np.ndarray:
    """``np.isin(codes, wanted)``; a few equality tests are several times faster on a million rows."""
    if len(wanted) > 4:
        return np.isin(codes, list(wanted))
    found = np.zeros(len(codes), dtype=bool)
    for code in wanted:
        found |= codes == code
    return found


#: The filter that admits every row (the default).
EVERY_ROW = Filter()


@dataclass(frozen=True)
class Candidates:
    """Rows and scores, best first. ``exhausted``: every admitted row above ``min_score`` is here."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32 cosine in the index's search space
    exhausted: bool

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self) -> list[tuple[int, float]]:
        return [(int(r), float(s)) for r, s in zip(self.rows, self.scores, strict=True)]


class SearchBackend(Protocol):
    """What the service needs of a backend; vectors are L2-normalised, cosine = inner product."""

    def __len__(self) -> int: ...

    def search(self, query: np.ndarray, k: int, where: Filter = Filter(), min_score: float = -1.0) -> Candidates:
        """The best ``k`` rows admitted by ``where`` with score ≥ ``min_score``, best first."""
        ...

    def vector(self, row: int) -> np.ndarray:
        """The stored (search-space) vector of a row, for "more like this"."""
        ...


def top_rows(scores: np.ndarray, top_k: int, min_score: float = -1.0, keys: np.ndarray | None = None
             ) -> list[tuple[int, float]]:
    """Row indices and scores of the best ``top_k`` rows with score ≥ ``min_score``.

    Ranked by ``keys`` when given (e.g. category-first keys, see catalog/category_first.py), else by score.
    """
    keys = scores if keys is None else keys
    keys = np.where(scores >= min_score, keys, -np.inf)
    k = min(top_k, len(keys))
    if k <= 0:
        return []
    best = np.argpartition(-keys, k - 1)[:k]
    best = best[np.argsort(-keys[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best if np.isfinite(keys[i])]


class ExactSearch:
    """Brute-force inner product over the whole matrix: exact; the default for small catalogs."""

    name = "exact"

    def __init__(self, embeddings: np.ndarray, codes: np.ndarray | None = None) -> None:
        self._matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._codes = np.full(len(self._matrix), -1, np.int64) if codes is None else np.asarray(codes)

    def __len__(self) -> int:
        return len(self._matrix)

    def search(self, query: np.ndarray, k: int, where: Filter = Filter(), min_score: float = -1.0) -> Candidates:
        scores = self._matrix @ np.asarray(query, dtype=np.float32)
        mask = where.mask(self._codes)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        found = top_rows(scores, k, min_score)
        rows = np.array([r for r, _ in found], dtype=np.int64)
        return Candidates(rows, scores[rows].astype(np.float32), exhausted=len(found) < k)

    def vector(self, row: int) -> np.ndarray:
        return self._matrix[row]


class AnnSearch:
    """FAISS HNSW over a memory-mapped ANN file (catalog/ann.py): every worker shares one copy.

    Approximate (recall@10 ≥ 0.99 on the bench), with two exact paths where HNSW is weak: a filter that
    admits few rows is answered by brute force over those rows, and a search that must go deeper than
    ``EXACT_BEYOND`` rows (a high threshold with a filter) falls back to brute force too."""

    name = "ann"
    #: A filter admitting at most this many rows is searched exactly over them (fast, and always exact).
    SMALL_FILTER = 20_000
    #: Deeper than this, HNSW is slower than brute force over the admitted rows.
    EXACT_BEYOND = 4096

    def __init__(self, index, codes: np.ndarray, expansion_search: int = 128) -> None:
        from catalog.ann import vectors_of

        self._index = index
        self._matrix = vectors_of(index)
        self._codes = np.asarray(codes)
        self._expansion = expansion_search

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, query: np.ndarray, k: int, where: Filter = Filter(), min_score: float = -1.0) -> Candidates:
        n = len(self)
        mask = where.mask(self._codes)
        admitted = n if mask is None else int(mask.sum())
        if k <= 0 or admitted == 0:
            return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), exhausted=True)
        if mask is not None and admitted <= self.SMALL_FILTER or k > self.EXACT_BEYOND:
            return self._exact(query, k, mask, min_score)
        return self._graph(query, k, mask, min_score, admitted)

    def _graph(self, query: np.ndarray, k: int, mask: np.ndarray | None, min_score: float,
               admitted: int) -> Candidates:
        import faiss

        # A filter hides part of the graph: search deeper in proportion (up to 8×) to keep the recall.
        depth = max(self._expansion, k) * min(8, -(-len(self) // admitted))
        params = faiss.SearchParametersHNSW(efSearch=depth)
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            params.sel = selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))  # noqa: F841 - kept alive
        scores, rows = self._index.search(np.ascontiguousarray(query, dtype=np.float32)[None], min(k, admitted),
                                          params=params)
        returned = rows[0] >= 0
        keep = returned & (scores[0] >= min_score)
        # Exhausted only when every admitted row came back: HNSW returning fewer than asked proves nothing.
        return Candidates(rows[0][keep].astype(np.int64), scores[0][keep].astype(np.float32),
                          exhausted=int(returned.sum()) == admitted)

    def _exact(self, query: np.ndarray, k: int, mask: np.ndarray | None, min_score: float) -> Candidates:
        rows = np.arange(len(self)) if mask is None else np.flatnonzero(mask)
        scores = np.full(len(self), -np.inf, np.float32)
        scores[rows] = self._matrix[rows] @ np.asarray(query, dtype=np.float32)
        found = top_rows(scores, k, min_score)
        best = np.array([r for r, _ in found], dtype=np.int64)
        return Candidates(best, scores[best].astype(np.float32), exhausted=len(found) < k)

    def vector(self, row: int) -> np.ndarray:
        return np.array(self._matrix[row])

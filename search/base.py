"""The search seam: what every backend is (``SearchBackend``), what it is asked (``Filter``), what it
answers (``Candidates``) and how it fails (``SearchUnavailable``).

The ranking (ranking/) asks a backend for *candidates* (row ids and cosine scores, best first) and does
everything else (category-first ranking, the threshold, "more like this") on what comes back; it never
sees a backend's matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Filter:
    """Which rows may be returned: by category code (see ranking/category_first.py), by row, and by a
    per-row mask of what no category says (a price range). A price range is given twice: as that mask
    (``rows``, for backends holding vectors only) and as its bounds (``price``, for a backend that stores
    prices and filters them itself: Milvus); both say the same."""

    categories: frozenset[int] | None = None  # only rows of these category codes (None: any)
    exclude_categories: frozenset[int] = frozenset()
    exclude_rows: frozenset[int] = frozenset()
    rows: np.ndarray | None = field(default=None, compare=False)  # bool per row: only rows marked True
    price: tuple[float | None, float | None] | None = None  # known price within [low, high] (None: either end open)

    def narrowed(self, categories: frozenset[int] | None = None,
                 exclude_categories: frozenset[int] = frozenset()) -> Filter:
        """This filter and, in addition, the given category conditions."""
        if categories is not None and self.categories is not None:
            categories = categories & self.categories
        return Filter(categories if categories is not None else self.categories,
                      self.exclude_categories | exclude_categories, self.exclude_rows, self.rows, self.price)

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


class SearchUnavailable(RuntimeError):
    """A backend could not answer (its server unreachable, a call refused or timed out): the search can be
    tried again later. Its text is for the log; the shopper is told only that search is unavailable."""


class SearchBackend(Protocol):
    """Everything a caller may use of a backend; vectors are L2-normalised, cosine = inner product. Every
    failure of ``search`` and ``vector`` is a ``SearchUnavailable``."""

    #: Which backend this is ("exact", "ann", "milvus"), for logs and /readyz.
    name: str

    def __len__(self) -> int: ...

    def search(self, query: np.ndarray, k: int, where: Filter = EVERY_ROW, min_score: float = -1.0) -> Candidates:
        """The best ``k`` rows admitted by ``where`` with score ≥ ``min_score``, best first."""
        ...

    def vector(self, row: int) -> np.ndarray:
        """The stored (search-space) vector of a row, for "more like this"."""
        ...

    def close(self) -> None:
        """This version is no longer served: free what the backend holds outside the process (at once, or
        after requests begun on it have had time to finish)."""
        ...


def top_rows(scores: np.ndarray, top_k: int, min_score: float = -1.0, keys: np.ndarray | None = None
             ) -> list[tuple[int, float]]:
    """Row indices and scores of the best ``top_k`` rows with score ≥ ``min_score``.

    Ranked by ``keys`` when given (e.g. category-first keys, see ranking/category_first.py), else by score.
    """
    keys = scores if keys is None else keys
    keys = np.where(scores >= min_score, keys, -np.inf)
    k = min(top_k, len(keys))
    if k <= 0:
        return []
    best = np.argpartition(-keys, k - 1)[:k]
    best = best[np.argsort(-keys[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best if np.isfinite(keys[i])]



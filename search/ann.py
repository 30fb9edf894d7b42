"""Approximate search: FAISS HNSW over the version's memory-mapped ANN file (indexstore/ann.py)."""

from __future__ import annotations

import numpy as np

from indexstore.ann import AnnSettings
from search.base import EVERY_ROW, Candidates, Filter, SearchUnavailable, top_rows


class AnnSearch:
    """FAISS HNSW over a memory-mapped ANN file (indexstore/ann.py): every worker shares one copy.

    Approximate (recall@10 ≥ 0.99 on the bench), with two exact paths where HNSW is weak: a filter that
    admits few rows is answered by brute force over those rows, and a search that must go deeper than
    ``EXACT_BEYOND`` rows (a high threshold with a filter) falls back to brute force too."""

    name = "ann"
    #: A filter admitting at most this many rows is searched exactly over them (fast, and always exact).
    SMALL_FILTER = 20_000
    #: Deeper than this, HNSW is slower than brute force over the admitted rows.
    EXACT_BEYOND = 4096

    def __init__(self, index, codes: np.ndarray, expansion_search: int = AnnSettings.expansion_search) -> None:
        from indexstore.ann import vectors_of

        self._index = index
        self._matrix = vectors_of(index)
        self._codes = np.asarray(codes)
        self._expansion = expansion_search

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, query: np.ndarray, k: int, where: Filter = EVERY_ROW, min_score: float = -1.0) -> Candidates:
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
        try:
            scores, rows = self._index.search(np.ascontiguousarray(query, dtype=np.float32)[None],
                                              min(k, admitted), params=params)
        except RuntimeError as exc:  # FAISS reports its own failures as RuntimeError
            raise SearchUnavailable(f"HNSW search failed: {exc}") from None
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

    def close(self) -> None:
        """Nothing outside the process: the memory map is unmapped with the last reference."""

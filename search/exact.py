"""Exact search: brute-force inner product over the whole matrix; exact and fast to ~10^5 rows."""

from __future__ import annotations

import numpy as np

from search.base import EVERY_ROW, Candidates, Filter, top_rows


class ExactSearch:
    """Brute-force inner product over the whole matrix: exact; the default for small catalogs."""

    name = "exact"

    def __init__(self, embeddings: np.ndarray, codes: np.ndarray | None = None) -> None:
        self._matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._codes = np.full(len(self._matrix), -1, np.int64) if codes is None else np.asarray(codes)

    def __len__(self) -> int:
        return len(self._matrix)

    def search(self, query: np.ndarray, k: int, where: Filter = EVERY_ROW, min_score: float = -1.0) -> Candidates:
        scores = self._matrix @ np.asarray(query, dtype=np.float32)
        mask = where.mask(self._codes)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        found = top_rows(scores, k, min_score)
        rows = np.array([r for r, _ in found], dtype=np.int64)
        return Candidates(rows, scores[rows].astype(np.float32), exhausted=len(found) < k)

    def vector(self, row: int) -> np.ndarray:
        return self._matrix[row]

    def close(self) -> None:
        """Nothing outside the process: the matrix goes with the last reference."""

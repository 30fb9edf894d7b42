"""Ranking backends: cosine similarity over L2-normalised rows. Swappable (exact NumPy today)."""

from __future__ import annotations

import numpy as np


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
    """Brute-force inner product: exact, and fast enough for catalogs up to ~10^6 × 1280 floats."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(embeddings, dtype=np.float32)

    def scores(self, query: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Cosine of ``query`` with every row; -inf where ``mask`` (bool per row) is False."""
        scores = self.matrix @ np.asarray(query, dtype=np.float32)
        return scores if mask is None else np.where(mask, scores, -np.inf)

    def search(
        self, query: np.ndarray, top_k: int, min_score: float = -1.0, mask: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Row indices and scores of the best ``top_k`` rows with score ≥ ``min_score``, best first.

        ``mask`` (bool per row) restricts the candidates, e.g. to one category or to all but the query.
        """
        return top_rows(self.scores(query, mask), top_k, min_score)

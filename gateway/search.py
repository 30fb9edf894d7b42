"""Ranking backends: cosine similarity over L2-normalised rows. Swappable (exact NumPy today)."""

from __future__ import annotations

import numpy as np


class ExactSearch:
    """Brute-force inner product: exact, and fast enough for catalogs up to ~10^6 × 1280 floats."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(embeddings, dtype=np.float32)

    def search(
        self, query: np.ndarray, top_k: int, min_score: float = -1.0, mask: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Row indices and scores of the best ``top_k`` rows with score ≥ ``min_score``, best first.

        ``mask`` (bool per row) restricts the candidates, e.g. to one category or to all but the query.
        """
        if len(self.matrix) == 0 or top_k <= 0:
            return []
        scores = self.matrix @ np.asarray(query, dtype=np.float32)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        k = min(top_k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(i), float(scores[i])) for i in best if scores[i] >= min_score]

"""Exact cosine ranking (gateway/search.py)."""

from __future__ import annotations

import numpy as np

from gateway.search import ExactSearch


def unit(*v):
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_ranks_by_cosine_with_threshold_and_mask():
    matrix = np.stack([unit(1, 0), unit(0, 1), unit(1, 1), unit(1, 0.1)])
    engine = ExactSearch(matrix)
    hits = engine.search(unit(1, 0), top_k=10)
    assert [i for i, _ in hits] == [0, 3, 2, 1]
    assert hits[0][1] == 1.0 and all(a[1] >= b[1] for a, b in zip(hits, hits[1:], strict=False))
    assert [i for i, _ in engine.search(unit(1, 0), top_k=10, min_score=0.7)] == [0, 3, 2]
    assert [i for i, _ in engine.search(unit(1, 0), top_k=2)] == [0, 3]
    mask = np.array([False, True, True, True])
    assert [i for i, _ in engine.search(unit(1, 0), top_k=1, mask=mask)] == [3]


def test_empty_index():
    assert ExactSearch(np.zeros((0, 4), np.float32)).search(unit(1, 0, 0, 0), 5) == []

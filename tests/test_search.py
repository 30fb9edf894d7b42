"""Exact cosine ranking and the search-backend seam (gateway/search.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.search import ExactSearch, Filter


def unit(*v):
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_ranks_by_cosine_with_threshold_and_mask():
    matrix = np.stack([unit(1, 0), unit(0, 1), unit(1, 1), unit(1, 0.1)])
    engine = ExactSearch(matrix)
    hits = engine.search(unit(1, 0), 10).pairs()
    assert [i for i, _ in hits] == [0, 3, 2, 1]
    assert hits[0][1] == 1.0 and all(a[1] >= b[1] for a, b in zip(hits, hits[1:], strict=False))
    assert [i for i, _ in engine.search(unit(1, 0), 10, min_score=0.7).pairs()] == [0, 3, 2]
    assert [i for i, _ in engine.search(unit(1, 0), 2).pairs()] == [0, 3]
    assert [i for i, _ in engine.search(unit(1, 0), 1, Filter(exclude_rows=frozenset({0}))).pairs()] == [3]


def test_min_score_is_inclusive_on_both_sides():
    engine = ExactSearch(np.stack([unit(1, 0), unit(1, 1)]))
    edge = float(engine.search(unit(1, 0), 2).scores[1])  # cos 45°
    assert engine.search(unit(1, 0), 2, min_score=edge).rows.tolist() == [0, 1]
    assert engine.search(unit(1, 0), 2, min_score=np.nextafter(edge, 2, dtype=np.float32)).rows.tolist() == [0]


def test_category_filters_and_exhaustion():
    matrix = np.stack([unit(1, 0), unit(1, 0.2), unit(1, 0.4), unit(1, 0.6)])
    engine = ExactSearch(matrix, codes=np.array([0, 1, 0, -1]))
    only_a = engine.search(unit(1, 0), 5, Filter(categories=frozenset({0})))
    assert only_a.rows.tolist() == [0, 2] and only_a.exhausted
    not_a = engine.search(unit(1, 0), 5, Filter(exclude_categories=frozenset({0})))
    assert not_a.rows.tolist() == [1, 3]
    full = engine.search(unit(1, 0), 2)
    assert full.rows.tolist() == [0, 1] and not full.exhausted  # more rows admitted than asked for
    assert engine.search(unit(1, 0), 4).exhausted is False and engine.search(unit(1, 0), 5).exhausted


@pytest.mark.parametrize(("where", "row", "code", "admitted"), [
    (Filter(), 7, -1, True),
    (Filter(categories=frozenset({1})), 7, 1, True),
    (Filter(categories=frozenset({1})), 7, 2, False),
    (Filter(categories=frozenset({1})), 7, -1, False),
    (Filter(exclude_categories=frozenset({1})), 7, 1, False),
    (Filter(exclude_rows=frozenset({7})), 7, 1, False),
    (Filter(categories=frozenset({1})).narrowed(exclude_categories=frozenset({1})), 7, 1, False),
    (Filter(categories=frozenset({1, 2})).narrowed(categories=frozenset({2})), 7, 1, False),
    (Filter(categories=frozenset({1, 2})).narrowed(categories=frozenset({2})), 7, 2, True),
    # four codes are tested one by one, five through np.isin: both ways agree at the switch
    (Filter(categories=frozenset({1, 2, 3, 4})), 7, 4, True),
    (Filter(categories=frozenset({1, 2, 3, 4, 6})), 7, 6, True),
    (Filter(categories=frozenset({1, 2, 3, 4, 6})), 7, 5, False),
    (Filter(exclude_categories=frozenset({1, 2, 3, 4, 6})), 7, 6, False),
    # a row mask (a price range): only rows marked True, whatever else admits them
    (Filter(rows=np.arange(8) == 7), 7, 1, True),
    (Filter(rows=np.arange(8) != 7), 7, 1, False),
    (Filter(categories=frozenset({1}), rows=np.arange(8) == 7), 7, 2, False),
    (Filter(rows=np.arange(8) == 7).narrowed(categories=frozenset({1})), 7, 1, True),
    (Filter(rows=np.arange(8) != 7).narrowed(exclude_categories=frozenset({2})), 7, 1, False),
])
def test_filter_admits_and_mask_agree(where, row, code, admitted):
    assert where.admits(row, code) is admitted
    codes = np.full(8, 5)
    codes[row] = code
    mask = where.mask(codes)
    assert (True if mask is None else bool(mask[row])) is admitted


def test_empty_index():
    found = ExactSearch(np.zeros((0, 4), np.float32)).search(unit(1, 0, 0, 0), 5)
    assert found.pairs() == [] and found.exhausted

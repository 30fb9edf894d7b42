"""Exact cosine ranking and the search-backend seam (search/)."""

from __future__ import annotations

import numpy as np
import pytest

from search import ExactSearch, Filter, top_rows


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


def test_narrowing_intersects_categories_and_keeps_the_rest():
    rows = np.arange(6) % 2 == 0
    base = Filter(categories=frozenset({1, 2}), exclude_categories=frozenset({9}), exclude_rows=frozenset({4}),
                  rows=rows)
    both = base.narrowed(categories=frozenset({2, 3}), exclude_categories=frozenset({8}))
    assert both.categories == frozenset({2})  # in both, not either
    assert both.exclude_categories == frozenset({8, 9}) and both.exclude_rows == frozenset({4})
    assert both.rows is rows
    assert base.narrowed().categories == frozenset({1, 2})  # nothing new asked: the old condition stays
    assert Filter().narrowed(categories=frozenset({3})).categories == frozenset({3})


@pytest.mark.parametrize("seed", range(6))
def test_the_mask_of_every_row_is_what_admits_says(seed):
    """Every row at once, with codes repeating (a few codes are compared one by one, each adding rows)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 7, 40)
    wanted = frozenset(rng.choice(7, int(rng.integers(1, 7)), replace=False).tolist())
    where = Filter(categories=wanted, exclude_categories=frozenset({int(rng.integers(7))}),
                   exclude_rows=frozenset(rng.choice(40, 3).tolist()), rows=rng.random(40) < 0.7)
    for each in (where, Filter(categories=wanted), Filter(rows=where.rows).narrowed(categories=wanted)):
        assert each.mask(codes).tolist() == [each.admits(i, int(c)) for i, c in enumerate(codes)]


def test_rows_without_codes_are_unlabelled():
    matrix = np.stack([unit(1, 0), unit(1, 0.5), unit(0, 1)])
    plain, labelled = ExactSearch(matrix), ExactSearch(matrix, codes=np.full(3, -1))
    for where in (Filter(categories=frozenset({-1})), Filter(categories=frozenset({1})),
                  Filter(categories=frozenset({-2})), Filter(exclude_categories=frozenset({-1}))):
        assert plain.search(unit(1, 0), 3, where).rows.tolist() == labelled.search(unit(1, 0), 3, where).rows.tolist()
    assert plain.search(unit(1, 0), 3, Filter(categories=frozenset({-1}))).rows.tolist() == [0, 1, 2]


def test_top_rows_rank_by_keys_when_given_and_return_scores():
    scores = np.array([0.9, 0.5, 0.7], np.float32)
    assert [r for r, _ in top_rows(scores, 3)] == [0, 2, 1]
    ranked = top_rows(scores, 3, keys=np.array([1.0, 2.0, 0.0]))
    assert [r for r, _ in ranked] == [1, 0, 2] and [s for _, s in ranked] == pytest.approx([0.5, 0.9, 0.7])
    assert top_rows(scores, 0) == [] and top_rows(scores, 2, min_score=0.6) == [(0, pytest.approx(0.9)),
                                                                                (2, pytest.approx(0.7))]

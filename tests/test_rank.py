"""The ranking's own rules, at their edges (ranking/rank.py), on a small exact backend: price ranges on both
ends, the filter a search is asked with, a product's own category first, results found beyond the first
candidates, the threshold's slack and the offset's pages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranking import THRESHOLD_SLACK, RankingView, RankOptions, rank_product, rank_query
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import CategoryVote, Grouping
from search import ExactSearch, Filter

SCALE = Calibration(UNCALIBRATED)  # percent = 100 × cosine


def angles(*degrees: float) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


class Recording(ExactSearch):
    """An exact backend that records what it is asked."""

    def __init__(self, x, codes) -> None:
        super().__init__(x, codes)
        self.asked: list[tuple[int, Filter, float]] = []

    def search(self, query, k, where=Filter(), min_score=-1.0):  # noqa: B008 - a test double
        self.asked.append((k, where, min_score))
        return super().search(query, k, where, min_score)


SHARP = CategoryVote(k=2, temperature=1e9)  # every neighbour's vote weighs the same


def view(labels, degrees, prices=None, vote=SHARP, no_match=None) -> RankingView:
    grouping = Grouping.from_labels(labels, SCALE.percent, vote)
    backend = Recording(angles(*degrees), grouping.codes)
    return RankingView(backend, grouping, SCALE, no_match_percent=no_match,
                       prices=None if prices is None else np.array(prices, dtype=np.float64))


def test_price_rows_on_both_ends_and_open_ends():
    v = view(["a"] * 4, [0, 10, 20, 30], prices=[5.0, 10.0, float("nan"), 20.0])
    assert v.price_rows(None, None) is None
    assert v.price_rows(10.0, 20.0).tolist() == [False, True, False, True]  # both ends included
    assert v.price_rows(10.000001, None).tolist() == [False, False, False, True]
    assert v.price_rows(None, 9.999999).tolist() == [True, False, False, False]
    assert v.price_rows(0.0, None).tolist() == [True, True, False, True]  # an unknown price never matches
    bare = view(["a"] * 2, [0, 10])
    assert bare.price_rows(0.0, None).tolist() == [False, False]  # no prices at all: nothing is in a range


def test_the_filter_of_a_search_is_its_category_price_and_exclusions():
    v = view(["Shoes", "bags", "Bags", "Shoes"], [0, 10, 20, 30], prices=[1.0, 2.0, 3.0, 4.0])
    assert v.category_codes(None) is None and v.category_codes("") is None
    assert v.grouping.names == ["Bags", "Shoes", "bags"]
    assert v.category_codes(" BAGS ") == frozenset({0, 2})  # "Bags" and "bags": both spellings
    assert v.category_codes("hats") == frozenset()
    where = v.where(RankOptions(0, 3, category="shoes", min_price=2.0), frozenset({3}))
    assert where.categories == frozenset({1}) and where.exclude_rows == frozenset({3})
    assert where.rows.tolist() == [False, True, True, True]
    assert v.where(RankOptions(0, 3)) == Filter() and v.where(RankOptions(0, 3)).rows is None


def test_more_like_this_puts_the_products_own_category_first_and_leaves_it_out():
    v = view(["a", "b", "a", "b"], [0, 5, 40, 10])
    found = rank_product(v, 0, RankOptions(threshold=0, top_k=3))
    assert found.rows == [2, 1, 3] and found.guess.source == "product" and found.guess.confidence == 1.0
    assert found.guess.category == "a" and found.first_group == 1 and not found.no_close_match
    alone = rank_product(v, 0, RankOptions(threshold=0, top_k=3, category_first=False))
    assert alone.rows == [1, 3, 2] and alone.guess is None and alone.first_group == 0
    filtered = rank_product(v, 0, RankOptions(threshold=0, top_k=3, category="b"))
    assert filtered.rows == [1, 3] and filtered.guess is None
    assert all(0 in where.exclude_rows for _, where, _ in v.backend.asked)


def test_an_unlabelled_product_has_no_category_to_put_first():
    v = view(["", "b", "a"], [0, 5, 10])
    found = rank_product(v, 0, RankOptions(threshold=0, top_k=2))
    assert found.guess is None and found.rows == [1, 2]


def test_rows_beyond_the_first_candidates_are_searched_for():
    """The ten nearest settle the vote (six a, four b); the guessed category needs eight, so the rest of it is
    searched for, with the threshold handed to the backend."""
    v = view(["a"] * 6 + ["b"] * 4 + ["a"] * 2, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21],
             vote=CategoryVote(k=10, temperature=1e9))
    found = rank_query(v, angles(0)[0], RankOptions(threshold=30, top_k=8))
    assert found.rows == [0, 1, 2, 3, 4, 5, 10, 11] and found.first_group == 8
    k, where, min_score = v.backend.asked[-1]
    assert (k, where.categories) == (8, frozenset({0}))
    assert min_score == pytest.approx(SCALE.cosine(30) - THRESHOLD_SLACK)
    assert len(v.backend.asked) == 2


def test_the_threshold_keeps_a_product_exactly_at_it():
    v = view(["a", "a"], [0, 60])  # cosine 0.5 = 50 %
    at = rank_query(v, angles(0)[0], RankOptions(threshold=50, top_k=2))
    assert at.rows == [0, 1] and at.similarities == pytest.approx([100, 50], abs=1e-4)
    above = rank_query(v, angles(0)[0], RankOptions(threshold=50.01, top_k=2))
    assert above.rows == [0]


def test_pages_are_slices_and_the_group_count_follows_the_offset():
    v = view(["a", "a", "b", "b"], [0, 5, 10, 15])
    whole = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=4))
    page = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, offset=1))
    assert whole.rows == [0, 1, 2, 3] and whole.first_group == 2
    assert page.rows == [1, 2] and page.first_group == 1
    past = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, offset=3))
    assert past.rows == [3] and past.first_group == 0


def test_no_close_match_drops_the_category_claim_and_only_queries_get_it():
    v = view(["a", "b"], [50, 60], no_match=70.0)  # best cosine cos(50°) = 64 %
    lost = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2))
    assert lost.no_close_match and lost.guess is None and lost.rows == [0, 1]
    assert lost.similarities == pytest.approx([100 * math.cos(math.radians(50)), 50], abs=1e-3)
    near = view(["a", "b"], [40, 60], no_match=70.0)  # 76.6 %: carried
    assert not rank_query(near, angles(0)[0], RankOptions(threshold=0, top_k=2)).no_close_match
    assert not rank_product(v, 0, RankOptions(threshold=0, top_k=1)).no_close_match  # a product is carried
    empty = view(["a"], [0], no_match=70.0)
    nothing = rank_query(empty, angles(0)[0], RankOptions(threshold=0, top_k=2, category="zz"))
    # nothing in the filter, but the catalog has the very picture: carried, the filter hid it
    assert nothing.rows == [] and not nothing.no_close_match and nothing.closer_outside_filter
    none_anywhere = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, category="zz"))
    assert none_anywhere.rows == [] and none_anywhere.no_close_match  # nothing close anywhere: not carried


def test_the_vote_names_its_winner_and_share():
    v = view(["a", "b", "b"], [0, 10, 20], vote=CategoryVote(k=3, temperature=1e9))
    found = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=3))
    assert found.guess.category == "b" and found.guess.source == "vote" and found.guess.code == 1
    assert found.guess.confidence == pytest.approx(0.667, abs=1e-3) and found.rows == [1, 2, 0]


def test_a_filter_that_hides_every_close_product_is_not_we_dont_carry_this():
    """With a category or a price range, "no close match" is the catalog's verdict, not the filter's: a close
    product outside the filter makes it "nothing in the filter comes close" instead."""
    v = view(["a", "b"], [10, 60], prices=[100.0, 5.0], no_match=70.0)  # a: 98.5 %, b: 50 %
    in_b = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, category="b"))
    assert in_b.rows == [1] and not in_b.no_close_match and in_b.closer_outside_filter and in_b.guess is None
    cheap = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, max_price=10.0))
    assert cheap.rows == [1] and not cheap.no_close_match and cheap.closer_outside_filter
    costly = rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2, min_price=10.0))  # the close one
    assert costly.rows == [0] and not costly.no_close_match and not costly.closer_outside_filter
    far = view(["a", "b"], [50, 60], prices=[100.0, 5.0], no_match=70.0)  # nothing close anywhere
    both = rank_query(far, angles(0)[0], RankOptions(threshold=0, top_k=2, category="b"))
    assert both.no_close_match and not both.closer_outside_filter
    plain = rank_query(far, angles(0)[0], RankOptions(threshold=0, top_k=2))
    assert plain.no_close_match and not plain.closer_outside_filter
    assert not rank_query(v, angles(0)[0], RankOptions(threshold=0, top_k=2)).closer_outside_filter

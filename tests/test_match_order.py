"""The number a shopper sees orders the list (ranking/rank.py's match): it never increases down a page or
across "Show more", for any query, with or without the colour tie-breaker, category first or not, filtered or
not; and the CNN's closest product of the category ranked first is never pushed down by colour."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking import MatchSettings, RankingView, RankOptions, rank_product, rank_query
from ranking.appearance import Appearance
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import CategoryVote, Grouping
from ranking.rank import colour_shares
from search import ExactSearch

SCALE = Calibration(UNCALIBRATED)  # percent = 100 × cosine


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)).astype(np.float32)


def random_view(seed: int, rows: int, power: float = MatchSettings().colour_power
                ) -> tuple[RankingView, np.random.Generator]:
    rng = np.random.default_rng(seed)
    labels = [str(c) for c in rng.choice(["a", "b", "c", ""], rows)]
    grouping = Grouping.from_labels(labels, SCALE.percent, CategoryVote(k=4, temperature=2.0))
    vectors = unit(rng.normal(size=(rows, 6)) + 0.8)  # mostly positive cosines, like a catalog's
    looks = unit(rng.normal(size=(rows, 3)))
    view = RankingView(ExactSearch(vectors, grouping.codes), grouping, SCALE, Appearance(weight=0.85), looks,
                       settings=MatchSettings(colour_power=power))
    return view, rng


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.integers(1, 40), top_k=st.integers(1, 8),
       threshold=st.sampled_from([0.0, 20.0, 50.0, 80.0]), category_first=st.booleans(),
       category=st.sampled_from([None, "a", "b"]), coloured=st.booleans())
def test_shown_matches_never_increase_down_a_page_or_across_show_more(seed, rows, top_k, threshold, category_first,
                                                                     category, coloured):
    view, rng = random_view(seed, rows)
    query = unit(rng.normal(size=6) + 0.8)
    look = unit(rng.normal(size=3)) if coloured else None
    options = RankOptions(threshold=threshold, top_k=top_k, category=category, category_first=category_first)
    first = rank_query(view, query, options, look)
    more = rank_query(view, query, RankOptions(threshold=threshold, top_k=top_k, category=category,
                                                category_first=category_first, offset=top_k), look)
    whole = rank_query(view, query, RankOptions(threshold=threshold, top_k=2 * top_k, category=category,
                                                 category_first=category_first), look)
    shown = first.matches + more.matches
    assert all(a >= b for a, b in zip(shown, shown[1:], strict=False))
    assert first.rows + more.rows == whole.rows and shown == whole.matches
    # the threshold holds for the similarity (colour never hides a product), the match is never above it
    assert all(s >= threshold - 1e-4 for s in first.similarities + more.similarities)
    assert all(m <= s + 1e-9 for m, s in zip(shown, first.similarities + more.similarities, strict=True))
    assert len(set(whole.rows)) == len(whole.rows)
    if first.guess is not None and first.rows:  # the CNN's closest of the first category keeps the top
        codes = view.grouping.codes
        group = [r for r in whole.rows if int(codes[r]) == first.guess.code]
        if group:
            best = max(group, key=lambda r: float(view.backend.vector(r) @ query))
            assert whole.rows[0] == best and whole.matches[0] == whole.similarities[0]


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.integers(1, 40), top_k=st.integers(1, 8),
       threshold=st.sampled_from([0.0, 20.0, 50.0, 80.0]), category_first=st.booleans(),
       category=st.sampled_from([None, "a", "b"]), coloured=st.booleans(), pick=st.floats(0, 1))
def test_a_confirmed_product_leads_every_page_it_can_answer_and_the_order_still_holds(
        seed, rows, top_k, threshold, category_first, category, coloured, pick):
    view, rng = random_view(seed, rows)
    query = unit(rng.normal(size=6) + 0.8)
    look = unit(rng.normal(size=3)) if coloured else None
    pinned = min(int(pick * rows), rows - 1)

    def ranked(k: int, offset: int = 0):
        return rank_query(view, query, RankOptions(threshold=threshold, top_k=k, category=category,
                                                   category_first=category_first, offset=offset), look, pinned=pinned)

    first, more, whole = ranked(top_k), ranked(top_k, top_k), ranked(2 * top_k)
    shown = first.matches + more.matches
    assert all(a >= b for a, b in zip(shown, shown[1:], strict=False))
    assert first.rows + more.rows == whole.rows and shown == whole.matches and len(set(whole.rows)) == len(whole.rows)
    plain = rank_query(view, query, RankOptions(threshold=threshold, top_k=rows, category=category,
                                                category_first=category_first), look)
    answers = pinned in plain.rows  # the filter and the threshold let it answer at all
    assert (whole.rows[:1] == [pinned]) == answers
    assert all(s >= threshold - 1e-4 for s in whole.similarities)
    # only the confirmed product's match may be raised above its similarity, and only to the next one's
    assert all(m <= s + 1e-9 for r, m, s in zip(whole.rows, whole.matches, whole.similarities, strict=True)
               if r != pinned)
    if answers and len(whole.rows) > 1:
        assert whole.matches[0] == pytest.approx(max(whole.matches[1], whole.similarities[0]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.integers(2, 30), top_k=st.integers(1, 6))
def test_more_like_this_pages_are_ordered_by_the_match_too(seed, rows, top_k):
    view, _ = random_view(seed, rows)
    first = rank_product(view, 0, RankOptions(threshold=0, top_k=top_k))
    more = rank_product(view, 0, RankOptions(threshold=0, top_k=top_k, offset=top_k))
    shown = first.matches + more.matches
    assert all(a >= b for a, b in zip(shown, shown[1:], strict=False)) and 0 not in first.rows + more.rows


def test_the_colour_keeps_a_share_of_the_similarity_and_never_moves_the_cnns_closest():
    grouping = Grouping.from_labels(["a"] * 4, SCALE.percent, CategoryVote(k=4, temperature=1e9))
    vectors = unit(np.array([[1, 0.10], [1, 0.12], [1, 0.3], [1, 0.5]], np.float32))
    # row 0 another colour, row 1 the query's, row 2 halfway (cosine 0), row 3 the opposite
    looks = unit(np.array([[0, 1], [1, 0], [0, 1], [-1, 0]], np.float32))
    query, look = unit(np.array([1, 0.1], np.float32)), np.array([1, 0], np.float32)

    def ranked(power: float):
        view = RankingView(ExactSearch(vectors, grouping.codes), grouping, SCALE, Appearance(weight=0.85), looks,
                           settings=MatchSettings(colour_power=power))
        return rank_query(view, query, RankOptions(threshold=0, top_k=4), look)

    found = ranked(2.0)
    assert found.rows == [0, 1, 2, 3]  # row 0 is the CNN's closest: it stays first though its colour differs
    assert found.matches[0] == found.similarities[0]  # no colour term on it
    assert found.matches[1] == found.similarities[1]  # the query's own colour: nothing lost
    assert found.matches[2] == pytest.approx(found.similarities[2] * 0.25)  # halfway: (1/2) ** 2 of it
    assert found.matches[3] == 0.0  # the opposite colour keeps nothing
    assert ranked(1.0).matches[2] == pytest.approx(found.similarities[2] * 0.5)  # the power sets the share
    assert ranked(0.0).matches == ranked(0.0).similarities  # power 0: the match is the similarity


def test_a_stored_appearance_row_of_any_length_counts_as_a_cosine():
    """The index store is untrusted: a row twice too long is never more than the same colour, nor less than the
    opposite one."""
    grouping = Grouping.from_labels(["a"] * 4, SCALE.percent, CategoryVote(k=4, temperature=1e9))
    vectors = unit(np.array([[1, 0.10], [1, 0.12], [1, 0.3], [1, 0.5]], np.float32))
    looks = np.array([[0, 1], [2, 0], [-2, 0], [1, 0]], np.float32)  # rows 1 and 2 twice too long
    view = RankingView(ExactSearch(vectors, grouping.codes), grouping, SCALE, Appearance(weight=0.85), looks)
    found = rank_query(view, unit(np.array([1, 0.1], np.float32)), RankOptions(threshold=0, top_k=4),
                       np.array([1, 0], np.float32))
    assert found.rows == [0, 1, 3, 2]
    assert found.matches[:3] == found.similarities[:3]  # the too-long row does not lower the true same colour
    assert found.matches[3] == 0.0  # nor does the too-long opposite keep a share


@pytest.mark.parametrize(("alike", "shares"), [
    ([-1.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.25, 0.0]),  # the first keeps all whatever its colour
    ([1.0, 0.0, -1.0], [1.0, 1.0, 0.0]),  # the best of the rest keeps all, even at cosine 0
    ([0.2, -1.0, -1.0], [1.0, 1.0, 1.0]),  # every other one the opposite colour: no colour tells them apart
    ([0.5], [1.0]),  # one candidate
    ([], []),
])
def test_colour_shares_are_relative_to_the_best_colour_after_the_first(alike, shares):
    assert colour_shares(np.array(alike), 2.0) == pytest.approx(np.array(shares))

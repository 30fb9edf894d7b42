"""Held-out evaluation (evaluation/held_out.py): hand-computed metrics, twin exclusion, the split, and a fit
that never sees a query."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import held_out
from evaluation.held_out import (
    Split,
    evaluate_held_out,
    held_out_split,
    joined_labels,
    precision_report,
    twins_of,
)
from evaluation.ranked import gallery_view, ranked_rows
from ranking.appearance import HIST_SIZE
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import Grouping


def test_normalised_precision_by_hand():
    # two queries; gallery labels a a b c; query 0 is "a" (2 relevant), query 1 is "c" (1 relevant)
    gallery = np.array(["a", "a", "b", "c"])
    top = np.array([[0, 2, 1], [2, 3, 0]])  # ranked gallery rows per query
    none = np.zeros((2, 4), bool)
    r = precision_report(top, np.array(["a", "c"]), gallery, none, ks=(1, 3))
    assert r["precision@1"] == pytest.approx((1 + 0) / 2)
    assert r["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # best possible at 3: min(3, 2) = 2 for "a" (2 hits → 1.0), min(3, 1) = 1 for "c" (1 hit → 1.0)
    assert r["normalised_precision@3"] == pytest.approx(1.0)
    assert r["normalised_precision@1"] == pytest.approx((1 / 1 + 0 / 1) / 2)


def test_a_query_without_relevant_rows_counts_in_precision_only():
    r = precision_report(np.array([[0], [1]]), np.array(["a", "z"]), np.array(["a", "b"]), np.zeros((2, 2), bool),
                         ks=(1,))
    assert r["queries_without_relevant"] == 1 and r["precision@1"] == 0.5 and r["normalised_precision@1"] == 1.0


def test_unlabelled_queries_have_nothing_relevant():
    r = precision_report(np.array([[0]]), np.array([""]), np.array([""]), np.zeros((1, 1), bool), ks=(1,))
    assert r["precision@1"] == 0 and r["queries_without_relevant"] == 1


def test_a_twin_never_answers_and_is_not_counted_as_relevant():
    keys_q, keys_g = np.array(["x", ""]), np.array(["x", "y", ""])
    twins = twins_of(keys_q, keys_g)
    assert twins.tolist() == [[True, False, False], [False, False, False]]  # an empty digest twins nothing
    gallery = np.eye(3, dtype=np.float32)  # each query's scores are its own numbers
    queries = np.array([[1.0, 0.5, 0.2], [0.1, 0.9, 0.3]], np.float32)
    scale = Calibration(UNCALIBRATED)
    view = gallery_view(gallery, Grouping.from_labels(["a", "b", "a"], scale.percent), scale)
    top = ranked_rows(view, queries, 2, category_first=False, excluded=twins)
    assert top.tolist() == [[1, 2], [1, 2]]
    r = precision_report(top, np.array(["a", "a"]), np.array(["a", "b", "a"]), twins, ks=(2,))
    # query 0: only gallery row 2 is relevant (row 0 is its twin) → best 1, 1 hit; query 1: rows 0 and 2 → 1/2
    assert r["normalised_precision@2"] == pytest.approx((1.0 + 0.5) / 2)


def test_split_is_seeded_per_label_and_never_empties_a_gallery():
    labels = np.array(["a"] * 10 + ["b"] * 5 + ["c"] * 2 + [""] * 3)
    one = held_out_split(labels, 0.2, seed=3)
    assert np.array_equal(held_out_split(labels, 0.2, seed=3).queries, one.queries)  # seeded
    assert not set(one.gallery) & set(one.queries)
    assert (labels[one.queries] == "a").sum() == 2 and (labels[one.queries] == "b").sum() == 1
    assert not np.isin(labels[np.concatenate([one.gallery, one.queries])], ["c", ""]).any()  # < 5 rows, unlabelled
    assert not np.array_equal(held_out_split(labels, 0.2, seed=4).queries, one.queries)
    small = held_out_split(labels, 0.9, seed=0, min_per_label=2)
    assert (labels[small.gallery] == "c").sum() == 1  # at least one stays in the gallery
    sampled = held_out_split(labels, 0.2, seed=0, per_label=5, max_labels=1)
    assert len(sampled.gallery) + len(sampled.queries) == 5
    with pytest.raises(ValueError):
        held_out_split(labels, 1.0, seed=0)


def test_joined_labels():
    products = [{"t": "Tshirts", "c": "Blue"}, {"t": "Tshirts", "c": ""}, {"t": "Jeans"}]
    assert joined_labels(products, ["t", "c"]).tolist() == ["Tshirts+Blue", "", ""]


def clustered(n_per: int = 30, kinds: int = 4, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(kinds, dim)) * 2
    labels = np.repeat([f"k{i}" for i in range(kinds)], n_per)
    x = centres[np.repeat(np.arange(kinds), n_per)] + rng.normal(size=(kinds * n_per, dim))
    return x.astype(np.float32), labels


def test_the_fit_never_sees_a_held_out_query(monkeypatch):
    """Held-out rows with NaN pictures and a label of their own: nothing of them reaches the fit."""
    x, labels = clustered()
    keys = np.array([f"img{i}" for i in range(len(x))])
    split = held_out_split(labels, 0.2, seed=1)
    settings = {"dims": 8, "power": 0.5, "shrink": 0.1}
    assert evaluate_held_out(x, labels, labels, keys, split, settings)["category_first"]["category"][
        "precision@1"] > 0.9  # separable clusters: the protocol itself works
    fits = []
    real = held_out.fit_gallery
    monkeypatch.setattr(held_out, "fit_gallery", lambda *a: fits.append(real(*a)) or fits[-1])
    x[split.queries] = np.nan
    poisoned = labels.copy()
    poisoned[split.queries] = "POISON"
    evaluate_held_out(x, poisoned, poisoned, keys, split, settings)
    (fitted,) = fits
    assert np.isfinite(fitted.whitening.mean).all() and np.isfinite(fitted.whitening.projection).all()
    assert "POISON" not in fitted.grouping.names and len(fitted.grouping.codes) == len(split.gallery)


def test_every_query_and_gallery_row_is_where_the_split_says():
    x, labels = clustered(n_per=10, kinds=3)
    split = Split(np.arange(0, 30, 2), np.arange(1, 30, 2))
    r = evaluate_held_out(x, labels, labels, np.array([""] * 30), split, None)
    assert (r["gallery"], r["queries"], r["twin_pairs_excluded"]) == (15, 15, 0)


def test_a_twin_in_the_gallery_does_not_answer_for_its_query():
    x, labels = clustered(n_per=10, kinds=3)
    x[1] = x[0]  # row 1 (a query) is row 0's picture under another id
    keys = np.array([f"img{i}" for i in range(30)])
    keys[1] = keys[0]
    fine = labels.copy()
    fine[[0, 1]] = "twin-only"  # the only row sharing row 1's fine label is its twin
    split = Split(np.array([0] + list(range(2, 30, 2))), np.arange(1, 30, 2))
    r = evaluate_held_out(x, labels, fine, keys, split, None)
    assert r["twin_pairs_excluded"] == 1
    label = r["similarity_alone"]["label"]
    assert label["queries_without_relevant"] == 1 + 0  # query 1's only relevant row is its twin
    # the twin is not ranked at all: had it come first (a hit that does not count), query 1's top-1 would miss
    assert r["similarity_alone"]["category"]["precision@1"] == 1.0


def test_the_appearance_fit_never_sees_a_held_out_query(monkeypatch):
    """The colour projection is fitted from gallery histograms and colours only."""
    x, labels = clustered()
    rng = np.random.default_rng(0)
    hists = rng.random((len(x), HIST_SIZE)).astype(np.float32)
    colours = np.array(["red", "blue"] * (len(x) // 2))
    split = held_out_split(labels, 0.2, seed=1)
    seen = []
    real = held_out.fit_appearance
    monkeypatch.setattr(held_out, "fit_appearance", lambda h, v, c, s: seen.append((h, v, c)) or real(h, v, c, s))
    hists[split.queries] = np.nan
    colours[split.queries] = "POISON"
    report = evaluate_held_out(x, labels, labels, np.array([""] * len(x)), split, None, hists=hists, colours=colours)
    (fit_hists, fit_vectors, fit_colours), = seen
    assert np.isfinite(fit_hists).all() and "POISON" not in fit_colours and len(fit_colours) == len(split.gallery)
    assert report["appearance"]["projection"]["fitted_on"] == len(split.gallery)


def test_best_matches_report_the_rankings_own_no_close_match():
    """The offline "no close match" figures come from the ranking's own rule (evaluation/ranked.py), twins left
    out: a query whose only close gallery row is its twin is not carried."""
    from evaluation.ranked import best_matches
    from ranking import RankingView
    from search import ExactSearch

    gallery = np.eye(3, dtype=np.float32)
    queries = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], np.float32)
    scale = Calibration(UNCALIBRATED)  # percent = 100 × cosine
    grouping = Grouping.from_labels(["a", "b", "c"], scale.percent)
    view = RankingView(ExactSearch(gallery, grouping.codes), grouping, scale, no_match_percent=70.0)
    best, lost = best_matches(view, queries)
    assert best.tolist() == pytest.approx([100.0, 80.0]) and lost.tolist() == [False, False]
    twins = np.array([[True, False, False], [False, False, False]])
    best, lost = best_matches(view, queries, excluded=twins)
    assert best.tolist() == pytest.approx([0.0, 80.0]) and lost.tolist() == [True, False]
    edge = RankingView(ExactSearch(gallery, grouping.codes), grouping, scale, no_match_percent=80.01)
    assert best_matches(edge, queries[1:])[1].tolist() == [True]  # just below the rule: not carried

"""The similarity calibration and the neighbour histograms it is fitted from (ranking/calibration.py,
ranking/neighbours.py): its documented anchors, its limits on both sides, and hand-computed quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.calibration import MATCH_K, UNCALIBRATED, Calibration, fit_calibration
from ranking.neighbours import BINS, fit_threshold, hist_quantile, hist_summary, neighbours

HALF_BIN = (BINS[1] - BINS[0]) / 2


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clusters(per_label: int, n_labels: int, noise: float = 0.5, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, 16))
    labels = [f"L{i % n_labels}" for i in range(per_label * n_labels)]
    rows = centres[[i % n_labels for i in range(len(labels))]] + noise * rng.normal(size=(len(labels), 16))
    return unit(rows), labels


def hist_of(*scores: float) -> np.ndarray:
    return np.histogram(np.asarray(scores), BINS)[0]


# --- hist_quantile, hist_summary, fit_threshold: hand-computed ------------------------------------------------

def test_quantiles_are_bin_centres_of_the_counted_scores():
    hist = hist_of(0.1001, 0.2001, 0.3001, 0.4001)  # one score in each of four bins
    assert hist_quantile(hist, 0.25) == pytest.approx(0.1 + HALF_BIN)  # the first score's bin
    assert hist_quantile(hist, 0.5) == pytest.approx(0.2 + HALF_BIN)  # 2 of 4 reached at the second bin
    assert hist_quantile(hist, 0.51) == pytest.approx(0.3 + HALF_BIN)
    assert hist_quantile(hist, 1.0) == pytest.approx(0.4 + HALF_BIN)
    assert hist_quantile(hist, 0.0) == pytest.approx(-1.0 + HALF_BIN)  # nothing needed: the first bin
    assert np.isnan(hist_quantile(np.zeros(len(BINS) - 1, dtype=np.int64), 0.5))


def test_summary_counts_pairs_and_rounds_its_quantiles():
    summary = hist_summary(hist_of(*([0.5001] * 10)))
    assert summary == {"pairs": 10, "p5": 0.503, "p25": 0.503, "p50": 0.503, "p75": 0.503, "p95": 0.503}


def test_threshold_is_the_upper_edge_of_the_best_separating_bin():
    same = hist_of(0.8001, 0.9001, 0.9501)
    diff = hist_of(0.1001, 0.2001, 0.8001, 0.5001)
    best = fit_threshold(same, diff)
    # Kept means "score ≥ the bin's upper edge". Cutting just above 0.5: all 3 matches kept minus 1/4
    # of the unrelated kept (the 0.8 one) = 0.75; cutting above 0.8 keeps 2/3 and 0/4 = 0.667.
    assert best == {"cosine": 0.505, "same_label_kept": 1.0, "different_label_dropped": 0.75}


def test_threshold_without_any_pairs_keeps_everything():
    empty = np.zeros(len(BINS) - 1, dtype=np.int64)
    assert fit_threshold(empty, empty) == {"cosine": -0.995, "same_label_kept": 1.0, "different_label_dropped": 0.0}


# --- neighbours -------------------------------------------------------------------------------------------

def test_neighbours_exclude_the_row_itself_and_cap_k_at_the_others():
    x = unit([[1, 0], [0.9, 0.1], [0, 1]])
    idx, scores, *_ = neighbours(x, k=10)
    assert idx.shape == (3, 2)  # k capped at n − 1
    assert idx.tolist() == [[1, 2], [0, 2], [1, 0]]
    assert scores[0, 0] == pytest.approx(float(x[0] @ x[1]))


def test_pair_histograms_count_each_pair_once_in_every_block():
    x, labels = clusters(per_label=7, n_labels=3)
    lab = np.asarray(labels)
    for block in (1, 4, 100):
        _, _, same, diff = neighbours(x, 3, block=block, labels=lab)
        assert same.sum() == 3 * (7 * 6 // 2) and diff.sum() == 3 * 7 * 7
    sims = x @ x.T
    expected_same = [sims[i, j] for i in range(21) for j in range(i + 1, 21) if labels[i] == labels[j]]
    assert np.array_equal(same, hist_of(*expected_same))


# --- Calibration ------------------------------------------------------------------------------------------

def test_a_manifest_with_points_uses_them():
    points = [[0.2, 0.0], [0.5, 40.0], [0.8, 70.0], [1.0, 100.0]]
    assert Calibration.from_manifest({"calibration": {"points": points, "source": "fitted"}}).points == points


def test_a_manifest_without_calibration_maps_cosine_to_percent():
    for manifest in ({}, {"calibration": None}, {"calibration": {"points": []}}):
        assert Calibration.from_manifest(manifest).points == UNCALIBRATED
    plain = Calibration.from_manifest({})
    assert plain.percent(0.7) == pytest.approx(70.0) and plain.cosine(70.0) == pytest.approx(0.7)


def test_zero_percent_admits_everything_and_the_smallest_positive_percent_does_not():
    cal = Calibration([[0.2, 0.0], [0.5, 40.0], [0.8, 70.0], [1.0, 100.0]])
    assert cal.cosine(0) == -1.0 and cal.cosine(-5) == -1.0
    assert cal.cosine(0.001) == pytest.approx(0.2, abs=1e-4)  # just above 0%: the lowest anchor
    assert cal.cosine(40.0) == pytest.approx(0.5) and cal.cosine(55.0) == pytest.approx(0.65)
    assert cal.percent(np.array([0.1, 0.5, 0.8, 0.9, 1.0])).tolist() == pytest.approx([0, 40, 70, 85, 100])


def test_fitted_anchors_are_the_documented_points():
    vectors, labels = clusters(per_label=30, n_labels=4, noise=1.2)  # overlapping: the matches set the cut
    fitted = fit_calibration(vectors, labels)
    lab = np.asarray(labels)
    _, _, _, diff = neighbours(vectors, MATCH_K, labels=lab)
    sims = vectors @ vectors.T
    unrelated = np.array([sims[i, j] for i in range(120) for j in range(i + 1, 120) if labels[i] != labels[j]])
    # The median unrelated pair maps to 40 %, the 1st percentile to 0 %, the threshold to 70 %, identity to 100 %.
    points = fitted["points"]
    assert [p[1] for p in points] == [0.0, 40.0, 70.0, 100.0] and points[-1][0] == 1.0
    assert points[1][0] == pytest.approx(np.median(unrelated), abs=2 * HALF_BIN)
    assert points[0][0] == pytest.approx(np.quantile(unrelated, 0.01), abs=2 * HALF_BIN)
    assert fitted["unrelated_median_cosine"] == points[1][0]
    assert points[2][0] == fitted["threshold_cosine"]
    # The threshold is the best separation of same-category neighbours (among the 20 nearest) from unrelated.
    idx, scores, _, _ = neighbours(vectors, MATCH_K, labels=lab)
    matches = np.histogram(scores[lab[idx] == lab[:, None]], BINS)[0]
    assert fitted["threshold_cosine"] == fit_threshold(matches, diff)["cosine"]
    assert fitted["source"] == "fitted on 120 products in 4 categories; matches = same category among the 20 nearest"
    separation = fit_threshold(matches, diff)
    assert (fitted["matches_kept"], fitted["different_label_dropped"]) == (
        separation["same_label_kept"], separation["different_label_dropped"])
    assert set(fitted) == {"points", "threshold_cosine", "matches_kept", "different_label_dropped",
                           "unrelated_median_cosine", "source"}


def test_fifty_labelled_products_in_two_categories_are_enough_and_49_are_not():
    vectors, labels = clusters(per_label=25, n_labels=2)
    assert fit_calibration(vectors, labels)["points"] != UNCALIBRATED
    too_few = fit_calibration(vectors[:49], labels[:49])
    assert too_few == {"points": UNCALIBRATED, "source": "uncalibrated: 49 products in 2 categories with ≥ 5 "
                                                         "products (need 50 and 2)"}


def test_only_categories_with_five_products_count():
    vectors, labels = clusters(per_label=25, n_labels=2)
    # Ten more products in categories of 4 and unlabelled ones: they do not count, and do not change the fit.
    extra, _ = clusters(per_label=5, n_labels=2, seed=9)
    more = np.vstack([vectors, extra])
    more_labels = labels + ["small"] * 4 + [""] * 6
    assert fit_calibration(more, more_labels) == fit_calibration(vectors, labels)
    five = fit_calibration(more, labels + ["five"] * 5 + [""] * 5)
    assert five["source"].startswith("fitted on 55 products in 3 categories")


def test_one_category_is_not_enough():
    vectors, _ = clusters(per_label=60, n_labels=1)
    fitted = fit_calibration(vectors, ["shoes"] * 60)
    assert fitted["points"] == UNCALIBRATED and "60 products in 1 categories" in fitted["source"]


def test_a_map_that_would_not_rise_stays_uncalibrated():
    # Two categories of identical pictures: every unrelated pair scores exactly 0, so the 1st percentile and
    # the median of unrelated pairs fall in one bin and no increasing map through them exists.
    vectors = np.repeat(np.eye(16, dtype=np.float32)[:2], 30, axis=0)
    fitted = fit_calibration(vectors, ["a"] * 30 + ["b"] * 30)
    assert fitted["points"] == UNCALIBRATED and fitted["source"].startswith("uncalibrated: labels do not separate")


def test_a_large_catalog_is_sampled_reproducibly():
    vectors, labels = clusters(per_label=40, n_labels=3)
    a = fit_calibration(vectors, labels, max_items=60, seed=1)
    assert a == fit_calibration(vectors, labels, max_items=60, seed=1)
    # The sample is 60 different products drawn with the seed, fitted as if they were the catalog.
    sample = sorted(np.random.default_rng(1).choice(120, 60, replace=False).tolist())
    assert a == fit_calibration(vectors[sample], [labels[i] for i in sample], max_items=10_000)
    assert a["source"].startswith("fitted on 60 products")
    assert fit_calibration(vectors, labels, max_items=120)["source"].startswith("fitted on 120 products")
    assert fit_calibration(vectors, labels, max_items=119)["source"].startswith("fitted on 119 products")


def test_pairs_a_rounding_error_outside_one_are_still_counted():
    v = np.random.default_rng(0).normal(size=8).astype(np.float32)
    v /= np.linalg.norm(v)
    assert v @ v > 1 and v @ -v < -1  # float32: 1.0000001 and -1.0000001
    _, _, same, diff = neighbours(np.stack([v, v, -v]), 2, labels=np.array(["a", "a", "b"]))
    assert same.sum() == 1 and same[-1] == 1  # the twin pair, in the top bin
    assert diff.sum() == 2 and diff[0] == 2  # both opposite pairs, in the bottom bin


def test_neighbours_equal_a_full_sort_for_every_k():
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(40, 6)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    for k in (1, 2, 5, 39):
        idx, scores, *_ = neighbours(x, k, block=16)
        assert idx.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :k].tolist()
        assert np.allclose(scores, np.take_along_axis(sims, idx, axis=1))


def test_quantile_of_a_score_in_the_top_bin_and_a_threshold_from_single_pairs():
    assert hist_quantile(hist_of(0.1001, 0.9999), 1.0) == pytest.approx(1.0 - HALF_BIN)
    assert hist_quantile(hist_of(0.1001, 0.9999), 0.5) == pytest.approx(0.1 + HALF_BIN)
    best = fit_threshold(hist_of(0.9001), hist_of(0.2001))  # one pair each
    assert best == {"cosine": 0.205, "same_label_kept": 1.0, "different_label_dropped": 1.0}
    lopsided = fit_threshold(hist_of(0.9001, 0.3001, 0.3002), hist_of(0.5001))
    assert lopsided == {"cosine": 0.505, "same_label_kept": 0.333, "different_label_dropped": 1.0}


def test_neighbours_of_a_large_catalog_equal_a_full_sort():
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(3000, 6)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    _, scores, *_ = neighbours(x, 20, block=512)
    # The same 20 best scores per row, best first (blocks may round a hair differently: compare values).
    assert np.allclose(scores, -np.sort(-sims, axis=1)[:, :20], atol=1e-6)


def test_threshold_edge_cases_by_hand():
    # The only match scores below the only unrelated pair: no cut separates them, so the cut keeps everything.
    assert fit_threshold(hist_of(0.1001), hist_of(0.9001)) == {"cosine": -0.995, "same_label_kept": 1.0,
                                                             "different_label_dropped": 0.0}
    # Cut above 0.2: the match kept, two of three unrelated pairs dropped (stored to three decimals).
    assert fit_threshold(hist_of(0.9001), hist_of(0.1001, 0.2001, 0.9501)) == {
        "cosine": 0.205, "same_label_kept": 1.0, "different_label_dropped": 0.667}
    assert hist_quantile(hist_of(0.9999), 0.5) == pytest.approx(1.0 - HALF_BIN)  # all in the top bin

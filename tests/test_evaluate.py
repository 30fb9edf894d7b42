"""Retrieval metrics, whitening and calibration (catalog/evaluate.py, ranking/whitening.py,
ranking/calibration.py, scripts/evaluate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.metrics import evaluate
from ranking.calibration import UNCALIBRATED, Calibration, fit_calibration
from ranking.neighbours import fit_threshold, neighbours
from ranking.whitening import fit_whitening
from scripts.evaluate import main as evaluate_cli
from tests.conftest import DEMO_CSV


def unit_rows(*rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metrics_match_hand_computed_values():
    # Neighbours by cosine, self excluded (worked out by hand):
    #   v0 (A): v1 A, v2 B, v3 B      v1 (A): v0 A, v2 B, v3 B
    #   v2 (B): v1 A, v0 A, v3 B      v3 (B): v2 B, v1 A, v0 A
    vectors = unit_rows([1, 0], [0.9, 0.1], [0.8, 0.6], [0, 1])
    result = evaluate(vectors, ["A", "A", "B", "B"], ks=(1, 2, 3))
    m = result.metrics
    assert m["precision@1"] == pytest.approx(3 / 4)
    assert m["precision@2"] == pytest.approx(1.5 / 4)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["mAP@3"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)  # one relevant item each; v2 finds it at rank 3
    assert result.per_label["B"]["precision@1"] == pytest.approx(0.5)
    assert result.same_hist.sum() == 2 and result.diff_hist.sum() == 4  # all pairs, each once


def test_neighbours_in_blocks_equal_one_block():
    rng = np.random.default_rng(1)
    x = unit_rows(*rng.normal(size=(50, 8)))
    a = neighbours(x, 5, block=7)[0]
    b = neighbours(x, 5, block=1000)[0]
    assert np.array_equal(a, b)


def test_threshold_separates_labels():
    vectors = unit_rows([1, 0], [0.95, 0.05], [0, 1], [0.05, 0.95])
    _, _, same, diff = neighbours(vectors, 1, labels=np.array(["A", "A", "B", "B"]))
    best = fit_threshold(same, diff)
    assert best["same_label_kept"] == 1.0 and best["different_label_dropped"] == 1.0
    assert 0.1 < best["cosine"] <= 0.99


def test_whitening_same_transform_both_sides_and_self_first():
    rng = np.random.default_rng(2)
    catalog = unit_rows(*(rng.normal(size=(400, 32)) + np.r_[5.0, np.zeros(31)]))  # a shared dominant direction
    white = fit_whitening(catalog, dims=16)
    transformed = white.apply(catalog)
    assert transformed.shape == (400, 16)
    assert np.allclose(np.linalg.norm(transformed, axis=1), 1, atol=1e-5)
    for row in (0, 17, 399):
        query = white.apply(catalog[row])  # a single query vector goes through the same code
        assert np.allclose(query, transformed[row], atol=1e-6)
        assert int(np.argmax(transformed @ query)) == row
    restored = type(white).from_bytes(white.to_bytes())
    assert np.allclose(restored.apply(catalog[:3]), transformed[:3], atol=1e-6)


def test_calibration_maps_threshold_to_70_percent():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16))
    labels = [str(i % 4) for i in range(200)]
    vectors = unit_rows(*(centres[[int(lbl) for lbl in labels]] + 0.6 * rng.normal(size=(200, 16))))
    fitted = fit_calibration(vectors, labels)
    cal = Calibration(fitted["points"])
    assert fitted["matches_kept"] > 0.8 and fitted["different_label_dropped"] > 0.8
    assert cal.percent(fitted["threshold_cosine"]) == pytest.approx(70.0)
    assert cal.cosine(70.0) == pytest.approx(fitted["threshold_cosine"])
    assert cal.percent(1.0) == 100.0 and cal.cosine(0) == -1.0
    scores = np.linspace(-1, 1, 50)
    assert np.all(np.diff(cal.percent(scores)) >= 0)  # monotone: ranking never changes


def test_too_few_labels_stays_uncalibrated():
    fitted = fit_calibration(unit_rows(*np.eye(8)), ["a"] * 8)
    assert fitted["points"] == UNCALIBRATED and "uncalibrated" in fitted["source"]
    assert Calibration(UNCALIBRATED).percent(0.7) == pytest.approx(70.0)


def test_evaluate_cli_on_the_sample_catalog(tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache" / "images")]
    assert evaluate_cli(["--catalog", str(DEMO_CSV), "--out", str(tmp_path), "--min-per-label", "20", *cache]) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["metrics"]["queries"] == 240 and report["metrics"]["labels"] == 12
    assert report["metrics"]["precision@5"] >= 0.6
    assert set(report["per_label"]) >= {"Watches", "Heels"} and report["scores"]["same_label"]["pairs"] == 12 * 190
    assert "| precision@1 |" in (tmp_path / "evaluation.md").read_text()
    # Ranked as the gateway ranks by default (category-first), with similarity alone reported beside it.
    assert report["category_first"] is True
    visual = report["visual_only_metrics"]
    assert report["metrics"]["precision@10"] > visual["precision@10"]
    assert report["metrics"]["precision@1"] >= visual["precision@1"]
    assert "| similarity alone |" in (tmp_path / "evaluation.md").read_text()
    # Reuses the index it built: the second run embeds nothing.
    assert evaluate_cli(["--catalog", str(DEMO_CSV), "--out", str(tmp_path), *cache]) == 0
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"] == report["metrics"]
    assert evaluate_cli(["--catalog", str(DEMO_CSV), "--out", str(tmp_path), "--no-category-first", *cache]) == 0
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"] == visual

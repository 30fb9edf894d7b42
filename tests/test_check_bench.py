"""The bench checker (scripts/check_bench.py): each target holds at its limit and fails one step past it."""

from __future__ import annotations

import json

import pytest

from scripts.check_bench import SEARCH_TARGETS, TARGETS, main, problems

SEARCH_OK = {"n": 1_000_000, "p50_ms": 5.0, "recall_at_10": 0.95, "gateway_rss_ratio": 1.5, "exact_p50_ms": 90.0,
             "ann_build_s": 200.0, "milvus_lite_p50_ms": 20.0, "build_n": 1_000_000, "build_peak_rss_ratio": 1.5}


def test_search_figures_at_their_limits_pass():
    assert problems(SEARCH_OK, SEARCH_TARGETS) == []


@pytest.mark.parametrize(("key", "past"), [("n", 999_999), ("p50_ms", 5.001), ("recall_at_10", 0.9499),
                                           ("gateway_rss_ratio", 1.501), ("build_n", 999_999),
                                           ("build_peak_rss_ratio", 1.501)])
def test_one_past_a_search_limit_fails(key, past):
    assert [line.split(":")[0] for line in problems({**SEARCH_OK, key: past}, SEARCH_TARGETS)] == [key]


def test_missing_figure_fails_and_file_name_picks_the_targets(tmp_path):
    search = tmp_path / "bench_search.json"
    search.write_text(json.dumps(SEARCH_OK))
    assert main([str(search)]) == 0
    speed = tmp_path / "bench.json"
    speed.write_text(json.dumps(SEARCH_OK))  # no speed figures in it
    assert main([str(speed)]) == 1
    assert {line.split(":")[0] for line in problems({}, TARGETS)} == set(TARGETS)


SPEED_OK = {"runtime": "openvino", "optimized_vs_eager_torchserve": 4.0, "optimized_min_cosine": 0.999,
            "index_build_vs_torchserve": 0.9, "index_build_vs_model": 0.75, "query_p50_vs_model_p50": 1.3}


def test_speed_figures_at_their_limits_pass_and_one_past_fails():
    assert problems(SPEED_OK) == []
    assert [line.split(":")[0] for line in problems({**SPEED_OK, "index_build_vs_model": 0.749})] == [
        "index_build_vs_model"]
    assert [line.split(":")[0] for line in problems({**SPEED_OK, "query_p50_vs_model_p50": 1.301})] == [
        "query_p50_vs_model_p50"]


def test_the_bench_s_search_figure_runs_on_the_production_ranking():
    """make bench is not part of make test: its in-process figure is run here, so a ranking change that breaks it
    fails a test, not the next person to run the bench (it once called a function that had been removed)."""
    from scripts.bench import bench_search

    report: dict = {}
    bench_search(report)
    assert report["exact_search_10k_x_1280_ms"] > 0 and report["category_first_vs_similarity_alone"] > 0

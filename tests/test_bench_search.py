"""The catalog-scale bench's steps at a tiny size (scripts/bench_search.py): they run against today's
interfaces (the Milvus step broke once when the build took over filling) and measure what they say."""

from __future__ import annotations

import numpy as np

from scripts.bench_search import bench_milvus, clustered


def test_the_milvus_step_fills_as_the_build_does_then_searches(tmp_path):
    vectors = clustered(310, 16)
    figures = bench_milvus(vectors[:300], vectors[300:], tmp_path)
    assert figures["milvus_lite_n"] == 300 and figures["milvus_lite_fill_s"] >= 0
    assert figures["milvus_lite_recall_at_10"] >= 0.9 and figures["milvus_lite_p50_ms"] > 0
    assert np.isfinite(figures["milvus_lite_p50_ms"])

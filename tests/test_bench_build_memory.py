"""The build's peak-memory bench (scripts/bench_build_memory.py) on a small catalog: the real build in a child
process, its figures, and the ratio as the report defines it."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.bench_build_memory import CLUSTERS, SyntheticEmbedder, make_catalog, measure


def test_the_synthetic_embedder_is_deterministic_and_clustered():
    embed = SyntheticEmbedder()
    a, b, again = embed.embed_bytes([b"row 5", f"row {5 + CLUSTERS}".encode(), b"row 5"], colour=True)
    np.testing.assert_array_equal(a.vector, again.vector)
    assert abs(np.linalg.norm(a.vector) - 1) < 1e-5 and a.colour is not None
    other = embed.embed_bytes([b"row 6"])[0]
    assert other.colour is None
    assert float(a.vector @ b.vector) > float(a.vector @ other.vector) + 0.1  # same cluster is nearer


def test_the_catalog_is_made_once_and_the_bench_reports_the_builds_peak(tmp_path):
    catalog = make_catalog(tmp_path / "build-memory", 300)
    first = catalog.stat().st_mtime_ns
    figures = measure(tmp_path, 300)
    assert catalog.stat().st_mtime_ns == first  # reused, not made again
    assert figures["build_n"] == 300 and not (tmp_path / "build-memory" / "run").exists()  # cleaned up
    search_bytes = 300 * 1280 * 4  # too small to whiten: the 1,280-d vectors are searched as they are
    assert figures["build_search_vectors_mb"] == round(search_bytes / 2**20)
    assert figures["build_peak_rss_ratio"] == pytest.approx(figures["build_peak_rss_mb"] * 2**20 / search_bytes,
                                                            rel=0.01)
    assert figures["build_peak_rss_mb"] > 50  # a Python process with NumPy: a real measurement, not zero

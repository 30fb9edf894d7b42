"""The vector cache of interrupted builds (catalog/vector_cache.py)."""

from __future__ import annotations

import numpy as np

from catalog.vector_cache import VectorCache

DIGEST = "ab" + "0" * 62


def test_round_trip_per_backbone(tmp_path):
    cache = VectorCache(tmp_path, "backbone-a")
    assert cache.get(DIGEST) is None
    cache.put(DIGEST, np.array([0.6, 0.8], dtype=np.float64))
    got = cache.get(DIGEST)
    assert got.dtype == np.float32 and got.tolist() == [np.float32(0.6), np.float32(0.8)]
    assert VectorCache(tmp_path, "backbone-b").get(DIGEST) is None  # another backbone never sees it


def test_half_written_or_corrupt_file_reads_as_missing(tmp_path):
    cache = VectorCache(tmp_path, "backbone-a")
    cache.put(DIGEST, np.ones(4, np.float32))
    path = next(tmp_path.rglob(f"{DIGEST}.npy"))
    path.write_bytes(path.read_bytes()[:20])  # what a crash mid-write without the atomic rename would leave
    assert cache.get(DIGEST) is None
    assert not list(tmp_path.rglob(".part-*"))  # put leaves no temporary files behind

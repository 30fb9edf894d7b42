"""The vector cache of interrupted builds (catalog/vector_cache.py)."""

from __future__ import annotations

import numpy as np

from catalog.vector_cache import VectorCache
from modelio.colour import DESCRIPTOR, HIST_SIZE

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


def test_neighbouring_digests_share_a_folder_and_both_are_kept(tmp_path):
    cache = VectorCache(tmp_path, "backbone-a")
    other = "ab" + "1" * 62  # the same first two characters
    cache.put(DIGEST, np.ones(2, np.float32))
    cache.put(other, np.zeros(2, np.float32))
    cache.put(DIGEST, np.full(2, 3, np.float32))  # written again: replaced whole
    assert cache.get(DIGEST).tolist() == [3.0, 3.0] and cache.get(other).tolist() == [0.0, 0.0]


def test_a_cache_file_that_needs_pickle_is_never_loaded(tmp_path):
    """The cache is a plain folder another process could write into: loading it must not run code."""
    cache = VectorCache(tmp_path, "backbone-a")
    cache.put(DIGEST, np.ones(2, np.float32))
    path = next(tmp_path.rglob(f"{DIGEST}.npy"))
    np.save(path, np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    assert cache.get(DIGEST) is None


def test_a_colour_is_read_only_as_the_descriptor_that_wrote_it(tmp_path):
    """Named by the descriptor: an older build's ``.colour.npy`` (another histogram) is never read as this one,
    and a file of another size under this name is not either (the build decodes the photo again)."""
    cache = VectorCache(tmp_path, "backbone-a")
    colour = np.linspace(0, 1, HIST_SIZE, dtype=np.float32)
    cache.put(DIGEST, np.ones(2, np.float32), colour)
    path = next(tmp_path.rglob(f"{DIGEST}.{DESCRIPTOR}.npy"))
    assert cache.get_colour(DIGEST).tolist() == colour.tolist()
    np.save(path.with_name(f"{DIGEST}.colour.npy"), np.ones(112, np.float32))  # what the 112-bin code wrote
    path.unlink()
    assert cache.get_colour(DIGEST) is None and cache.get(DIGEST) is not None
    for size in (HIST_SIZE - 1, HIST_SIZE + 1):
        np.save(path, np.ones(size, np.float32))
        assert cache.get_colour(DIGEST) is None
    np.save(path, np.ones(HIST_SIZE, np.float32))
    assert cache.get_colour(DIGEST) is not None

"""The index manager (gateway/index.py), fast: start-up from the local copy while the store is gone, and
the way back once it returns."""

from __future__ import annotations

import numpy as np

from gateway.index import IndexManager
from indexstore.store import POINTER, IndexData, open_store, publish, write_version


def test_a_restart_with_the_store_gone_serves_the_local_copy_and_recovers(tmp_path):
    """The fast twin of the S3-outage test (tests/test_index_publish.py): a second manager, started while the
    store cannot be read, serves the verified local copy the first one left, says so, and leaves the copy
    once the store is back."""
    store = open_store(tmp_path / "index")
    rows = np.eye(3, 4, dtype=np.float32)
    products = [{"id": str(i), "category": "A"} for i in range(3)]
    version = write_version(store, IndexData(rows, products, {"backbone": "b"}))
    publish(store, version)
    first = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    first.load()
    assert first.current.version == version and not first.from_cache
    pointer = store.get(POINTER)
    (tmp_path / "index" / POINTER).unlink()  # the store cannot say what is published
    again = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    again.load()
    assert again.current.version == version and again.from_cache and "index not loaded from" in again.error
    assert again.refresh() is False and again.from_cache  # still gone: still the copy
    store.put(POINTER, pointer)
    assert again.refresh() is False  # the same version: nothing to swap ...
    assert not again.from_cache and again.error is None  # ... but no longer the copy
    empty = IndexManager(str(tmp_path / "index"), tmp_path / "no-copy", 0)
    (tmp_path / "index" / POINTER).unlink()
    empty.load()
    assert empty.current is None and "index not loaded from" in empty.error  # no copy at all: not ready

"""Versioned index storage (catalog/store.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalog.store import CorruptIndex, IndexData, IndexNotFound, open_store, publish, read_current, write_version


def make_index(n=3, dim=4, backbone="test-backbone"):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return IndexData(emb, [{"id": str(i), "name": f"p{i}"} for i in range(n)], {"backbone": backbone})


def test_round_trip_and_pointer_written_last(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(IndexNotFound):
        read_current(store)
    index = make_index()
    version = write_version(store, index, {"errors.csv": b"line,id\n"})
    with pytest.raises(IndexNotFound):  # written but not yet published: invisible to readers
        read_current(store)
    publish(store, version)
    loaded = read_current(store)
    assert loaded.version == version and loaded.backbone_id == "test-backbone"
    assert np.array_equal(loaded.embeddings, index.embeddings) and loaded.products == index.products


def test_new_version_does_not_touch_the_published_one(tmp_path):
    store = open_store(tmp_path)
    first = write_version(store, make_index(3))
    publish(store, first)
    second = write_version(store, make_index(5))
    assert read_current(store).version == first
    publish(store, second)
    assert read_current(store).manifest["count"] == 5


def test_corrupted_file_is_refused(tmp_path):
    store = open_store(tmp_path)
    version = write_version(store, make_index())
    publish(store, version)
    path = tmp_path / "versions" / version / "products.jsonl"
    path.write_text(path.read_text().replace("p1", "px"))
    with pytest.raises(CorruptIndex, match="products.jsonl checksum mismatch"):
        read_current(store)


def test_unreadable_pointer(tmp_path):
    (tmp_path / "CURRENT").write_text("{not json")
    with pytest.raises(CorruptIndex, match="CURRENT is unreadable"):
        read_current(open_store(tmp_path))
    (tmp_path / "CURRENT").write_text(json.dumps({"version": "nope"}))
    with pytest.raises(IndexNotFound):
        read_current(open_store(tmp_path))

"""The published version's vectors for a rebuild (catalog/previous.py): looked up by image digest, read from
the version's file (in place on a local store, from a trimmed verified copy of an S3 one), and any version
that cannot be reused costs only re-embedding — except an unreachable store, which stops the build."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from catalog.previous import PreviousVectors, previous_vectors
from indexstore.store import IndexData, StoreUnavailable, open_store, write_and_publish
from safeio.rowfile import RowFile
from tests.test_index_publish import s3  # noqa: F401 - the S3 API server fixture

DIGESTS = [f"{i:064x}" for i in (7, 3, 11)]


def matrix(n: int = 3) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, 8), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def publish(uri: str, backbone: str = "bb", extra: dict | None = None) -> str:
    products = [{"id": str(i), "name": f"p{i}", "image_sha256": d} for i, d in enumerate(DIGESTS)]
    index = IndexData(matrix(), products, {"backbone": backbone})
    return write_and_publish(open_store(uri), index, {"errors.csv": b"line\n", **(extra or {})})[0]


def test_each_digest_finds_its_own_row_and_no_other(tmp_path):
    np.save(tmp_path / "m.npy", matrix())
    lookup = PreviousVectors(DIGESTS + [""], np.vstack([matrix(), np.zeros((1, 8), np.float32)]))
    on_file = PreviousVectors(DIGESTS, RowFile(tmp_path / "m.npy"))
    for row, digest in enumerate(DIGESTS):
        for found in (lookup.get(digest), on_file.get(digest), on_file.in_memory().get(digest)):
            np.testing.assert_array_equal(found, matrix()[row])
    for unknown in (f"{8:064x}", f"{0:064x}", f"{99:064x}", "", "not hex ✓"):  # between, before, after the keys
        assert on_file.get(unknown) is None and on_file.in_memory().get(unknown) is None
    assert len(on_file) == 3 and len(PreviousVectors.none()) == 0 and PreviousVectors.none().get(DIGESTS[0]) is None
    assert PreviousVectors.none().in_memory().get(DIGESTS[0]) is None
    assert lookup.in_memory().get(DIGESTS[0]).dtype == np.float32 == on_file.get(DIGESTS[0]).dtype
    wide = PreviousVectors(DIGESTS, matrix().astype(np.float64)).in_memory()  # sent to Ray as float32
    assert wide.matrix.dtype == np.float32


def test_a_local_version_is_read_in_place(tmp_path):
    publish(str(tmp_path / "index"))
    got = previous_vectors(open_store(tmp_path / "index"), "bb", tmp_path / "work")
    np.testing.assert_array_equal(got.get(DIGESTS[2]), matrix()[2])
    assert isinstance(got.matrix, RowFile) and not (tmp_path / "work").exists()  # nothing copied


def test_an_s3_version_is_copied_without_the_files_a_rebuild_does_not_read(s3, tmp_path):  # noqa: F811
    version = publish("s3://shop/indexes/demo", extra={"ann.faiss": b"a graph the rebuild never reads"})
    got = previous_vectors(open_store("s3://shop/indexes/demo"), "bb", tmp_path)
    np.testing.assert_array_equal(got.get(DIGESTS[1]), matrix()[1])
    copied = sorted(p.name for p in (tmp_path / "previous" / "versions" / version).iterdir())
    assert copied == ["embeddings.npy", "manifest.json", "products.jsonl"]


def test_no_version_or_another_backbone_gives_nothing_to_reuse(tmp_path, caplog):
    assert len(previous_vectors(open_store(tmp_path / "none"), "bb", tmp_path / "w")) == 0
    publish(str(tmp_path / "index"), backbone="other")
    with caplog.at_level(logging.INFO, logger="catalog.previous"):
        assert len(previous_vectors(open_store(tmp_path / "index"), "bb", tmp_path / "w")) == 0
    assert "previous version used other, re-embedding everything with bb" in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("damage", ["embeddings", "products", "pointer"])
def test_a_damaged_version_costs_only_re_embedding(tmp_path, caplog, damage):
    version = publish(str(tmp_path / "index"))
    folder = tmp_path / "index" / "versions" / version
    if damage == "embeddings":
        np.save(folder / "embeddings.npy", matrix() * 2)  # another matrix than the manifest's checksum
    elif damage == "products":
        (folder / "products.jsonl").write_text('{"id": "0"}\n')
    else:
        (tmp_path / "index" / "CURRENT").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="catalog.previous"):
        assert len(previous_vectors(open_store(tmp_path / "index"), "bb", tmp_path / "w")) == 0
    said = {"embeddings": f"previous version {version} not reusable: version {version}: embeddings.npy checksum "
                          "mismatch",
            "products": f"previous version {version} not reusable: version {version}: products.jsonl checksum "
                        "mismatch",
            "pointer": "previous version not reusable: "}[damage]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(said) and (damage != "pointer" or "CURRENT is unreadable" in message)


def test_an_unreachable_store_stops_the_build(tmp_path):
    class Down:
        uri = "s3://down/index"

        def get(self, key):
            raise StoreUnavailable("the store did not answer")

    with pytest.raises(StoreUnavailable):
        previous_vectors(Down(), "bb", tmp_path)

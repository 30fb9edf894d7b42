"""The ANN file (indexstore/ann.py) and its backend (search/ann.py AnnSearch): built by the index build from
a size on, checked in a child process before the gateway opens it, chosen by ``SEARCH_BACKEND=auto``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalog.build import Merged, finish_version
from gateway.index import IndexManager
from indexstore.ann import AnnFileError, AnnSettings, build_ann, check_file, open_ann, vectors_of
from indexstore.store import (
    ANN,
    CorruptIndex,
    IndexData,
    LocalStore,
    open_local,
    open_store,
    publish,
    write_and_publish,
    write_version,
)
from search import BackendSettings, ExactSearch, Filter
from search.ann import AnnSearch


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def products(n: int) -> list[dict]:
    return [{"id": str(i), "name": f"p{i}", "category": "AB"[i % 2]} for i in range(n)]


def test_graph_search_matches_exact_and_filters(tmp_path):
    x = unit_rows(500)
    path = tmp_path / ANN
    path.write_bytes(build_ann(x))
    check_file(path, 500, 16)
    codes = np.arange(500) % 2
    ann, exact = AnnSearch(open_ann(path, 500, 16), codes), ExactSearch(x, codes)
    ann.SMALL_FILTER = 0  # filtered searches through the graph as well
    q = x[3]
    priced = np.arange(500) % 3 == 0  # a price range admits every third row
    for where in (Filter(), Filter(categories=frozenset({1})), Filter(exclude_rows=frozenset({3})),
                  Filter(rows=priced), Filter(categories=frozenset({1}), rows=priced)):
        got, want = ann.search(q, 10, where), exact.search(q, 10, where)
        assert got.rows.tolist() == want.rows.tolist()
        assert np.allclose(got.scores, want.scores, atol=1e-5)
    assert np.array_equal(ann.vector(7), x[7])
    assert ann.search(q, 10, Filter(categories=frozenset())).rows.tolist() == []  # nothing admitted
    assert ann.search(q, 0).rows.tolist() == []


@pytest.mark.parametrize("n", [13, 14, 15])  # blocks of 7: the last one short, full, one row over
def test_a_graph_written_from_a_file_a_block_at_a_time_holds_every_row(tmp_path, monkeypatch, n):
    """The build's graph: added from the search-space file in blocks, written straight to disk; every row is
    stored as it was and is its own nearest neighbour."""
    from indexstore import ann as ann_module
    from indexstore.ann import write_ann
    from safeio.rowfile import RowWriter

    monkeypatch.setattr(ann_module, "ANN_BLOCK", 7)
    x = unit_rows(n)
    with RowWriter(tmp_path / "search.npy", *x.shape) as out:
        out.append(x)
    path = write_ann(out.close(), tmp_path / ANN)
    check_file(path, n, 16)
    index = open_ann(path, n, 16)
    np.testing.assert_array_equal(vectors_of(index), x)
    _, found = index.search(x, 1)
    assert found[:, 0].tolist() == list(range(n))


def test_min_score_is_kept_by_both_paths(tmp_path):
    x = unit_rows(200)
    path = tmp_path / ANN
    path.write_bytes(build_ann(x))
    ann = AnnSearch(open_ann(path, 200, 16), np.zeros(200, np.int64))
    floor = float(np.sort(x @ x[0])[-5])  # exactly five rows score at least this
    assert len(ann.search(x[0], 50, min_score=floor)) == 5
    assert len(ann.search(x[0], 5000, min_score=floor)) == 5  # deeper than EXACT_BEYOND: brute force


@pytest.mark.parametrize(("size_at_build", "expect_file"), [(100, True), (101, False)])
def test_build_writes_the_graph_from_its_size_on(tmp_path, size_at_build, expect_file):
    """``ANN_MIN_PRODUCTS`` at the catalog's size writes the graph; one more product than it does not."""
    x = unit_rows(100)
    collected = Merged.of(products(100), x)
    settings = AnnSettings(min_products=size_at_build)
    with_ann = len(collected.rows) >= settings.min_products
    index, extra = finish_version(collected, tmp_path / "products.csv", "bb", 100, tmp_path,
                                  ann=settings if with_ann else None)
    assert (ANN in extra) is expect_file and (index.manifest["ann"] is not None) is expect_file


@pytest.mark.parametrize("junk", [b"", b"garbage" * 100, "truncate", "flip"])
def test_a_malformed_file_is_refused_without_crashing_the_caller(tmp_path, junk):
    good = build_ann(unit_rows(50))
    data = {"truncate": good[: len(good) // 2], "flip": good[:200] + b"\xff" * 64 + good[264:]}.get(junk, junk)
    path = tmp_path / ANN
    path.write_bytes(data)
    with pytest.raises(AnnFileError):
        check_file(path, 50, 16)


def test_a_graph_of_another_shape_is_refused(tmp_path):
    path = tmp_path / ANN
    path.write_bytes(build_ann(unit_rows(50)))
    for count, dim in ((51, 16), (50, 8)):
        with pytest.raises(AnnFileError, match="not an inner-product HNSW graph"):
            check_file(path, count, dim)


def publish_version(root, n: int, ann: bytes | None) -> str:
    index = IndexData(unit_rows(n), products(n), {"backbone": "bb"})
    return write_and_publish(open_store(root), index, {ANN: ann} if ann is not None else {})[0]


@pytest.mark.parametrize(("min_products", "backend"), [(120, "ann"), (121, "exact")])
def test_auto_uses_the_graph_from_the_configured_size(tmp_path, min_products, backend):
    publish_version(tmp_path / "index", 120, build_ann(unit_rows(120)))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0,
                           BackendSettings("auto", ann_min_products=min_products))
    manager.load()
    assert manager.current.backend.name == backend
    # a replica on the graph fetches no raw matrix (the graph holds its vectors); exact search needs it
    fetched = (tmp_path / "cache" / "versions" / manager.current.version / "embeddings.npy").exists()
    assert fetched is (backend == "exact")
    assert manager.current.backend.search(unit_rows(120)[7], 1).rows[0] == 7  # and it serves
    # the model's own vectors (the item's outline, gateway/outline.py) only where the matrix was fetched
    stored = manager.current.model_vector(7)
    assert stored is None if backend == "ann" else np.array_equal(stored, unit_rows(120)[7])


def test_a_replica_on_the_graph_restarts_from_its_copy_without_the_matrix_and_fetches_it_when_exact(tmp_path):
    version = publish_version(tmp_path / "index", 120, build_ann(unit_rows(120)))
    on_graph = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0, BackendSettings("ann"))
    on_graph.load()
    matrix = tmp_path / "cache" / "versions" / version / "embeddings.npy"
    assert not matrix.exists()
    restarted = IndexManager(str(tmp_path / "no-store"), tmp_path / "cache", 0, BackendSettings("ann"))
    restarted.load()  # the store is gone: its local copy, without the matrix, still serves
    assert restarted.from_cache and restarted.current.version == version
    assert restarted.current.backend.search(unit_rows(120)[7], 1).rows[0] == 7
    with pytest.raises(CorruptIndex, match="not fetched"):  # a read of what was not fetched is refused
        np.asarray(open_local(LocalStore(tmp_path / "cache"), version, skip=frozenset({"embeddings.npy"})).embeddings)
    exact = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0, BackendSettings("exact"))
    exact.load()
    assert matrix.exists() and exact.current.backend.name == "exact"


def test_ann_backend_refuses_a_version_without_the_graph_and_keeps_the_old_one(tmp_path):
    first = publish_version(tmp_path / "index", 60, build_ann(unit_rows(60)))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0, BackendSettings("ann"))
    manager.load()
    assert manager.current.version == first and manager.current.backend.name == "ann"
    publish_version(tmp_path / "index", 60, None)
    assert not manager.refresh()
    assert manager.current.version == first and "no ANN file" in manager.error


def test_a_crafted_graph_with_a_matching_checksum_is_refused_and_the_old_version_serves(tmp_path):
    """The store is untrusted: a file whose manifest checksum matches but that crashes FAISS's loader must
    not take the worker down."""
    first = publish_version(tmp_path / "index", 60, build_ann(unit_rows(60)))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0, BackendSettings("ann"))
    manager.load()
    store = open_store(tmp_path / "index")
    good = build_ann(unit_rows(60, seed=1))
    crafted = good[:200] + b"\xff" * 64 + good[264:]
    version = write_version(store, IndexData(unit_rows(60), products(60), {"backbone": "bb"}), {ANN: crafted})
    publish(store, version)
    assert not manager.refresh()
    assert manager.current.version == first and ANN in manager.error
    assert len(manager.current.backend.search(unit_rows(1)[0], 5)) == 5  # still serving


def test_a_corrupt_graph_is_refused_by_its_checksum(tmp_path):
    first = publish_version(tmp_path / "index", 60, build_ann(unit_rows(60)))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache", 0, BackendSettings("ann"))
    manager.load()
    store = open_store(tmp_path / "index")
    version = write_version(store, IndexData(unit_rows(60), products(60), {"backbone": "bb"}),
                            {ANN: build_ann(unit_rows(60))})
    store.put(f"versions/{version}/{ANN}", build_ann(unit_rows(60, seed=5)))  # replaced after the manifest
    publish(store, version)
    assert not manager.refresh()
    assert manager.current.version == first and "checksum mismatch" in manager.error
    manifest = json.loads(store.get(f"versions/{version}/manifest.json"))
    assert ANN in manifest["files"]


def test_a_loader_that_crashes_is_reported_not_inherited(tmp_path, monkeypatch):
    """``check_file`` runs the loader in a child: a child killed by a signal (what a native loader does on
    a file it cannot handle) becomes ``AnnFileError`` here, and this process lives on."""
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    path = tmp_path / ANN
    path.write_bytes(build_ann(unit_rows(20)))
    check_file(path, 20, 16)  # the real interpreter accepts it
    monkeypatch.setattr("sys.executable", str(crashing))
    with pytest.raises(AnnFileError, match="died"):
        check_file(path, 20, 16)


class Watched:
    """The FAISS index, with every search's parameters recorded (or a failure raised)."""

    def __init__(self, index, fail: Exception | None = None) -> None:
        self._index, self.fail, self.depths = index, fail, []

    def __getattr__(self, name):
        return getattr(self._index, name)

    def search(self, x, k, params=None):
        self.depths.append(params.efSearch)
        if self.fail is not None:
            raise self.fail
        return self._index.search(x, k, params=params)


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    x = unit_rows(40)
    path = tmp_path_factory.mktemp("ann") / ANN
    path.write_bytes(build_ann(x))
    return x, open_ann(path, 40, 16)


def paths_taken(ann: AnnSearch) -> list[str]:
    taken: list[str] = []
    exact, graph = ann._exact, ann._graph
    ann._exact = lambda *a: taken.append("exact") or exact(*a)
    ann._graph = lambda *a: taken.append("graph") or graph(*a)
    return taken


def test_the_exact_path_at_its_limits_on_both_sides(forty):
    x, index = forty
    ann = AnnSearch(index, np.arange(40) % 4)
    ann.SMALL_FILTER, ann.EXACT_BEYOND = 10, 5
    taken = paths_taken(ann)
    ten = Filter(categories=frozenset({0, 1}), exclude_rows=frozenset(range(10)))  # 15 admitted ...
    ann.search(x[0], 3, Filter(categories=frozenset({0})))  # 10 admitted: exactly the limit
    ann.search(x[0], 3, ten)  # 15 admitted: past it
    ann.search(x[0], 3)  # no filter: the graph, however few rows
    ann.search(x[0], 5)  # k at its limit
    ann.search(x[0], 6)  # k past it
    assert taken == ["exact", "graph", "graph", "graph", "exact"]


def test_the_graph_searches_deeper_under_a_filter_up_to_eight_times(forty):
    x, index = forty
    watched = Watched(index)
    ann = AnnSearch(watched, np.arange(40) % 10, expansion_search=16)
    ann.SMALL_FILTER = 0
    ann.search(x[0], 3)
    ann.search(x[0], 3, Filter(categories=frozenset({0, 1, 2, 3, 4})))  # half the rows: twice as deep
    ann.search(x[0], 3, Filter(categories=frozenset({0})))  # a tenth: capped at eight times
    ann.search(x[0], 20)  # deeper than the expansion: k sets the depth
    assert watched.depths == [16, 32, 128, 20]


def test_single_rows_and_empty_answers(forty):
    x, index = forty
    ann = AnnSearch(index, np.arange(40))
    one = ann.search(x[5], 1)
    assert one.rows.tolist() == [5] and one.rows.dtype == np.int64 and one.scores.dtype == np.float32
    only = ann.search(x[0], 3, Filter(categories=frozenset({7})))  # one row admitted
    assert only.rows.tolist() == [7] and only.exhausted
    for empty in (ann.search(x[0], 0), ann.search(x[0], 3, Filter(categories=frozenset()))):
        assert len(empty) == 0 and empty.exhausted and empty.rows.dtype == np.int64
        assert empty.scores.dtype == np.float32 and empty.scores.shape == (0,)
    graph = AnnSearch(index, np.arange(40) % 2)
    graph.SMALL_FILTER = 0
    assert graph.search(x[0], 3, Filter(categories=frozenset({1}))).scores.dtype == np.float32
    exact = graph._exact(x[0].astype(np.float64), 3, None, -1.0)
    assert exact.scores.dtype == np.float32 and not exact.exhausted


def test_a_faiss_failure_is_search_unavailable(forty):
    from search import SearchUnavailable

    x, index = forty
    ann = AnnSearch(Watched(index, fail=RuntimeError("Error in faiss::IndexHNSW::search")), np.arange(40))
    with pytest.raises(SearchUnavailable) as caught:
        ann.search(x[0], 3)
    assert str(caught.value) == "HNSW search failed: Error in faiss::IndexHNSW::search"

"""The index manager (gateway/index.py), fast: start-up from the local copy while the store is gone, and
the way back once it returns."""

from __future__ import annotations

import io
import logging
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.config import Config
from gateway.index import CatalogIndex, IndexManager, _appearance
from indexstore.store import (
    ANN,
    APPEARANCE,
    APPEARANCE_VECTORS,
    EMBEDDINGS,
    POINTER,
    WHITENING,
    CorruptIndex,
    IndexData,
    open_store,
    publish,
    write_version,
)
from ranking.appearance import DESCRIPTOR, FEATURE_SIZE, Appearance
from ranking.whitening import fit_whitening
from search import BackendSettings
from tests.pickled import Payload


def test_a_restart_with_the_store_gone_serves_the_local_copy_and_recovers(tmp_path, caplog):
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
    assert first.current.version == version and first.from_cache is False
    pointer = store.get(POINTER)
    (tmp_path / "index" / POINTER).unlink()  # the store cannot say what is published
    again = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    again.load()
    assert again.current.version == version and again.from_cache and "index not loaded from" in again.error
    assert again.refresh() is False and again.from_cache  # still gone: still the copy
    store.put(POINTER, pointer)
    with caplog.at_level(logging.INFO, logger="gateway.index"):
        assert again.refresh() is False  # the same version: nothing to swap ...
    assert not again.from_cache and again.error is None  # ... but no longer the copy
    assert f"index store reachable again; version {version} unchanged" in _messages(caplog)
    empty = IndexManager(str(tmp_path / "index"), tmp_path / "no-copy", 0)
    (tmp_path / "index" / POINTER).unlink()
    empty.load()
    assert empty.current is None and "index not loaded from" in empty.error  # no copy at all: not ready


def _messages(caplog, level: int = logging.DEBUG) -> list[str]:
    """What was logged at ``level`` or above, word for word."""
    return [record.getMessage() for record in caplog.records if record.levelno >= level]


# --- one version, loaded (CatalogIndex) -------------------------------------------------------------------


def _publish(tmp_path, rows: np.ndarray | None = None, manifest: dict | None = None, files: dict | None = None,
             products: list[dict] | None = None) -> str:
    store = open_store(tmp_path / "index")
    rows = np.eye(3, 4, dtype=np.float32) if rows is None else rows
    products = products or [{"id": str(i), "category": "A", "image_url": f"images/{i}.jpg"} for i in range(len(rows))]
    version = write_version(store, IndexData(rows, products, {"backbone": "b", **(manifest or {})}), files)
    publish(store, version)
    return version


def _loaded(tmp_path, **kwargs) -> IndexManager:
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0, **kwargs)
    manager.load()
    assert manager.current is not None, manager.error
    return manager


def test_an_index_serves_only_a_memory_mapped_version():
    refusal = r"^CatalogIndex serves a memory-mapped version \(indexstore.store.open_local\)$"
    with pytest.raises(TypeError, match=refusal):
        CatalogIndex(IndexData(np.eye(2, dtype=np.float32), [{"id": "0"}, {"id": "1"}], {"backbone": "b"}))


def test_without_whitening_the_query_is_searched_as_the_model_gave_it(tmp_path):
    _publish(tmp_path)
    index = _loaded(tmp_path).current
    assert index.model_dim == index.search_dim == 4 and index.whitening is None
    query = index.prepare(np.array([1, 2, 3, 4], dtype=np.float64))
    assert query.dtype == np.float32 and query.tolist() == [1, 2, 3, 4]


def test_with_whitening_the_query_is_moved_into_the_index_space(tmp_path):
    rows = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    whitening = fit_whitening(rows, dims=3)
    _publish(tmp_path, rows, files={WHITENING: whitening.to_bytes()})  # stored: the model's vectors
    index = _loaded(tmp_path).current
    assert (index.model_dim, index.search_dim) == (6, 3)
    query = rows[0] * 2
    assert np.allclose(index.prepare(query), whitening.apply(query), atol=1e-6)
    assert np.isclose(np.linalg.norm(index.prepare(query)), 1.0, atol=1e-5)
    found = index.backend.search(index.prepare(rows[5]), 1)  # the stored side is in the same space
    assert found.rows.tolist() == [5] and np.isclose(found.scores[0], 1.0, atol=1e-5)


def test_calibration_info_is_the_manifest_s_only_for_a_calibrated_index(tmp_path):
    _publish(tmp_path / "plain")
    assert _loaded(tmp_path / "plain").current.calibration_info is None
    calibration = {"points": [[0.1, 0.0], [0.9, 100.0]]}
    _publish(tmp_path / "calibrated", manifest={"calibration": calibration})
    index = _loaded(tmp_path / "calibrated").current
    assert index.calibration_info == calibration and index.calibration.percent(np.array(0.5)) == 50.0


def test_the_page_offers_a_price_range_only_when_a_price_is_known(tmp_path):
    unpriced = [{"id": str(i), "category": "A", "price": ""} for i in range(3)]
    _publish(tmp_path / "none", products=unpriced)
    assert _loaded(tmp_path / "none").current.has_prices is False
    one = [dict(p) for p in unpriced]
    one[2]["price"] = 9.5
    _publish(tmp_path / "one", products=one)
    index = _loaded(tmp_path / "one").current
    assert index.has_prices is True and np.isnan(index.prices[0]) and index.prices[2] == 9.5


def test_products_are_found_by_id_and_by_image(tmp_path):
    _publish(tmp_path)
    index = _loaded(tmp_path).current
    assert set(index.products._hashes) == {"id", "image_url"}  # hashed at load: no request parses the file
    assert len(index) == 3 and index.row_of("2") == 2 and index.row_of("9") is None
    assert index.has_image("images/1.jpg") and not index.has_image("images/9.jpg")
    assert index.category_codes("a") == index.category_codes(" A ") == frozenset({0})
    assert index.category_codes(None) is None and index.category_codes("B") == frozenset()


def test_the_ranking_sees_the_prices(tmp_path):
    products = [{"id": str(i), "category": "A", "price": price} for i, price in enumerate([5.0, None, 20.0])]
    _publish(tmp_path, products=products)
    index = _loaded(tmp_path).current
    assert index.view.price_rows(1.0, 10.0).tolist() == [True, False, False]


def test_a_backend_that_cannot_serve_the_version_names_it(tmp_path):
    version = _publish(tmp_path)
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0, backends=BackendSettings(kind="ann"))
    manager.load()
    assert manager.current is None and f"version {version} has no ANN file" in manager.error


# --- the version's appearance files (gateway/index.py::_appearance; the store is untrusted) ---------------------


def _appearance_version(tmp_path, space: Appearance, vectors: np.ndarray, descriptor: str = DESCRIPTOR,
                        files: tuple[str, ...] = (APPEARANCE, APPEARANCE_VECTORS)) -> str:
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=True)
    every = {APPEARANCE: space.to_bytes(), APPEARANCE_VECTORS: buf.getvalue()}
    return _publish(tmp_path, manifest={"appearance": {"descriptor": descriptor, "weight": 0.5}},
                    files={name: every[name] for name in files})


def _projected(rows: int = 3, search_dim: int = 4, colours: int = 2) -> tuple[Appearance, np.ndarray]:
    width = FEATURE_SIZE + search_dim
    space = Appearance(0.5, np.zeros(width, np.float32), np.ones((width, colours), np.float32))
    return space, np.ones((rows, colours), np.float32)


def test_a_projected_appearance_space_is_read_memory_mapped(tmp_path):
    space, vectors = _projected()
    _appearance_version(tmp_path, space, vectors)
    index = _loaded(tmp_path).current
    assert index.appearance.projection.shape == (FEATURE_SIZE + 4, 2)
    assert isinstance(index.appearance_rows, np.memmap) and index.appearance_rows.shape == (3, 2)
    assert index.view.appearance_rows is index.appearance_rows


def test_appearance_read_from_memory_is_the_same(tmp_path):
    space, vectors = _projected()
    data = IndexData(np.eye(3, 4, dtype=np.float32), [{"id": str(i)} for i in range(3)],
                     {"version": "v", "appearance": {"descriptor": DESCRIPTOR}},
                     files={APPEARANCE: space.to_bytes(), APPEARANCE_VECTORS: _npy(vectors)})
    got, rows = _appearance(data, rows=3, search_dim=4, descriptor=DESCRIPTOR)
    assert got.weight == 0.5 and rows.tolist() == vectors.tolist()


@pytest.mark.parametrize("files", [(APPEARANCE,), (APPEARANCE_VECTORS,), ()])
def test_a_version_without_both_appearance_files_ranks_by_the_cnn(tmp_path, files):
    space, vectors = _projected()
    _appearance_version(tmp_path, space, vectors, files=files)
    index = _loaded(tmp_path).current
    assert index.appearance is None and index.appearance_rows is None


def test_another_appearance_descriptor_is_not_used_and_says_so(tmp_path, caplog):
    space, vectors = _projected()
    version = _appearance_version(tmp_path, space, vectors, descriptor="hsv-other-v0")
    with caplog.at_level(logging.WARNING, logger="gateway.index"):
        index = _loaded(tmp_path).current
    assert index.appearance is None and index.appearance_rows is None
    assert (f"version {version}: appearance descriptor 'hsv-other-v0' is not this gateway's {DESCRIPTOR!r}: "
            "not used") in _messages(caplog)


@pytest.mark.parametrize(("space_rows", "vector_shape", "dtype"), [
    (FEATURE_SIZE + 4, (3, 2), np.float32),  # the good one
    (FEATURE_SIZE + 3, (3, 2), np.float32),  # a projection for another search space
    (FEATURE_SIZE + 5, (3, 2), np.float32),
    (FEATURE_SIZE + 4, (3, 3), np.float32),  # vectors of another width ...
    (FEATURE_SIZE + 4, (2, 2), np.float32),  # ... or for fewer products
    (FEATURE_SIZE + 4, (3, 2), np.float64),
])
def test_appearance_files_are_checked_against_the_index(tmp_path, space_rows, vector_shape, dtype):
    space = Appearance(0.5, np.zeros(space_rows, np.float32), np.ones((space_rows, 2), np.float32))
    version = _appearance_version(tmp_path, space, np.ones(vector_shape, dtype))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    manager.load()
    if space_rows == FEATURE_SIZE + 4 and vector_shape == (3, 2) and dtype == np.float32:
        assert manager.current is not None and manager.current.appearance is not None
    else:
        assert manager.current is None
        assert f"version {version}: the appearance files do not match the index" in manager.error


@pytest.mark.parametrize("in_memory", [False, True])
def test_pickled_appearance_vectors_are_never_unpickled(tmp_path, in_memory):
    """A .npy of Python objects would run code from the store when loaded: refused, and never loaded."""
    space, _ = _projected()
    evil = np.empty(3, dtype=object)
    evil[:] = [Payload(), Payload(), Payload()]
    Payload.ran = 0
    if in_memory:
        buf = io.BytesIO()
        np.save(buf, evil, allow_pickle=True)
        data = IndexData(np.eye(3, 4, dtype=np.float32), [{"id": str(i)} for i in range(3)], {"version": "v"},
                         files={APPEARANCE: space.to_bytes(), APPEARANCE_VECTORS: buf.getvalue()})
        with pytest.raises(CorruptIndex, match=r"^version v: .*allow_pickle=False"):
            _appearance(data, rows=3, search_dim=4, descriptor=DESCRIPTOR)
    else:
        version = _appearance_version(tmp_path, space, evil)
        manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
        manager.load()
        assert manager.current is None and f"version {version}: Array can't be memory-mapped" in manager.error
    assert Payload.ran == 0


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


# --- the manager ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "count", "unread"), [
    (BackendSettings(kind="exact"), 3, frozenset()),
    (BackendSettings(kind="auto", ann_min_products=4), 3, frozenset()),  # below the ANN size: exact
    (BackendSettings(kind="auto", ann_min_products=3), 3, frozenset({EMBEDDINGS})),  # at it: the ANN file
    (BackendSettings(kind="milvus"), 3, frozenset({EMBEDDINGS})),
])
def test_a_replica_fetches_the_raw_matrix_only_for_exact_search(tmp_path, settings, count, unread):
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0, backends=settings)
    assert manager._unread({"count": count, "files": {EMBEDDINGS: {}, ANN: {}}}) == unread
    assert manager._unread({"count": count, "files": {EMBEDDINGS: {}}}) == (
        frozenset({EMBEDDINGS}) if settings.kind == "milvus" else frozenset())


def test_a_new_published_version_is_swapped_in_and_the_old_one_retired(tmp_path, monkeypatch, caplog):
    first = _publish(tmp_path)
    with caplog.at_level(logging.INFO, logger="gateway.index"):
        manager = _loaded(tmp_path)
    assert f"serving index version {first} (3 products, b, exact search)" in _messages(caplog)  # replacing none
    caplog.clear()
    old = manager.current
    retired, served = [], []
    monkeypatch.setattr(old, "retire", lambda: retired.append(old.version))
    monkeypatch.setattr("gateway.index.metrics.index_served", lambda *args: served.append(args))
    assert manager.refresh() is False and not retired and not served  # nothing new
    second = _publish(tmp_path, rows=np.eye(4, 4, dtype=np.float32))
    with caplog.at_level(logging.INFO, logger="gateway.index"):
        assert manager.refresh() is True
    assert f"serving index version {second} (4 products, b, exact search), replacing {first}" in _messages(caplog)
    assert manager.current.version == second and len(manager.current) == 4 and retired == [first]
    assert served == [(second, "b", 4, first, "b")]
    assert manager.error is None and manager.from_cache is False


def test_a_failed_refresh_keeps_the_version_and_says_why_once(tmp_path, caplog):
    version = _publish(tmp_path)
    manager = _loaded(tmp_path)
    pointer = (tmp_path / "index" / POINTER).read_bytes()
    (tmp_path / "index" / POINTER).write_bytes(b"not-a-version\n")
    with caplog.at_level(logging.ERROR, logger="gateway.index"):
        assert manager.refresh() is False
        assert _messages(caplog, logging.ERROR) == [f"index refresh failed, {manager.error}"]  # said at once ...
        assert manager.refresh() is False
    assert _messages(caplog, logging.ERROR) == [f"index refresh failed, {manager.error}"]  # ... and only once
    assert manager.current.version == version and manager.error.startswith(f"keeping version {version}: ")
    (tmp_path / "index" / POINTER).write_bytes(pointer)
    assert manager.refresh() is False and manager.error is None  # the store is back: the error goes


def test_a_failed_refresh_with_nothing_served_says_so(tmp_path):
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    assert manager.refresh() is False and manager.current is None
    assert manager.error.startswith("keeping version None: ")


def test_a_refresh_is_due_only_after_the_poll_interval(tmp_path, monkeypatch):
    _publish(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr("gateway.index.time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock
    manager = _loaded(tmp_path)
    assert manager.refresh() is False and manager.checked_at == 1000.0  # a refresh notes when it asked
    calls = []
    monkeypatch.setattr(manager, "refresh", lambda: calls.append(clock[0]))
    manager.poll_s = 0.5
    clock[0] = 1000.4
    manager.refresh_if_due()
    assert calls == []  # not yet
    clock[0] = 1000.5
    manager.refresh_if_due()
    assert calls == [1000.5]  # exactly the interval: due
    manager.poll_s = 0.0
    clock[0] = 5000.0
    manager.refresh_if_due()
    assert calls == [1000.5]  # 0: never polled


def test_the_local_copy_keeps_the_served_version_and_the_one_before(tmp_path):
    versions = [_publish(tmp_path)]
    manager = _loaded(tmp_path)
    for n in (4, 5, 6):
        versions.append(_publish(tmp_path, rows=np.eye(n, 4, dtype=np.float32)))
        assert manager.refresh() is True
    assert sorted(manager.cache.list_versions()) == sorted(versions[-IndexManager.CACHE_KEEP:])


def test_a_local_copy_that_cannot_be_pruned_is_only_a_warning(tmp_path, monkeypatch, caplog):
    _publish(tmp_path)

    def fail(store, keep):
        raise OSError("read-only file system")

    monkeypatch.setattr("gateway.index.prune", fail)
    with caplog.at_level(logging.WARNING, logger="gateway.index"):
        manager = _loaded(tmp_path)
    assert manager.error is None
    assert f"could not prune the local copy in {manager.cache.uri}: read-only file system" in _messages(caplog)


def test_serving_the_local_copy_keeps_the_error_and_prunes_nothing(tmp_path, monkeypatch, caplog):
    _publish(tmp_path)
    _loaded(tmp_path)  # leaves the local copy
    pruned = []
    monkeypatch.setattr("gateway.index.prune", lambda store, keep: pruned.append(keep) or [])
    (tmp_path / "index" / POINTER).unlink()
    with caplog.at_level(logging.WARNING, logger="gateway.index"):
        again = _loaded(tmp_path)
    assert again.from_cache and again.error.startswith(f"index not loaded from {tmp_path / 'index'}") and pruned == []
    assert f"serving cached copy of version {again.current.version} from {again.cache.uri}" in _messages(caplog)


def test_no_store_and_no_copy_leaves_nothing_served(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="gateway.index"):
        manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
        manager.load()
    assert manager.current is None and manager.from_cache is False
    uri = manager.cache.uri
    no_copy = f"no usable local copy in {uri}: {uri}/CURRENT not found"
    assert _messages(caplog, logging.ERROR) == [manager.error, no_copy]


def test_a_new_manager_has_checked_nothing_and_serves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.index.time", SimpleNamespace(monotonic=lambda: 77.0))  # this module's clock
    manager = IndexManager(str(tmp_path / "index"), None, 30)
    assert manager.cache.root == Config(index_uri=str(tmp_path / "index")).index_cache
    assert (manager.current, manager.error, manager.from_cache, manager.polling) == (None, None, False, False)
    assert manager.checked_at == 77.0  # the first poll is due poll_s after start, not at once
    assert IndexManager(str(tmp_path / "index")).poll_s == 30.0
    manager.refresh_if_due()
    assert manager.error is None  # not asked yet


def test_polling_starts_only_with_an_interval_and_picks_up_a_new_version(tmp_path):
    _publish(tmp_path)
    idle = _loaded(tmp_path)
    idle.start_polling()
    assert idle.polling is False
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy2", 0.05)
    manager.load()
    manager.start_polling()
    assert manager.polling is True
    pollers = [t for t in threading.enumerate() if t.name == "index-poller"]
    assert pollers and all(t.daemon for t in pollers)  # a daemon: it never holds the process open
    newer = _publish(tmp_path, rows=np.eye(5, 4, dtype=np.float32))
    deadline = time.monotonic() + 10
    while manager.current.version != newer and time.monotonic() < deadline:  # bounded: at most 10 s
        time.sleep(0.02)
    assert manager.current.version == newer


# --- the catalog's prototypes (ranking/prototypes.py) ----------------------------------------------------------


def test_a_versions_prototypes_are_read_and_one_built_before_them_has_none(tmp_path):
    from indexstore.store import PROTOTYPES
    from ranking.prototypes import to_bytes

    prototypes = np.eye(2, 4, dtype=np.float32)
    _publish(tmp_path / "with", files={PROTOTYPES: to_bytes(prototypes)})
    assert _loaded(tmp_path / "with").current.prototypes.tolist() == prototypes.tolist()
    _publish(tmp_path / "without")
    assert _loaded(tmp_path / "without").current.prototypes is None


@pytest.mark.parametrize("prototypes", [np.eye(2, 3, dtype=np.float32), np.full((2, 4), np.nan, np.float32)])
def test_prototypes_that_do_not_fit_the_model_are_refused(tmp_path, prototypes):
    """Rows of another model's length, or not numbers: the version is corrupt, and never served."""
    from indexstore.store import PROTOTYPES
    from ranking.prototypes import to_bytes

    version = _publish(tmp_path, files={PROTOTYPES: to_bytes(prototypes)})
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "copy", 0)
    manager.load()
    assert manager.current is None and f"version {version}: malformed prototypes file" in manager.error

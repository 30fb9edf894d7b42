"""The Milvus backend (search/milvus.py) against Milvus Lite, the real embedded engine: a collection per
version, the alias switched in one step, the old collection dropped after its grace period, fills resumable."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from catalog.build import fill_milvus
from gateway import create_app
from gateway.__main__ import workers_for
from gateway.config import Config
from gateway.routes import SEARCH_DOWN
from indexstore.store import open_store, publish, write_version
from search import Filter
from search.milvus import (
    MilvusError,
    MilvusSearch,
    MilvusSettings,
    NotFilled,
    _alias_holder,
    client_for,
    collection_name,
)
from tests.conftest import jpeg_bytes
from tests.test_ranking import catalog, version_data
from tests.test_service import FixedClient

pytestmark = pytest.mark.milvus_lite

V1, V2 = "20260101T000000000000Z-aaaaaa", "20260102T000000000000Z-bbbbbb"


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def settings(tmp_path):
    return MilvusSettings(str(tmp_path / "milvus.db"), index_type="FLAT", drop_grace_s=0.2)


def filled(settings: MilvusSettings, version: str, x: np.ndarray, codes: np.ndarray,
           prices: np.ndarray | None = None) -> MilvusSearch:
    """What a build then a gateway do: fill the version's collection, then serve it."""
    MilvusSearch.fill(settings, version, x, codes, prices)
    return MilvusSearch.serve(settings, version, len(x))


def test_each_version_is_a_collection_and_the_alias_follows(settings):
    x, codes = unit_rows(40), np.arange(40) % 3
    first = filled(settings, V1, x, codes)
    client = client_for(settings)
    assert _alias_holder(client, settings.alias) == collection_name(V1)
    found = first.search(x[5], 3, Filter(categories=frozenset({2}), exclude_rows=frozenset({5})))
    assert all(codes[r] == 2 and r != 5 for r in found.rows) and len(found) == 3
    assert np.allclose(first.vector(5), x[5])
    second = filled(settings, V2, unit_rows(30, seed=1), np.zeros(30, np.int64))
    assert _alias_holder(client, settings.alias) == collection_name(V2)
    assert len(first.search(x[5], 3)) == 3  # the old collection still answers during the grace period
    first.close()
    deadline = time.monotonic() + 10
    while client.has_collection(collection_name(V1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.has_collection(collection_name(V1)) and len(second.search(x[0], 3)) == 3


def test_the_alias_target_is_never_dropped(settings):
    only = filled(settings, V1, unit_rows(10), np.zeros(10, np.int64))
    only._drop()  # retired while the alias still points at it (e.g. another replica serves it)
    assert client_for(settings).has_collection(collection_name(V1))


def test_a_fill_that_died_midway_is_completed(settings):
    x = unit_rows(25)
    client = client_for(settings)
    MilvusSearch.fill(settings, V1, x[:10], np.zeros(10, np.int64))  # as if the fill stopped after 10 rows
    with pytest.raises(NotFilled, match="the build fills it"):  # a gateway never serves (nor fills) a part
        MilvusSearch.serve(settings, V1, 25)
    again = filled(settings, V1, x, np.zeros(25, np.int64))
    assert client.query(collection_name(V1), filter="", output_fields=["count(*)"])[0]["count(*)"] == 25
    assert again.search(x[20], 1).rows.tolist() == [20]


def test_a_gateway_serves_a_complete_collection_only(settings):
    with pytest.raises(NotFilled, match="no complete collection"):
        MilvusSearch.serve(settings, V1, 10)  # none at all
    MilvusSearch.fill(settings, V1, unit_rows(10), np.zeros(10, np.int64))
    assert len(MilvusSearch.serve(settings, V1, 10)) == 10
    with pytest.raises(NotFilled):
        MilvusSearch.serve(settings, V1, 11)  # one row short of the version


def test_scores_and_threshold(settings):
    x = unit_rows(50)
    backend = filled(settings, V1, x, np.zeros(50, np.int64))
    floor = float(np.sort(x @ x[0])[-4])  # four rows reach it
    got = backend.search(x[0], 10, min_score=floor)
    assert len(got) == 4 and np.isclose(got.scores[0], 1.0, atol=1e-5)
    assert got.exhausted  # the tenth is below the floor: no row after it reaches it
    top = backend.search(x[0], 3, min_score=floor)
    assert len(top) == 3 and not top.exhausted  # all three above the floor: a fourth may be too


def test_a_row_mask_without_its_bounds_is_applied_after_a_deeper_search(settings):
    """A mask Milvus cannot see (no price bounds with it): it searches deeper and the rows are filtered here."""
    x = unit_rows(60)
    backend = filled(settings, V1, x, np.zeros(60, np.int64))
    priced = np.arange(60) % 4 == 1
    got = backend.search(x[0], 5, Filter(rows=priced))
    want = [int(r) for r in np.argsort(-(x @ x[0])) if priced[r]][:5]
    assert got.rows.tolist() == want


PRICES = np.array([np.nan if i % 5 == 0 else float(i) for i in range(60)])


class SpyClient:
    """The real Milvus client, with the limit and filter of each search written down."""

    def __init__(self, client) -> None:
        self.client, self.asked = client, []

    def search(self, collection, **kwargs):
        self.asked.append((kwargs["limit"], kwargs["filter"]))
        return self.client.search(collection, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.parametrize(("low", "high"), [(10.0, 20.0), (None, 7.0), (55.0, None), (12.0, 12.0), (11.5, 11.9)])
def test_a_price_range_is_filtered_inside_milvus_on_a_typed_field(settings, low, high):
    """Bounds inclusive on both sides, an unknown price (null) in no range, k asked for (no deeper search), the
    same rows as the mask the exact backend uses."""
    x = unit_rows(60)
    backend = filled(settings, V1, x, np.zeros(60, np.int64), PRICES)
    backend._client = spy = SpyClient(backend._client)
    mask = np.isfinite(PRICES) & (PRICES >= (low if low is not None else -np.inf)) & (
        PRICES <= (high if high is not None else np.inf))
    got = backend.search(x[0], 5, Filter(rows=mask, price=(low, high)))
    want = [int(r) for r in np.argsort(-(x @ x[0])) if mask[r]][:5]
    # Milvus and NumPy compute the scores in their own ways: the same rows, and scores equal within float32
    # rounding in best-first order (a near-tie may swap two neighbours, never change what is shown)
    assert set(got.rows.tolist()) == set(want)
    assert np.allclose(got.scores, (x @ x[0])[want], atol=1e-5)
    assert spy.asked[-1][0] == 5 and "price" in spy.asked[-1][1]  # k rows asked, the range in Milvus's filter
    assert got.exhausted == (mask.sum() < 5)  # fewer admitted rows than asked: complete, no second search


def test_a_filtered_search_that_returns_fewer_rows_than_asked_is_complete(settings):
    x = unit_rows(30)
    backend = filled(settings, V1, x, np.arange(30) % 10, np.arange(30, dtype=float))
    few = backend.search(x[0], 8, Filter(categories=frozenset({3})))  # 3 rows have code 3
    assert len(few) == 3 and few.exhausted
    many = backend.search(x[0], 2, Filter(categories=frozenset({3})))
    assert len(many) == 2 and not many.exhausted


def test_a_collection_made_before_prices_were_stored_is_filled_again(settings):
    from search import milvus

    x = unit_rows(12)
    client = client_for(settings)
    pymilvus = milvus._pymilvus()
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("code", pymilvus.DataType.INT64)
    schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=8)
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(collection_name(V1), schema=schema, index_params=params)
    client.upsert(collection_name(V1), [{"row": i, "code": 0, "vector": v.tolist()} for i, v in enumerate(x)])
    client.flush(collection_name(V1))  # complete by its count, but without the price field
    prices = np.arange(12, dtype=float)
    backend = filled(settings, V1, x, np.zeros(12, np.int64), prices)
    fields = {f["name"] for f in client.describe_collection(collection_name(V1))["fields"]}
    assert "price" in fields
    got = backend.search(x[0], 12, Filter(rows=prices >= 6, price=(6.0, None)))
    assert sorted(got.rows.tolist()) == list(range(6, 12))


def test_price_bounds_reach_milvus_as_numbers_only():
    from search.milvus import _expression

    assert _expression(Filter(price=(1.5, None))) == "price is not null and price >= 1.5"
    assert _expression(Filter(price=(None, 2))) == "price is not null and price <= 2.0"
    with pytest.raises(ValueError, match="finite"):
        _expression(Filter(price=(float("nan"), None)))


@pytest.mark.parametrize(("env", "workers"), [
    ({"SEARCH_BACKEND": "milvus", "MILVUS_URI": "/data/milvus.db"}, 1),
    ({"SEARCH_BACKEND": "milvus", "MILVUS_URI": "http://milvus:19530"}, 4),
    ({"SEARCH_BACKEND": "ann", "MILVUS_URI": "/data/milvus.db"}, 4),
])
def test_milvus_lite_runs_one_gateway_worker(env, workers):
    assert workers_for(4, Config.from_env(env)) == workers
    assert workers_for(1, Config.from_env(env)) == 1


def test_our_milvus_uri_variable_does_not_confuse_pymilvus(tmp_path):
    """pymilvus reads ``MILVUS_URI`` at import as its own default and refuses a Lite file there; the gateway
    sets exactly that variable, so the import must not see it (checked in a fresh interpreter)."""
    code = ("from search.milvus import MilvusSettings, client_for; "
            f"client_for(MilvusSettings({str(tmp_path / 'm.db')!r})).list_collections(); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MILVUS_URI": str(tmp_path / "m.db")},
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.strip() == "ok", done.stderr[-500:]


def test_a_milvus_failure_is_a_503_in_plain_words_and_the_next_request_recovers(tmp_path, caplog):
    x, hists, products = catalog(60)
    store = open_store(tmp_path / "index")
    data, _ = version_data(x, hists, products)
    version = write_version(store, data)
    fill_milvus(MilvusSettings(str(tmp_path / "milvus.db"), index_type="FLAT"), data)  # the build's step
    publish(store, version)
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    search_backend="milvus", milvus_uri=str(tmp_path / "milvus.db"), milvus_index_type="FLAT")
    client = FixedClient()
    client.vector = x[3]
    app = create_app(config, client)
    http = app.test_client()
    backend = app.extensions["photo"].require_index().backend
    assert backend.name == "milvus"
    upload = {"file": (io.BytesIO(jpeg_bytes()), "q.jpg")}
    assert http.post("/api/search", data=upload, content_type="multipart/form-data").status_code == 200

    backend._client.release_collection(backend._collection)  # Milvus loses the collection mid-service
    for path in ("/api/search", "/api/products/3/similar", "/search"):
        if path == "/api/products/3/similar":
            answer = http.get(path)
        else:
            answer = http.post(path, data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg")},
                               content_type="multipart/form-data")
        assert answer.status_code == 503, (path, answer.status_code)
        assert answer.headers["Retry-After"] == "2"
        text = answer.get_data(as_text=True)
        assert SEARCH_DOWN in text and "Milvus" not in text and str(tmp_path) not in text
    assert "Milvus search failed" in caplog.text  # the reason is in the log

    backend._client.load_collection(backend._collection)  # Milvus is back
    again = http.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg")},
                      content_type="multipart/form-data")
    assert again.status_code == 200 and again.get_json()["results"][0]["id"] == "3"
    assert http.get("/api/products/3/similar").status_code == 200


def test_the_gateway_on_milvus_filters_prices_like_the_exact_backend(tmp_path):
    """Through the app: the same price range on Milvus (filled by the build's step) and on exact search gives the
    same products: the build derives the rows, codes and prices the gateway would."""
    x, hists, products = catalog(60)
    for i, product in enumerate(products):
        if i % 4:  # every fourth has no price
            product["price"] = i + 0.5
    store = open_store(tmp_path / "index")
    data, _ = version_data(x, hists, products)
    version = write_version(store, data)
    fill_milvus(MilvusSettings(str(tmp_path / "milvus.db"), index_type="FLAT"), data)  # the build's step
    publish(store, version)
    answers = {}
    for backend in ("exact", "milvus"):
        config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / backend),
                        search_backend=backend, milvus_uri=str(tmp_path / "milvus.db"), milvus_index_type="FLAT")
        client = FixedClient()
        client.vector = x[3]
        http = create_app(config, client).test_client()
        answer = http.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0",
                                                "min_price": "10", "max_price": "40.5", "top_k": "8",
                                                "category_first": "false"}, content_type="multipart/form-data")
        assert answer.status_code == 200
        answers[backend] = answer.get_json()["results"]
        one = http.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0",
                                             "category": products[3]["category"], "top_k": "8"},
                        content_type="multipart/form-data")
        answers[backend + "-category"] = one.get_json()["results"]
    # the same products, in best-first order by scores equal within float32 rounding (two ways of computing them)
    assert {(r["id"], r["price"]) for r in answers["milvus"]} == {(r["id"], r["price"]) for r in answers["exact"]}
    assert np.allclose([r["score"] for r in answers["milvus"]], [r["score"] for r in answers["exact"]], atol=1e-5)
    assert len(answers["exact"]) == 8 and all(10 <= r["price"] <= 40.5 for r in answers["milvus"])
    # the build's category codes are the gateway's: one category's filter admits the same products
    assert {r["id"] for r in answers["milvus-category"]} == {r["id"] for r in answers["exact-category"]}
    assert {r["category"] for r in answers["milvus-category"]} == {products[3]["category"]}


def test_the_build_fills_milvus_before_publishing_and_the_gateway_fetches_no_matrix(tmp_path, monkeypatch):
    from catalog import build as build_module
    from catalog.build import build_index
    from gateway.index import IndexManager
    from search import BackendSettings
    from tests.embedders import HashEmbedder
    from tests.test_shards import small_catalog

    products_csv = small_catalog(tmp_path)
    settings = MilvusSettings(str(tmp_path / "milvus.db"), index_type="FLAT")
    out = tmp_path / "index"

    def dies(*args):
        raise MilvusError("Milvus went away mid-fill")

    monkeypatch.setattr(build_module, "fill_milvus", dies)
    with pytest.raises(MilvusError):
        build_index(products_csv, out, HashEmbedder(), tmp_path / "cache", progress=False, milvus=settings)
    assert not (out / "CURRENT").exists()  # a version whose collection is not filled is never published
    monkeypatch.undo()
    report = build_index(products_csv, out, HashEmbedder(), tmp_path / "cache", progress=False, milvus=settings)
    manager = IndexManager(str(out), tmp_path / "copy", 0, BackendSettings("milvus", milvus=settings))
    manager.load()
    assert manager.current.version == report.version and manager.current.backend.name == "milvus"
    assert not (tmp_path / "copy" / "versions" / report.version / "embeddings.npy").exists()
    assert len(manager.current.backend.search(np.ones(16, np.float32) / 4, 3)) == 3

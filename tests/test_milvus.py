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

from gateway import create_app
from gateway.__main__ import workers_for
from gateway.config import Config
from gateway.routes import SEARCH_DOWN
from indexstore.store import open_store, publish, write_version
from search import Filter
from search.milvus import MilvusSearch, MilvusSettings, _alias_holder, client_for, collection_name
from tests.conftest import jpeg_bytes
from tests.test_ranking import catalog, version_data
from tests.test_service import FixedClient

V1, V2 = "20260101T000000000000Z-aaaaaa", "20260102T000000000000Z-bbbbbb"


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def settings(tmp_path):
    return MilvusSettings(str(tmp_path / "milvus.db"), index_type="FLAT", drop_grace_s=0.2)


def test_each_version_is_a_collection_and_the_alias_follows(settings):
    x, codes = unit_rows(40), np.arange(40) % 3
    first = MilvusSearch.serve(settings, V1, x, codes)
    client = client_for(settings)
    assert _alias_holder(client, settings.alias) == collection_name(V1)
    found = first.search(x[5], 3, Filter(categories=frozenset({2}), exclude_rows=frozenset({5})))
    assert all(codes[r] == 2 and r != 5 for r in found.rows) and len(found) == 3
    assert np.allclose(first.vector(5), x[5])
    second = MilvusSearch.serve(settings, V2, unit_rows(30, seed=1), np.zeros(30, np.int64))
    assert _alias_holder(client, settings.alias) == collection_name(V2)
    assert len(first.search(x[5], 3)) == 3  # the old collection still answers during the grace period
    first.close()
    deadline = time.monotonic() + 10
    while client.has_collection(collection_name(V1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.has_collection(collection_name(V1)) and len(second.search(x[0], 3)) == 3


def test_the_alias_target_is_never_dropped(settings):
    only = MilvusSearch.serve(settings, V1, unit_rows(10), np.zeros(10, np.int64))
    only._drop()  # retired while the alias still points at it (e.g. another replica serves it)
    assert client_for(settings).has_collection(collection_name(V1))


def test_a_fill_that_died_midway_is_completed(settings):
    x = unit_rows(25)
    client = client_for(settings)
    MilvusSearch.serve(settings, V1, x[:10], np.zeros(10, np.int64))  # as if the fill stopped after 10 rows
    again = MilvusSearch.serve(settings, V1, x, np.zeros(25, np.int64))
    assert client.query(collection_name(V1), filter="", output_fields=["count(*)"])[0]["count(*)"] == 25
    assert again.search(x[20], 1).rows.tolist() == [20]


def test_scores_and_threshold(settings):
    x = unit_rows(50)
    backend = MilvusSearch.serve(settings, V1, x, np.zeros(50, np.int64))
    floor = float(np.sort(x @ x[0])[-4])  # four rows reach it
    got = backend.search(x[0], 10, min_score=floor)
    assert len(got) == 4 and np.isclose(got.scores[0], 1.0, atol=1e-5) and not got.exhausted


def test_a_row_mask_is_applied_after_a_deeper_search(settings):
    """Milvus has no field for a price range: it searches deeper and the rows are filtered here."""
    x = unit_rows(60)
    backend = MilvusSearch.serve(settings, V1, x, np.zeros(60, np.int64))
    priced = np.arange(60) % 4 == 1
    got = backend.search(x[0], 5, Filter(rows=priced))
    want = [int(r) for r in np.argsort(-(x @ x[0])) if priced[r]][:5]
    assert got.rows.tolist() == want


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
    publish(store, write_version(store, data))
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

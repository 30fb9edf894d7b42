"""search/milvus.py in fast unit tests: Milvus itself is a stand-in client that keeps rows in memory and records
every call, so each request the backend makes (schema, batches, limits, filters, aliases) is asserted exactly and
the module joins the forked mutation run. Milvus Lite, the real engine, runs the same paths in tests/test_milvus.py."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types

import numpy as np
import pytest

from search import milvus
from search.base import Filter
from search.milvus import (
    FIELDS,
    MAX_TOPK,
    MilvusError,
    MilvusSearch,
    MilvusSettings,
    NotFilled,
    collection_name,
)

V1 = "20260101T000000000000Z-aaaaaa"
NAME = "photo_20260101T000000000000Z_aaaaaa"
URI = "http://milvus.invalid:19530"


class FakeMilvus:
    """A stand-in for ``pymilvus.MilvusClient``: collections of rows in memory, aliases, and a log of calls."""

    def __init__(self, fail: str = "") -> None:
        self.collections: dict[str, dict] = {}
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple] = []
        self.fail = fail  # the method that raises (pymilvus's own exception)
        self.hits: list[dict] | None = None  # what ``search`` answers (None: every row, best first)

    def _call(self, method: str, *args, **kwargs) -> None:
        self.calls.append((method, *args, *sorted(kwargs.items())))
        if method == self.fail:
            raise milvus._pymilvus().exceptions.MilvusException(message=f"{method} refused")

    def named(self, method: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == method]

    def make(self, name: str, rows: int, fields: frozenset[str] = FIELDS) -> None:
        """A collection as an earlier fill left it."""
        self.collections[name] = {"fields": set(fields), "rows": {
            i: {"row": i, "code": 0, "price": None, "vector": [1.0, 0.0]} for i in range(rows)}}

    def has_collection(self, name: str) -> bool:
        self._call("has_collection", name)
        return name in self.collections

    def describe_collection(self, name: str) -> dict:
        self._call("describe_collection", name)
        fields = sorted(self.collections[name]["fields"])
        return {"fields": [{"name": f} for f in fields]} if fields else {}  # pymilvus leaves out what is empty

    def drop_collection(self, name: str) -> None:
        self._call("drop_collection", name)
        del self.collections[name]

    def load_collection(self, name: str) -> None:
        self._call("load_collection", name)

    def query(self, name: str, filter: str, output_fields: list[str]) -> list[dict]:  # noqa: A002 - pymilvus's name
        self._call("query", name, filter=filter, output_fields=output_fields)
        rows = self.collections[name]["rows"]
        if output_fields == ["count(*)"]:
            return [{"count(*)": len(rows)}]
        row = int(filter.removeprefix("row == "))
        return [{"row": row, "vector": rows[row]["vector"]}] if row in rows else []

    def prepare_index_params(self):
        return milvus._pymilvus().MilvusClient.prepare_index_params()

    def create_collection(self, name: str, schema, index_params) -> None:
        self._call("create_collection", name)
        self.schema, self.index = schema, [i.to_dict() for i in index_params]
        self.collections[name] = {"fields": {f.name for f in schema.fields}, "rows": {}}

    def upsert(self, name: str, rows: list[dict]) -> None:
        self._call("upsert", name, len(rows))
        self.collections[name]["rows"].update({r["row"]: r for r in rows})

    def flush(self, name: str) -> None:
        self._call("flush", name)

    def list_collections(self) -> list[str]:
        return list(self.collections)

    def list_aliases(self, name: str) -> dict:
        self._call("list_aliases", name)
        aliases = [a for a, target in self.aliases.items() if target == name]
        return {"aliases": aliases} if aliases else {}

    def create_alias(self, collection_name: str, alias: str) -> None:
        self._call("create_alias", collection_name=collection_name, alias=alias)
        self.aliases[alias] = collection_name

    def alter_alias(self, collection_name: str, alias: str) -> None:
        self._call("alter_alias", collection_name=collection_name, alias=alias)
        self.aliases[alias] = collection_name

    def search(self, name: str, data: list, limit: int, filter: str, output_fields: list,  # noqa: A002
               search_params: dict) -> list[list[dict]]:
        self._call("search", name, data=data, limit=limit, filter=filter, output_fields=output_fields,
                   search_params=search_params)
        return [self.hits[:limit] if self.hits is not None else []]


class FakeTimer:
    daemon = False

    def start(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch) -> FakeMilvus:
    client = FakeMilvus()
    monkeypatch.setattr(milvus, "_CLIENTS", {URI: client})
    return client


SETTINGS = MilvusSettings(URI, index_type="HNSW", drop_grace_s=7.5)


def test_a_version_is_a_collection_name_milvus_accepts():
    assert collection_name(V1) == NAME
    assert collection_name("a-b-c") == "photo_a_b_c"


def test_the_settings_defaults():
    s = MilvusSettings("x.db")
    assert (s.token, s.alias, s.index_type, s.drop_grace_s) == ("", "photo_current", "AUTOINDEX", 30.0)
    assert (milvus.BATCH, MAX_TOPK) == (2000, 16384)
    assert FIELDS == {"row", "code", "price", "vector"}


class _RecordEnvOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a stand-in ``pymilvus`` that notes the ``MILVUS_URI`` it saw at import."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def find_spec(self, name, path, target=None):
        if name in ("pymilvus", "pymilvus.exceptions"):
            return importlib.machinery.ModuleSpec(name, self, is_package=name == "pymilvus")
        return None

    def create_module(self, spec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module) -> None:
        self.seen.append(os.environ.get("MILVUS_URI"))


@pytest.mark.parametrize("ours", ["/data/milvus.db", None])
def test_pymilvus_is_imported_without_our_milvus_uri_and_the_variable_is_put_back(monkeypatch, ours):
    finder = _RecordEnvOnImport()
    milvus._pymilvus()  # the real one imported first, so that the stand-in is undone after the test
    for name in ("pymilvus", "pymilvus.exceptions"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    if ours is None:
        monkeypatch.delenv("MILVUS_URI", raising=False)
    else:
        monkeypatch.setenv("MILVUS_URI", ours)
    module = milvus._pymilvus()
    assert module is sys.modules["pymilvus"] and "pymilvus.exceptions" in sys.modules
    assert finder.seen == [None, None]  # neither import saw it
    assert os.environ.get("MILVUS_URI") == ours


def test_one_client_per_uri_made_with_the_token(monkeypatch):
    made = []

    class Client:
        def __init__(self, uri, token):
            made.append((uri, token))

    monkeypatch.setattr(milvus, "_CLIENTS", {})
    monkeypatch.setattr(milvus._pymilvus(), "MilvusClient", Client)
    first = milvus.client_for(MilvusSettings("a.db", token="t0k"))
    assert milvus.client_for(MilvusSettings("a.db", token="other")) is first
    other = milvus.client_for(MilvusSettings("b.db"))
    assert other is not first and made == [("a.db", "t0k"), ("b.db", "")]


def test_a_fill_makes_the_collection_with_typed_fields_and_upserts_in_batches(fake, monkeypatch, caplog):
    monkeypatch.setattr(milvus, "BATCH", 3)
    vectors = np.arange(14, dtype=np.float64).reshape(7, 2)
    prices = np.array([1.5, np.nan, np.inf, 2, 3, 4, 5])
    with caplog.at_level(logging.INFO, logger="search.milvus"):
        MilvusSearch.fill(SETTINGS, V1, vectors, np.arange(7) % 2, prices)
    assert [(f.name, f.dtype.name, f.is_primary, f.nullable, f.params) for f in fake.schema.fields] == [
        ("row", "INT64", True, False, {}), ("code", "INT64", False, False, {}),
        ("price", "DOUBLE", False, True, {}), ("vector", "FLOAT_VECTOR", False, False, {"dim": 2})]
    assert (fake.schema.auto_id, fake.schema.enable_dynamic_field) == (False, False)
    assert fake.index == [{"field_name": "vector", "index_type": "HNSW", "index_name": "", "metric_type": "IP"}]
    assert fake.named("upsert") == [("upsert", NAME, 3), ("upsert", NAME, 3), ("upsert", NAME, 1)]
    rows = fake.collections[NAME]["rows"]
    assert sorted(rows) == list(range(7))
    assert rows[4] == {"row": 4, "code": 0, "price": 3.0, "vector": [8.0, 9.0]}
    assert [rows[i]["code"] for i in range(7)] == [0, 1, 0, 1, 0, 1, 0]
    assert [rows[i]["price"] for i in range(3)] == [1.5, None, None]  # unknown (NaN) and infinite: null
    assert [type(rows[i]["code"]) for i in range(7)] == [int] * 7
    assert type(rows[0]["vector"][0]) is float
    assert fake.calls[-1] == ("flush", NAME)
    assert [r.getMessage() for r in caplog.records] == [f"filled Milvus collection {NAME} with 7 rows"]


def test_a_fill_without_prices_stores_them_null(fake):
    MilvusSearch.fill(SETTINGS, V1, np.ones((2, 2)), np.zeros(2))
    assert [r["price"] for r in fake.collections[NAME]["rows"].values()] == [None, None]


def test_a_fill_stores_float32_vectors_and_prices_given_as_a_list(fake):
    MilvusSearch.fill(SETTINGS, V1, np.full((2, 2), 0.1), np.zeros(2), [1.25, None])
    rows = fake.collections[NAME]["rows"]
    assert [rows[i]["price"] for i in range(2)] == [1.25, None]
    assert rows[0]["vector"] == [float(np.float32(0.1))] * 2


def test_a_complete_collection_is_not_filled_again(fake):
    fake.make(NAME, 4)
    MilvusSearch.fill(SETTINGS, V1, np.ones((4, 2)), np.zeros(4))
    assert not fake.named("upsert") and not fake.named("create_collection")
    assert ("query", NAME, ("filter", ""), ("output_fields", ["count(*)"])) in fake.calls
    assert fake.named("load_collection") == [("load_collection", NAME)]  # loaded before it is counted


def test_a_fill_that_died_midway_upserts_every_row_into_the_same_collection(fake):
    fake.make(NAME, 3)
    MilvusSearch.fill(SETTINGS, V1, np.ones((4, 2)), np.zeros(4))
    assert not fake.named("create_collection")
    assert fake.named("upsert") == [("upsert", NAME, 4)] and len(fake.collections[NAME]["rows"]) == 4


def test_a_collection_without_todays_fields_is_dropped_and_filled_again(fake, caplog):
    fake.make(NAME, 4, fields=frozenset({"row", "code", "vector"}))
    MilvusSearch.fill(SETTINGS, V1, np.ones((4, 2)), np.zeros(4))
    assert fake.named("drop_collection") == [("drop_collection", NAME)]
    assert fake.named("create_collection") and fake.collections[NAME]["fields"] == FIELDS
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"Milvus collection {NAME} lacks price: filling it again"]


def test_a_collection_described_without_fields_is_filled_again(fake, caplog):
    fake.make(NAME, 4, fields=frozenset())
    assert not milvus._complete(fake, NAME, 4) and NAME not in fake.collections
    fake.make(NAME, 4, fields=frozenset({"row", "vector"}))
    milvus._complete(fake, NAME, 4)
    warned = caplog.records[-1].getMessage()
    assert warned == f"Milvus collection {NAME} lacks code, price: filling it again"


def test_the_fields_check_needs_every_field(fake):
    fake.make(NAME, 4, fields=FIELDS | {"extra"})  # more is fine
    assert milvus._complete(fake, NAME, 4) and not milvus._complete(fake, NAME, 5)
    assert not milvus._complete(fake, "photo_other", 0)


@pytest.mark.parametrize("step", ["has_collection", "create_collection", "upsert"])
def test_a_refused_fill_is_a_milvus_error_naming_the_server(fake, step):
    fake.fail = step
    with pytest.raises(MilvusError) as caught:
        MilvusSearch.fill(SETTINGS, V1, np.ones((2, 2)), np.zeros(2))
    assert str(caught.value).startswith(f"Milvus at {URI}: ") and f"{step} refused" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_gateway_never_fills_a_missing_collection(fake):
    with pytest.raises(NotFilled) as caught:
        MilvusSearch.serve(SETTINGS, V1, 4)
    assert str(caught.value) == (f"Milvus at {URI} has no complete collection {NAME} for version {V1} (4 rows): "
                                 "the build fills it (build_index.py with MILVUS_URI set)")
    fake.make(NAME, 3)
    with pytest.raises(NotFilled):
        MilvusSearch.serve(SETTINGS, V1, 4)
    assert not fake.named("upsert") and not fake.aliases


def test_serving_loads_the_collection_and_points_the_alias_at_it(fake, monkeypatch):
    fake.make(NAME, 4)
    backend = MilvusSearch.serve(SETTINGS, V1, 4)
    assert len(backend) == 4 and fake.aliases == {"photo_current": NAME}
    assert fake.named("create_alias") == [("create_alias", ("alias", "photo_current"), ("collection_name", NAME))]
    assert fake.named("load_collection") == [("load_collection", NAME)] * 2  # counted, then served
    fake.hits = hits((1, 0.5))
    assert backend.search(np.zeros(2), 1).rows.tolist() == [1] and fake.named("search")[0][1] == NAME
    grace = []
    monkeypatch.setattr(milvus.threading, "Timer", lambda seconds, action: grace.append(seconds) or FakeTimer())
    backend.close()
    assert grace == [SETTINGS.drop_grace_s]  # dropped after the served settings' grace period
    MilvusSearch.serve(SETTINGS, V1, 4)  # already its target: nothing to switch
    assert len(fake.named("create_alias")) == 1 and not fake.named("alter_alias")
    fake.make("photo_v2", 2)
    MilvusSearch.serve(SETTINGS, "v2", 2)
    assert fake.named("alter_alias") == [("alter_alias", ("alias", "photo_current"), ("collection_name", "photo_v2"))]
    assert fake.aliases == {"photo_current": "photo_v2"} and len(fake.named("create_alias")) == 1


def test_the_alias_holder_is_found_among_the_collections(fake):
    fake.make("photo_a", 1)
    fake.make("photo_b", 1)
    assert milvus._alias_holder(fake, "photo_current") is None  # no collection has an alias
    fake.aliases = {"photo_current": "photo_b", "other": "photo_a"}
    assert milvus._alias_holder(fake, "photo_current") == "photo_b"
    assert milvus._alias_holder(fake, "other") == "photo_a"


def test_a_refused_serve_is_a_milvus_error(fake):
    fake.make(NAME, 4)
    fake.fail = "create_alias"
    with pytest.raises(MilvusError) as caught:
        MilvusSearch.serve(SETTINGS, V1, 4)
    assert str(caught.value) == f"Milvus at {URI}: <MilvusException: (code=1, message=create_alias refused)>"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def served(fake: FakeMilvus, count: int = 100) -> MilvusSearch:
    return MilvusSearch(fake, NAME, count, SETTINGS)


def hits(*pairs: tuple[int, float]) -> list[dict]:
    return [{"row": row, "distance": score} for row, score in pairs]


def test_a_search_asks_milvus_for_k_rows_by_inner_product(fake):
    fake.hits = hits((7, 0.9), (3, 0.8), (5, 0.7))
    found = served(fake).search(np.array([0.5, 0.25], np.float64), 3)
    assert fake.named("search") == [("search", NAME, ("data", [[0.5, 0.25]]), ("filter", ""), ("limit", 3),
                                     ("output_fields", []), ("search_params", {"metric_type": "IP"}))]
    assert found.rows.tolist() == [7, 3, 5] and found.rows.dtype == np.int64
    assert found.scores.dtype == np.float32 and np.allclose(found.scores, [0.9, 0.8, 0.7])
    assert not found.exhausted  # as many as asked: there may be more


@pytest.mark.parametrize(("k", "count", "where", "limit"), [
    (5, 100, Filter(), 5),
    (5, 3, Filter(), 3),  # never more than the collection holds
    (5, 100, Filter(rows=np.ones(100, bool)), 100),  # a row mask Milvus cannot apply: deeper, filtered here
    (5, 20_000, Filter(rows=np.ones(20_000, bool)), MAX_TOPK),
    (20_000, 30_000, Filter(), MAX_TOPK),
    (5, 100, Filter(rows=np.ones(100, bool), price=(1.0, 2.0)), 5),  # the mask is Milvus's own price range
])
def test_the_search_depth(fake, k, count, where, limit):
    served(fake, count).search(np.zeros(2), k, where)
    assert fake.named("search")[0][4] == ("limit", limit)


@pytest.mark.parametrize("k", [0, -1])
def test_nothing_to_find_asks_milvus_nothing(fake, k):
    for backend, asked in ((served(fake), k), (served(fake, 0), 5)):
        found = backend.search(np.zeros(2), asked)
        assert len(found) == 0 and len(found.scores) == 0 and found.exhausted and found.rows.dtype == np.int64
        assert found.scores.dtype == np.float32
    assert not fake.named("search")


def test_one_row_asked_is_searched(fake):
    fake.hits = hits((4, 0.5), (5, 0.25))
    found = served(fake).search(np.array([0.1, 0.2]), 1)
    assert found.rows.tolist() == [4] and not found.exhausted
    assert fake.named("search")[0][2] == ("data", [[float(np.float32(0.1)), float(np.float32(0.2))]])


def test_no_hits_are_int64_rows_and_float32_scores(fake):
    fake.hits = []
    found = served(fake).search(np.zeros(2), 3)
    assert found.rows.dtype == np.int64 and found.scores.dtype == np.float32 and found.exhausted


def test_fewer_hits_than_asked_means_no_more_pass(fake):
    fake.hits = hits((1, 0.9), (2, 0.8))
    assert served(fake).search(np.zeros(2), 3).exhausted
    assert not served(fake).search(np.zeros(2), 2).exhausted


def test_scores_below_the_threshold_are_dropped_and_end_the_search(fake):
    fake.hits = hits((1, 0.875), (2, 0.5), (3, 0.25))
    found = served(fake).search(np.zeros(2), 3, min_score=0.5)
    assert found.rows.tolist() == [1, 2] and found.exhausted  # the third is below: none after it passes
    found = served(fake).search(np.zeros(2), 3, min_score=0.25)  # exactly at the threshold passes
    assert found.rows.tolist() == [1, 2, 3] and not found.exhausted


def test_a_row_mask_is_applied_to_the_hits_and_k_kept(fake):
    fake.hits = hits((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6))
    mask = np.zeros(100, bool)
    mask[[2, 3, 4]] = True
    found = served(fake).search(np.zeros(2), 2, Filter(rows=mask))
    assert found.rows.tolist() == [2, 3] and np.allclose(found.scores, [0.8, 0.7])
    assert found.exhausted  # 4 hits for a limit of 100: Milvus has no more


def test_a_row_mask_and_the_threshold_both_apply(fake):
    fake.hits = hits((1, 0.875), (2, 0.75), (3, 0.25))
    mask = np.ones(100, bool)
    mask[2] = False
    found = served(fake).search(np.zeros(2), 5, Filter(rows=mask), min_score=0.5)
    assert found.rows.tolist() == [1]


def test_a_row_mask_with_no_hits(fake):
    fake.hits = []
    found = served(fake).search(np.zeros(2), 2, Filter(rows=np.zeros(100, bool)))
    assert len(found) == 0 and found.exhausted


def test_a_failed_search_is_a_milvus_error(fake):
    fake.fail = "search"
    with pytest.raises(MilvusError) as caught:
        served(fake).search(np.zeros(2), 3)
    assert str(caught.value) == "Milvus search failed: <MilvusException: (code=1, message=search refused)>"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_rows_vector_is_read_back(fake):
    fake.make(NAME, 4)
    vector = served(fake).vector(np.int64(2))
    assert fake.named("query") == [("query", NAME, ("filter", "row == 2"), ("output_fields", ["vector"]))]
    assert vector.dtype == np.float32 and vector.tolist() == [1.0, 0.0]
    with pytest.raises(MilvusError, match=f"^row 9 is missing from {NAME}$"):
        served(fake).vector(9)
    fake.fail = "query"
    with pytest.raises(MilvusError, match=r"^Milvus query failed: .*query refused") as caught:
        served(fake).vector(2)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_closing_drops_the_collection_after_the_grace_period(fake, monkeypatch):
    timers = []

    class Timer:
        def __init__(self, seconds, action):
            self.seconds, self.action, self.daemon, self.started = seconds, action, False, False
            timers.append(self)

        def start(self):
            self.started = True

    monkeypatch.setattr(milvus.threading, "Timer", Timer)
    fake.make(NAME, 4)
    served(fake).close()
    (timer,) = timers
    assert (timer.seconds, timer.daemon, timer.started) == (7.5, True, True)
    assert NAME in fake.collections  # not before the grace period
    timer.action()
    assert NAME not in fake.collections


def test_the_collection_the_alias_points_at_is_never_dropped(fake, caplog):
    fake.make(NAME, 4)
    fake.aliases = {"photo_current": NAME}
    served(fake)._drop()
    assert NAME in fake.collections and not fake.named("drop_collection")
    fake.aliases = {"another": NAME}  # another alias does not keep it
    with caplog.at_level(logging.INFO, logger="search.milvus"):
        served(fake)._drop()
        assert NAME not in fake.collections
        fake.make(NAME, 4)
        fake.aliases = {}  # nor does none
        served(fake)._drop()
    assert NAME not in fake.collections
    assert [r.getMessage() for r in caplog.records] == [f"dropped Milvus collection {NAME}"] * 2


def test_a_failed_drop_is_a_warning_not_a_crash(fake, caplog):
    fake.make(NAME, 4)
    fake.fail = "drop_collection"
    served(fake)._drop()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"could not drop Milvus collection {NAME}: "
                          "<MilvusException: (code=1, message=drop_collection refused)>")]


@pytest.mark.parametrize(("where", "expression"), [
    (Filter(), ""),
    (Filter(categories=frozenset({3, 1})), "code in [1, 3]"),
    (Filter(categories=frozenset()), "code in []"),
    (Filter(exclude_categories=frozenset({4, 2})), "code not in [2, 4]"),
    (Filter(exclude_rows=frozenset({9, 8})), "row not in [8, 9]"),
    (Filter(price=(None, None)), "price is not null"),
    (Filter(price=(1.5, None)), "price is not null and price >= 1.5"),
    (Filter(price=(None, 2)), "price is not null and price <= 2.0"),
    (Filter(price=(0.0, 0.0)), "price is not null and price >= 0.0 and price <= 0.0"),
    (Filter(categories=frozenset({1}), exclude_categories=frozenset({2}), exclude_rows=frozenset({3}),
            price=(4.0, 5.0)),
     "code in [1] and code not in [2] and row not in [3] and price is not null and price >= 4.0 and price <= 5.0"),
])
def test_a_filter_becomes_milvus_expression(where, expression):
    assert milvus._expression(where) == expression


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), -float("inf")])
def test_a_price_bound_must_be_finite(bound):
    with pytest.raises(ValueError, match="a price bound must be finite"):
        milvus._expression(Filter(price=(bound, None)))


def test_a_price_literal_is_a_number_not_text():
    assert milvus._number(np.float32(2.5)) == "2.5" and milvus._number(3) == "3.0"
    with pytest.raises(ValueError):
        milvus._number("1 or 1 == 1")

"""Search in Milvus (``SEARCH_BACKEND=milvus``): for catalogs beyond one machine, through ``pymilvus``.

``MILVUS_URI`` is a Milvus cluster or Zilliz Cloud address, or a local file for Milvus Lite (the embedded
engine from PyPI, used by the tests; one process per file, so the gateway runs one worker with it).
Each index version is its own collection, named after the version and filled from the verified local copy;
the alias ``MILVUS_ALIAS`` is switched to it in one step once it is complete and loaded, and the previous
version's collection is dropped after a grace period, when no request can still be using it. The gateway
searches the collection of the version it serves, so rows and products always match.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from search.base import EVERY_ROW, Candidates, Filter, SearchUnavailable

log = logging.getLogger(__name__)

_CLIENTS: dict[str, object] = {}  # one client per URI and process (Milvus Lite allows one per file)
_CLIENTS_LOCK = threading.Lock()
#: Rows per insert request (Milvus caps a request's size).
BATCH = 2000
#: The most rows one Milvus search may return.
MAX_TOPK = 16384


class MilvusError(SearchUnavailable):
    """Milvus could not be reached, or refused an operation."""


class NotFilled(MilvusError):
    """The collection of a version is missing or incomplete: the build did not fill it (or not yet)."""


@dataclass(frozen=True)
class MilvusSettings:
    uri: str
    token: str = ""
    alias: str = "photo_current"
    index_type: str = "AUTOINDEX"
    #: Seconds before the previous version's collection is dropped (requests begun on it finish first).
    drop_grace_s: float = 30.0


def _pymilvus():
    """pymilvus, imported without our ``MILVUS_URI`` in the environment: pymilvus reads a variable of that
    name at import as its own default connection, and refuses a Milvus Lite file there ("Illegal uri")."""
    saved = os.environ.pop("MILVUS_URI", None)
    try:
        import pymilvus
        import pymilvus.exceptions  # noqa: F401 - loaded here, under the same environment
    finally:
        if saved is not None:
            os.environ["MILVUS_URI"] = saved
    return pymilvus


def client_for(settings: MilvusSettings):
    pymilvus = _pymilvus()
    with _CLIENTS_LOCK:
        if settings.uri not in _CLIENTS:
            _CLIENTS[settings.uri] = pymilvus.MilvusClient(settings.uri, token=settings.token)
        return _CLIENTS[settings.uri]


def collection_name(version: str) -> str:
    """Milvus names allow letters, digits and underscores (version names are checked before they get here)."""
    return "photo_" + version.replace("-", "_")


class MilvusSearch:
    """One index version's collection: rows as primary keys; category codes and prices (a nullable DOUBLE:
    unknown prices are null, which no price range admits) as typed fields Milvus filters on."""

    name = "milvus"

    def __init__(self, client, collection: str, count: int, settings: MilvusSettings) -> None:
        self._client, self._collection, self._count, self._settings = client, collection, count, settings

    @staticmethod
    def fill(settings: MilvusSettings, version: str, vectors: np.ndarray, codes: np.ndarray,
             prices: np.ndarray | None = None) -> None:
        """Create and fill the collection of ``version`` from ``vectors`` (search-space rows, read slice by slice)
        unless it is complete already: the build's step (catalog/build.py), before the version is published."""
        MilvusException = _pymilvus().exceptions.MilvusException  # noqa: N806

        client, name = client_for(settings), collection_name(version)
        prices = np.full(len(vectors), np.nan) if prices is None else np.asarray(prices, dtype=np.float64)
        try:
            if not _complete(client, name, len(vectors)):
                _fill(client, name, vectors, codes, prices, settings.index_type)
        except MilvusException as exc:
            raise MilvusError(f"Milvus at {settings.uri}: {exc}") from None

    @classmethod
    def serve(cls, settings: MilvusSettings, version: str, count: int) -> MilvusSearch:
        """The filled collection of ``version`` (``count`` rows), loaded and made the alias's target. A gateway
        never fills: a collection that is missing or incomplete is ``NotFilled`` (the old version keeps serving)."""
        MilvusException = _pymilvus().exceptions.MilvusException  # noqa: N806

        client, name = client_for(settings), collection_name(version)
        try:
            if not _complete(client, name, count):
                raise NotFilled(f"Milvus at {settings.uri} has no complete collection {name} for version {version} "
                                f"({count} rows): the build fills it (build_index.py with MILVUS_URI set)")
            client.load_collection(name)
            holder = _alias_holder(client, settings.alias)
            if holder is None:
                client.create_alias(collection_name=name, alias=settings.alias)
            elif holder != name:
                client.alter_alias(collection_name=name, alias=settings.alias)  # the one-step switch
        except MilvusException as exc:
            raise MilvusError(f"Milvus at {settings.uri}: {exc}") from None
        return cls(client, name, count, settings)

    def __len__(self) -> int:
        return self._count

    def search(self, query: np.ndarray, k: int, where: Filter = EVERY_ROW, min_score: float = -1.0) -> Candidates:
        if k <= 0 or self._count == 0:
            return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), exhausted=True)
        # Every condition is Milvus's own (a price range included): ask for k. Only a row mask without its
        # price bounds (none is made today) would need a deeper search filtered here.
        masked = where.rows is not None and where.price is None
        limit = min(MAX_TOPK if masked else k, MAX_TOPK, self._count)
        try:
            found = self._client.search(self._collection, data=[np.asarray(query, np.float32).tolist()], limit=limit,
                                        filter=_expression(where), output_fields=[],
                                        search_params={"metric_type": "IP"})[0]
        except Exception as exc:  # noqa: BLE001 - pymilvus raises several types; all mean "not now"
            raise MilvusError(f"Milvus search failed: {exc}") from None
        rows = np.array([hit["row"] for hit in found], dtype=np.int64)
        scores = np.array([hit["distance"] for hit in found], dtype=np.float32)
        below = bool(len(scores)) and float(scores[-1]) < min_score  # best first: none after it passes either
        keep = scores >= min_score
        if where.rows is not None and len(rows):
            keep &= where.rows[rows]
        rows, scores = rows[keep][:k], scores[keep][:k]
        # fewer rows than asked: Milvus has no more that pass the filter
        return Candidates(rows, scores, exhausted=len(found) < limit or below)

    def vector(self, row: int) -> np.ndarray:
        try:
            found = self._client.query(self._collection, filter=f"row == {int(row)}", output_fields=["vector"])
        except Exception as exc:  # noqa: BLE001 - pymilvus raises several types; all mean "not now"
            raise MilvusError(f"Milvus query failed: {exc}") from None
        if not found:
            raise MilvusError(f"row {row} is missing from {self._collection}")
        return np.asarray(found[0]["vector"], dtype=np.float32)

    def close(self) -> None:
        """Drop this collection after the grace period (the version is no longer served)."""
        timer = threading.Timer(self._settings.drop_grace_s, self._drop)
        timer.daemon = True
        timer.start()

    def _drop(self) -> None:
        try:
            aliases = self._client.list_aliases(self._collection).get("aliases", [])
            if self._settings.alias not in aliases:  # never drop what the alias points at
                self._client.drop_collection(self._collection)
                log.info("dropped Milvus collection %s", self._collection)
        except Exception as exc:  # noqa: BLE001 - a leftover collection is harmless; say so
            log.warning("could not drop Milvus collection %s: %s", self._collection, exc)


def _expression(where: Filter) -> str:
    parts = []
    if where.categories is not None:
        parts.append(f"code in {sorted(int(c) for c in where.categories)}")
    if where.exclude_categories:
        parts.append(f"code not in {sorted(int(c) for c in where.exclude_categories)}")
    if where.exclude_rows:
        parts.append(f"row not in {sorted(int(r) for r in where.exclude_rows)}")
    if where.price is not None:
        low, high = where.price
        parts.append("price is not null")  # an unknown price is in no range
        if low is not None:
            parts.append(f"price >= {_number(low)}")
        if high is not None:
            parts.append(f"price <= {_number(high)}")
    return " and ".join(parts)


def _number(value: float) -> str:
    """A finite price as a Milvus literal, from a float only (never text a request supplied)."""
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"a price bound must be finite, not {value!r}")
    return repr(number)


def _alias_holder(client, alias: str) -> str | None:
    """The collection ``alias`` points at, or None."""
    for name in client.list_collections():
        if alias in client.list_aliases(name).get("aliases", []):
            return name
    return None


def _complete(client, name: str, count: int) -> bool:
    """Whether ``name`` exists with every row (a fill that died midway leaves fewer) and today's fields (a
    collection made before prices were stored is dropped, to be filled again)."""
    if not client.has_collection(name):
        return False
    fields = {f["name"] for f in client.describe_collection(name).get("fields", [])}
    if not FIELDS <= fields:
        log.warning("Milvus collection %s lacks %s: filling it again", name, ", ".join(sorted(FIELDS - fields)))
        client.drop_collection(name)
        return False
    client.load_collection(name)
    rows = client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
    return int(rows) == count


#: The fields of a version's collection.
FIELDS = frozenset({"row", "code", "price", "vector"})


def _fill(client, name: str, vectors: np.ndarray, codes: np.ndarray, prices: np.ndarray, index_type: str) -> None:
    """Create ``name`` (if missing) and upsert every row: idempotent, so two gateways filling the same
    version at once, or a fill resumed after a crash, end with the same collection."""
    pymilvus = _pymilvus()
    DataType = pymilvus.DataType  # noqa: N806

    if not client.has_collection(name):
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.INT64)
        schema.add_field("price", DataType.DOUBLE, nullable=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="IP")
        client.create_collection(name, schema=schema, index_params=params)
    for start in range(0, len(vectors), BATCH):
        block = np.asarray(vectors[start:start + BATCH], dtype=np.float32)
        client.upsert(name, [{"row": start + i, "code": int(codes[start + i]), "price": _price(prices[start + i]),
                              "vector": v.tolist()} for i, v in enumerate(block)])
    client.flush(name)
    log.info("filled Milvus collection %s with %d rows", name, len(vectors))


def _price(value: float) -> float | None:
    """A row's price for Milvus: null when unknown (NaN)."""
    return float(value) if np.isfinite(value) else None

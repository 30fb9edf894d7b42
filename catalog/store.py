"""Index storage: immutable versions plus one small pointer object, written last.

Layout under the index root (a local folder; S3 uses the same keys)::

    CURRENT                          {"version": "..."}   <- readers follow only this
    versions/<version>/manifest.json schema, backbone id, dim, count, checksums of the files below
    versions/<version>/embeddings.npy float32 (count, dim), L2-normalised rows
    versions/<version>/products.jsonl one product per line, same order as the matrix rows
    versions/<version>/errors.csv     rows left out of the index, and why

A build writes its version completely, then replaces CURRENT atomically, so a crashed or concurrent
build never exposes a partial index.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
POINTER = "CURRENT"
EMBEDDINGS = "embeddings.npy"
PRODUCTS = "products.jsonl"
ERRORS = "errors.csv"
MANIFEST = "manifest.json"


class IndexNotFound(FileNotFoundError):
    """No published index at this location."""


class CorruptIndex(ValueError):
    """A version whose files do not match its manifest."""


class LocalStore:
    """Keys are relative paths under a folder; every write is atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise IndexNotFound(f"{self.root / key} not found") from None


def open_store(uri: str | Path) -> LocalStore:
    """The store for an index location."""
    return LocalStore(Path(uri))


@dataclass
class IndexData:
    """A loaded (or about to be written) index version."""

    embeddings: np.ndarray
    products: list[dict]
    manifest: dict = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return self.manifest["backbone"]

    @property
    def version(self) -> str:
        return self.manifest["version"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version_name() -> str:
    """Sortable by creation time, unique across concurrent builds."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def write_version(store: LocalStore, index: IndexData, errors_csv: bytes, extra: dict | None = None) -> str:
    """Write all files of a new version (not yet visible to readers); return its name."""
    version = new_version_name()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(index.embeddings, dtype=np.float32), allow_pickle=False)
    files = {
        EMBEDDINGS: buf.getvalue(),
        PRODUCTS: "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in index.products).encode(),
        ERRORS: errors_csv,
    }
    for name, data in files.items():
        store.put(f"versions/{version}/{name}", data)
    n, dim = index.embeddings.shape
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **index.manifest,
        "dim": int(dim),
        "count": int(n),
        "files": {name: {"sha256": _sha(data), "bytes": len(data)} for name, data in files.items()},
        **(extra or {}),
    }
    store.put(f"versions/{version}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    index.manifest = manifest
    return version


def publish(store: LocalStore, version: str) -> None:
    """Point readers at ``version``: the single atomic step that makes a build visible."""
    manifest = json.loads(store.get(f"versions/{version}/{MANIFEST}"))
    store.put(POINTER, json.dumps({"version": version, "backbone": manifest["backbone"]}).encode())


def current_version(store: LocalStore) -> str:
    try:
        return json.loads(store.get(POINTER))["version"]
    except (ValueError, KeyError) as exc:
        raise CorruptIndex(f"{store.uri}/{POINTER} is unreadable: {exc}") from None


def read_version(store: LocalStore, version: str) -> IndexData:
    """Load a version and verify every file against the manifest's checksums."""
    manifest = json.loads(store.get(f"versions/{version}/{MANIFEST}"))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise CorruptIndex(f"version {version}: schema {manifest.get('schema_version')}, need {SCHEMA_VERSION}")
    blobs = {}
    for name in (EMBEDDINGS, PRODUCTS):
        data = store.get(f"versions/{version}/{name}")
        expected = manifest["files"][name]["sha256"]
        if _sha(data) != expected:
            raise CorruptIndex(f"version {version}: {name} checksum mismatch")
        blobs[name] = data
    embeddings = np.load(io.BytesIO(blobs[EMBEDDINGS]), allow_pickle=False)
    products = [json.loads(line) for line in blobs[PRODUCTS].decode().splitlines() if line]
    if embeddings.shape != (manifest["count"], manifest["dim"]) or len(products) != manifest["count"]:
        raise CorruptIndex(f"version {version}: shape {embeddings.shape} does not match manifest")
    return IndexData(embeddings=embeddings, products=products, manifest=manifest)


def read_current(store: LocalStore) -> IndexData:
    return read_version(store, current_version(store))

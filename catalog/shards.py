"""A build's work in shards: each shard's vectors are written to the store as soon as they are done, so a build
that dies (driver, worker or machine) starts again from its finished shards, and no process holds more than
one shard's vectors until the merge, which streams them into one memory-mapped matrix.

Layout under the index root (beside ``versions/``)::

    builds/<build>/shard-00000.npz   vectors (float32, rows) and colour histograms of the shard's kept rows
    builds/<build>/shard-00000.json  its rows, its errors, its counts and the npz's sha256; written last

``<build>`` is a digest of the catalog file, the backbone id and the shard size: re-running the same build
finds its shards; a changed catalog or model starts afresh. A shard counts as finished only when its JSON is
there and the npz matches the checksum it names; anything else read back is redone, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalog.reader import RowError
from indexstore.store import CHUNK, CorruptIndex, IndexNotFound, Store, file_sha
from modelio.colour import DESCRIPTOR

log = logging.getLogger(__name__)

#: Rows per shard: a shard's vectors are at most this many rows in memory (4,096 × 1,280 float32 = 21 MB).
SHARD_ROWS = 4096
#: The largest shard accepted (``--shard-rows``): bigger ones would hold too much of the catalog in memory.
MAX_SHARD_ROWS = 1 << 20
#: Bumped when the shard files change meaning, so older partial builds are not resumed.
SHARD_FORMAT = 1


class ShardError(ValueError):
    """A shard read back from the store is not what a build writes (it is then redone)."""


class ShardFailed(RuntimeError):
    """A shard could not be embedded on any try (e.g. its worker died every time); the build stops, its finished
    shards stay in the store for the next run."""


@dataclass
class ShardResult:
    """One shard's outcome, in its rows' order: the kept rows with their vectors and histograms, and errors."""

    rows: list[dict]
    vectors: np.ndarray  # (kept, dim) float32
    hists: np.ndarray  # (kept, HIST_SIZE) float32; zeros where the image gave none
    errors: list[RowError] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    resumed: int = 0
    downloaded: int = 0
    cache_hits: int = 0


#: The counts a shard carries, in its JSON and the build report.
COUNTS = ("embedded", "reused", "resumed", "downloaded", "cache_hits")


def build_id(catalog: Path, backbone_id: str, shard_rows: int) -> str:
    """The name of a build's shard folder: the same catalog bytes, backbone, colour descriptor and shard size give
    the same one (a build never resumes shards whose histograms another descriptor wrote)."""
    digest = hashlib.sha256(f"{SHARD_FORMAT}\n{backbone_id}\n{DESCRIPTOR}\n{shard_rows}\n".encode())
    with open(catalog, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def check_shard_rows(shard_rows: int) -> int:
    """``shard_rows`` when it is a shard size a build accepts (1 to ``MAX_SHARD_ROWS``), else ``ValueError``."""
    if not 1 <= shard_rows <= MAX_SHARD_ROWS:
        raise ValueError(f"shard_rows must be 1 to {MAX_SHARD_ROWS:,}, got {shard_rows}")
    return shard_rows


@dataclass(frozen=True)
class PendingShard:
    """One shard's catalog rows, spooled to a local JSON-lines file when the catalog was read: the driver never
    holds the whole catalog, and reads a shard's rows back only to hand them to whoever embeds them."""

    index: int
    count: int
    path: Path

    def rows(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


def spool(rows: Iterable[dict], folder: Path, shard_rows: int) -> list[PendingShard]:
    """Cut ``rows`` (a stream) into shards of ``shard_rows`` (the last one may be shorter), each written to
    ``folder/rows-NNNNN.jsonl`` as it fills."""
    check_shard_rows(shard_rows)
    shards: list[PendingShard] = []
    batch: list[dict] = []

    def flush() -> None:
        path = folder / f"rows-{len(shards):05d}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in batch), encoding="utf-8")
        shards.append(PendingShard(len(shards), len(batch), path))
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) == shard_rows:
            flush()
    if batch:
        flush()
    return shards


#: A build's folder name (``build_id``): 24 hex digits, so a name read from a listing never becomes another path.
BUILD_NAME = re.compile(r"^[0-9a-f]{24}$")


def list_builds(store: Store) -> list[str]:
    """The builds that have shards in ``store``: running, killed (a re-run resumes them), or abandoned (their
    catalog, backbone or shard size changed, so no re-run will; ``manage_index.py URI builds --delete``)."""
    return [name for name in store.list_folders("builds") if BUILD_NAME.match(name)]


class ShardStore:
    """The shards of one build in an index store."""

    def __init__(self, store: Store, build: str) -> None:
        self.store = store
        self.prefix = f"builds/{build}"

    def _key(self, shard: int, ext: str) -> str:
        return f"{self.prefix}/shard-{shard:05d}.{ext}"

    def save(self, shard: int, result: ShardResult) -> None:
        """Write the shard's arrays, then its JSON (the mark that it is finished)."""
        with tempfile.TemporaryDirectory(prefix="photo-shard-") as tmp:
            path = Path(tmp) / "shard.npz"
            np.savez(path, vectors=np.ascontiguousarray(result.vectors, np.float32),
                     hists=np.ascontiguousarray(result.hists, np.float32))
            self.store.put_file(self._key(shard, "npz"), path)
            sha = file_sha(path)
        meta = {"format": SHARD_FORMAT, "npz_sha256": sha, "dim": int(result.vectors.shape[1]),
                "rows": result.rows, "errors": [e.as_dict() for e in result.errors],
                "counts": {k: getattr(result, k) for k in COUNTS}}
        self.store.put(self._key(shard, "json"), json.dumps(meta, ensure_ascii=False).encode())

    def finished(self, shard: int) -> tuple[int, int] | None:
        """(kept rows, dim) of a finished shard from its JSON alone, or None when it is not finished or its JSON
        is unreadable (it is then redone). The arrays are checked when the shard is loaded."""
        try:
            meta = json.loads(self.store.get(self._key(shard, "json")))
            rows, dim = meta["rows"], meta["dim"]
            if meta["format"] != SHARD_FORMAT or not isinstance(rows, list) or not isinstance(dim, int):
                raise ShardError("not a shard of this format")
        except IndexNotFound:
            return None
        except (ValueError, KeyError, TypeError, CorruptIndex) as exc:
            log.warning("shard %d of %s is unreadable, redoing it: %s", shard, self.prefix, exc)
            return None
        return len(rows), dim

    def load(self, shard: int) -> ShardResult:
        """A finished shard, checked; ``ShardError`` (and its JSON deleted, so the next run redoes it) if it is
        not what a build writes."""
        try:
            return _parse(json.loads(self.store.get(self._key(shard, "json"))),
                          self.store.get(self._key(shard, "npz")))
        except (ValueError, IndexNotFound, CorruptIndex) as exc:
            self.store.delete(self._key(shard, "json"))
            raise ShardError(f"shard {shard} of {self.prefix} is unreadable ({exc}); it is redone on the next "
                             "run") from None

    def clear(self) -> None:
        """Delete the build's shards (after its version is published)."""
        self.store.delete_tree(self.prefix)


def _parse(meta: object, data: bytes) -> ShardResult:
    """A shard's JSON and npz as read back: checked before anything of it is used."""
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise ShardError("not a shard of this format")
    if hashlib.sha256(data).hexdigest() != meta.get("npz_sha256"):
        raise ShardError("checksum mismatch")
    rows, errors, counts = meta.get("rows"), meta.get("errors"), meta.get("counts")
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows) and isinstance(errors, list)
            and isinstance(counts, dict)):
        raise ShardError("malformed rows, errors or counts")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            vectors, hists = npz["vectors"], npz["hists"]
        parsed_errors = [_row_error(e) for e in errors]
        numbers = {k: int(counts[k]) for k in COUNTS}
    except (KeyError, TypeError, OSError) as exc:
        raise ShardError(f"malformed: {exc}") from None
    if (vectors.dtype != np.float32 or hists.dtype != np.float32 or vectors.ndim != 2 or hists.ndim != 2
            or len(vectors) != len(rows) or len(hists) != len(rows)):
        raise ShardError("arrays do not match the rows")
    if vectors.shape[1] != meta.get("dim"):
        raise ShardError("the vectors' width is not the shard's dim")
    return ShardResult(rows, vectors, hists, parsed_errors, **numbers)


def _row_error(raw: object) -> RowError:
    if not (isinstance(raw, dict) and isinstance(raw.get("line"), int)
            and all(isinstance(raw.get(k), str) for k in ("id", "image_url", "stage", "error"))):
        raise ShardError("malformed row error")
    return RowError(raw["line"], raw["id"], raw["image_url"], raw["stage"], raw["error"])

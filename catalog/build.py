"""Catalog → index: read rows, fetch images (cached, concurrent), embed in batches, write, publish.

Never aborts on a bad row: each one lands in the report and in ``errors.csv``. Vectors of images
whose bytes are unchanged since the published version (same sha256, same backbone) are reused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from catalog.calibration import fit_calibration
from catalog.fetch import FetchError, ImageSource
from catalog.reader import RowError, read_catalog
from catalog.store import (
    ERRORS,
    WHITENING,
    IndexData,
    IndexNotFound,
    StoreUnavailable,
    open_store,
    prune,
    publish,
    read_current,
    write_version,
)
from catalog.vector_cache import VectorCache
from catalog.whitening import fit_whitening
from handlers.protocol import BatchEmbedder

log = logging.getLogger(__name__)

#: PCA-whitening fitted on the catalog (see docs/QUALITY.md for how these were chosen).
WHITENING_SETTINGS = {"dims": 512, "power": 0.5, "shrink": 0.1}
#: Below this many products the covariance is too poorly estimated to whiten with.
MIN_WHITEN = 2000


@dataclass
class BuildReport:
    version: str
    output: str
    backbone: str
    indexed: int
    errors: list[RowError] = field(default_factory=list)
    downloaded: int = 0
    cache_hits: int = 0
    embedded: int = 0
    reused: int = 0
    resumed: int = 0

    @property
    def left_out(self) -> list[RowError]:
        return [e for e in self.errors if e.stage != "warning"]

    def summary(self) -> str:
        warnings = len(self.errors) - len(self.left_out)
        lines = [
            f"index {self.output} version {self.version} ({self.backbone})",
            f"  indexed {self.indexed} products: {self.embedded} embedded, {self.reused} reused from "
            f"the previous version, {self.resumed} from the vector cache; {self.downloaded} downloaded, "
            f"{self.cache_hits} from cache",
            f"  {len(self.left_out)} row(s) left out, {warnings} warning(s)" + (":" if self.errors else ""),
        ]
        lines += [f"    line {e.line} id={e.id!r} [{e.stage}] {e.error}" for e in self.errors[:50]]
        if len(self.errors) > 50:
            lines.append(f"    ... {len(self.errors) - 50} more in errors.csv")
        return "\n".join(lines)


def _inert(value: object) -> object:
    """Neutralise spreadsheet formulas (=, +, -, @ ...) in report cells that people open in Excel."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def errors_csv(errors: list[RowError]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["line", "id", "image_url", "stage", "error"])
    writer.writeheader()
    for err in errors:
        writer.writerow({k: _inert(v) for k, v in err.as_dict().items()})
    return buf.getvalue().encode()


def _previous_vectors(store, backbone: str) -> dict[str, np.ndarray]:
    """image sha256 → vector from the published version, if it was built by the same backbone."""
    try:
        prev = read_current(store)
    except IndexNotFound:
        return {}
    except StoreUnavailable:
        raise  # an unreachable store would fail the publish too: stop before any work
    except Exception as exc:  # noqa: BLE001 - an unreadable old version only costs re-embedding
        log.warning("previous version not reusable: %s", exc)
        return {}
    if prev.backbone != backbone:
        log.info("previous version used %s, re-embedding everything with %s", prev.backbone, backbone)
        return {}
    return {p["image_sha256"]: prev.embeddings[i] for i, p in enumerate(prev.products) if "image_sha256" in p}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_index(
    catalog: Path,
    output: str | Path,
    embedder: BatchEmbedder,
    cache_dir: Path,
    workers: int = 8,
    chunk_size: int = 64,
    refresh_cache: bool = False,
    progress: bool = True,
    keep: int = 5,
    whiten_min: int = MIN_WHITEN,
    allow_private_hosts: bool = False,
    vector_cache: Path | None = None,
) -> BuildReport:
    """Build and publish a new index version for ``catalog`` at ``output``.

    Catalogs with at least ``whiten_min`` products get a PCA-whitening fitted on them (a value above
    the catalog size disables it; see docs/QUALITY.md)."""
    catalog = Path(catalog).resolve()
    rows, errors = read_catalog(catalog)
    store = open_store(output)
    backbone = embedder.model_id
    previous = _previous_vectors(store, backbone)
    source = ImageSource(catalog.parent, cache_dir, refresh=refresh_cache, allow_private=allow_private_hosts)
    finished = VectorCache(vector_cache or Path(cache_dir).parent / "vectors", backbone)
    kept: list[dict] = []
    vectors: list[np.ndarray] = []
    embedded = reused = resumed = 0

    def fetch(row: dict) -> bytes | FetchError:
        try:
            return source.fetch(row["image_url"])
        except FetchError as exc:
            return exc

    bar = tqdm(total=len(rows), unit="img", desc="indexing", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Chunked so memory stays bounded on large catalogs: fetch a chunk concurrently, then embed it.
        for chunk in _chunks(rows, chunk_size):
            to_embed: list[tuple[dict, bytes, str]] = []
            for row, got in zip(chunk, pool.map(fetch, chunk), strict=True):
                if isinstance(got, FetchError):
                    errors.append(RowError(row["line"], row["id"], row["image_url"], "fetch", str(got)))
                    continue
                row["image_sha256"] = digest = hashlib.sha256(got).hexdigest()
                if digest in previous:
                    kept.append(row)
                    vectors.append(previous[digest])
                    reused += 1
                elif (done := finished.get(digest)) is not None:  # embedded by an interrupted build
                    kept.append(row)
                    vectors.append(done)
                    resumed += 1
                else:
                    to_embed.append((row, got, digest))
            if to_embed:
                results = embedder.embed_bytes([blob for _, blob, _ in to_embed])
                for (row, _, digest), res in zip(to_embed, results, strict=True):
                    if res.error is not None:
                        errors.append(RowError(row["line"], row["id"], row["image_url"], "decode", res.error))
                        continue
                    finished.put(digest, res.vector)
                    kept.append(row)
                    vectors.append(res.vector)
                    embedded += 1
            bar.update(len(chunk))
    bar.close()

    errors.sort(key=lambda e: e.line)
    dim = len(vectors[0]) if vectors else 0
    matrix = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    manifest = {
        "backbone": backbone,
        "catalog": {"path": str(catalog), "root": str(catalog.parent)},
        "build": {"rows": len(rows) + sum(e.stage == "catalog" for e in errors),
                  "errors": sum(e.stage != "warning" for e in errors),
                  "warnings": sum(e.stage == "warning" for e in errors),
                  "embedded": embedded, "reused": reused, "resumed": resumed},
    }
    index = IndexData(embeddings=matrix, products=kept, manifest=manifest)
    extra = {ERRORS: errors_csv(errors)}
    whitening = fit_whitening(matrix, **WHITENING_SETTINGS) if len(matrix) >= max(whiten_min, 2) else None
    if whitening is not None:
        extra[WHITENING] = whitening.to_bytes()
    searchable = whitening.apply(matrix) if whitening is not None else matrix
    manifest["whitening"] = WHITENING_SETTINGS if whitening is not None else None
    manifest["calibration"] = fit_calibration(searchable, [str(p.get("category", "")) for p in kept])
    version = write_version(store, index, extra)
    publish(store, version)
    pruned = prune(store, keep)
    if pruned:
        log.info("removed %d old version(s): %s", len(pruned), ", ".join(pruned))
    return BuildReport(version, store.uri, backbone, len(kept), errors, source.downloads, source.cache_hits,
                       embedded, reused, resumed)

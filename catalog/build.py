"""Catalog → index: read rows, fetch images (cached, concurrent), embed in batches, write, publish.

Never aborts on a bad row: each one lands in the report and in ``errors.csv``. Vectors of images
whose bytes are unchanged since the published version (same sha256, same backbone) are reused.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import logging
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from catalog.fetch import FetchError, ImageSource
from catalog.local_features import manifest_entry as local_manifest_entry
from catalog.local_features import write_local_features
from catalog.previous import PreviousVectors, previous_vectors
from catalog.products import ProductTable, number_of
from catalog.reader import RowError, iter_catalog
from catalog.shards import (
    COUNTS,
    SHARD_ROWS,
    PendingShard,
    ShardError,
    ShardResult,
    ShardStore,
    build_id,
    check_shard_rows,
    spool,
)
from catalog.vector_cache import VectorCache
from indexstore.ann import AnnSettings, write_ann
from indexstore.store import (
    ANN,
    APPEARANCE,
    APPEARANCE_VECTORS,
    ERRORS,
    PROTOTYPES,
    WHITENING,
    IndexData,
    Store,
    open_store,
    prune,
    publish,
    write_and_publish,
    write_version,
)
from modelio.imaging import DEFAULT_MAX_PIXELS
from modelio.protocol import BatchEmbedder
from ranking.appearance import HIST_SIZE, colour_column, colour_histogram_or_none, fit_appearance
from ranking.calibration import Calibration, fit_calibration
from ranking.category_first import Grouping
from ranking.no_match import fit_no_match
from ranking.prototypes import PrototypeSettings, fit_prototypes
from ranking.prototypes import to_bytes as prototypes_bytes
from ranking.whitening import Transformed, Whitening, fit_whitening
from safeio.paths import printable, redact_url
from safeio.rowfile import RowFile, RowWriter, blocks, take
from search.milvus import MilvusSettings

log = logging.getLogger(__name__)

#: PCA-whitening fitted on the catalog (see docs/QUALITY.md for how these were chosen).
WHITENING_SETTINGS = {"dims": 512, "power": 0.5, "shrink": 0.1}
PROTOTYPE_SETTINGS = PrototypeSettings()
#: Below this many products the covariance is too poorly estimated to whiten with.
MIN_WHITEN = 2000
#: Rows the whitening and the appearance space are fitted on, at most (a seeded sample of bigger catalogs):
#: 200,000 × 1,280 float64 is 2 GB, whatever the catalog's size.
FIT_SAMPLE = 200_000
#: When a build writes the ANN graph (``build_index(ann=...)``).
ANN_CHOICES = ("auto", "always", "never")


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
    shards: int = 0
    shards_resumed: int = 0

    @property
    def left_out(self) -> list[RowError]:
        return [e for e in self.errors if e.stage != "warning"]

    def summary(self) -> str:
        warnings = len(self.errors) - len(self.left_out)
        lines = [
            f"index {self.output} version {self.version} ({self.backbone})",
            f"  indexed {self.indexed} products: {self.embedded} embedded, {self.reused} reused from "
            f"the previous version, {self.resumed} from the vector cache; {self.downloaded} downloaded, "
            f"{self.cache_hits} from cache; {self.shards} shard(s), {self.shards_resumed} finished by an "
            "earlier run",
            f"  {len(self.left_out)} row(s) left out, {warnings} warning(s)" + (":" if self.errors else ""),
        ]
        lines += [f"    line {e.line} id={printable(repr(e.id))} [{e.stage}] {printable(e.error)}"
                  for e in self.errors[:50]]
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
        row = {**err.as_dict(), "image_url": redact_url(err.image_url)}
        writer.writerow({k: _inert(v) for k, v in row.items()})
    return buf.getvalue().encode()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Collected:
    """The vectors of a catalog, in row order, with what happened to the rows that have none."""

    rows: list[dict] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    resumed: int = 0

    hists: list[np.ndarray | None] = field(default_factory=list)  # colour histogram per row (None: none)

    def keep(self, row: dict, vector: np.ndarray, hist: np.ndarray | None = None) -> None:
        self.rows.append(row)
        self.vectors.append(vector)
        self.hists.append(hist)

    def extend(self, other: Collected) -> None:
        self.rows += other.rows
        self.vectors += other.vectors
        self.hists += other.hists
        self.errors += other.errors
        self.embedded += other.embedded
        self.reused += other.reused
        self.resumed += other.resumed

    def matrix(self) -> np.ndarray:
        return np.vstack(self.vectors).astype(np.float32) if self.vectors else np.zeros((0, 0), np.float32)

    def shard_result(self, downloaded: int = 0, cache_hits: int = 0) -> ShardResult:
        """The shard these rows make (a row whose image gave no histogram gets zeros)."""
        hists = [np.zeros(HIST_SIZE) if h is None else h for h in self.hists]  # float32 once stacked
        return ShardResult(self.rows, self.matrix(), np.vstack(hists).astype(np.float32) if hists else
                           np.zeros((0, HIST_SIZE), np.float32), self.errors, self.embedded, self.reused,
                           self.resumed, downloaded, cache_hits)


@dataclass(frozen=True)
class VectorSources:
    """Where a row's vector can come from before the model is asked: the published version, or the
    vector cache of an interrupted build."""

    previous: PreviousVectors
    finished: VectorCache


def _collect_chunk(chunk: list[dict], fetched: list[Future], embedder: BatchEmbedder,
                   known: VectorSources) -> Collected:
    """One chunk: wait for its images, reuse what is known, embed the rest. The colour histogram comes from
    the embedder's own decode; a photo is decoded here only when none came with its vector."""
    out = Collected()
    to_embed: list[tuple[dict, bytes, str]] = []
    for row, future in zip(chunk, fetched, strict=True):
        data = future.result()
        if isinstance(data, FetchError):
            out.errors.append(RowError(row["line"], row["id"], row["image_url"], "fetch", str(data)))
            continue
        row["image_sha256"] = digest = hashlib.sha256(data).hexdigest()
        if (reused := known.previous.get(digest)) is not None:
            out.keep(row, reused, _colour_here(data))
            out.reused += 1
        elif (done := known.finished.get(digest)) is not None:  # embedded by an interrupted build
            colour = known.finished.get_colour(digest)
            out.keep(row, done, colour if colour is not None else _colour_here(data))
            out.resumed += 1
        else:
            to_embed.append((row, data, digest))
    results = embedder.embed_bytes([blob for _, blob, _ in to_embed], colour=True) if to_embed else []
    for (row, data, digest), res in zip(to_embed, results, strict=True):
        if res.error is not None:
            out.errors.append(RowError(row["line"], row["id"], row["image_url"], "decode", res.error))
            continue
        colour = res.colour if res.colour is not None else _colour_here(data)
        known.finished.put(digest, res.vector, colour)
        out.keep(row, res.vector, colour)
        out.embedded += 1
    return out


def _colour_here(data: bytes) -> np.ndarray | None:
    """The colour histogram decoded in the build itself (a reused vector, or an embedder that gave none)."""
    return colour_histogram_or_none(data, DEFAULT_MAX_PIXELS)


def collect_vectors(rows: list[dict], source: ImageSource, embedder: BatchEmbedder, known: VectorSources,
                    workers: int = 8, chunk_size: int = 64, progress: bool = True) -> Collected:
    """Fetch every row's image and get its vector, in row order; bad rows become errors.

    A pipeline with bounded memory: the images of the next chunks download while the current ones are
    embedded (three chunks in the model at once, so it never waits for the network or a chunk's tail)."""

    def fetch(row: dict) -> bytes | FetchError:
        try:
            return source.fetch(row["image_url"])
        except FetchError as exc:
            return exc

    out = Collected()
    bar = tqdm(total=len(rows), unit="img", desc="indexing", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as fetchers, ThreadPoolExecutor(max_workers=3) as embedders:
        pending: deque[tuple[int, Future]] = deque()
        for chunk in _chunks(rows, chunk_size):
            fetched = [fetchers.submit(fetch, row) for row in chunk]
            pending.append((len(chunk), embedders.submit(_collect_chunk, chunk, fetched, embedder, known)))
            while len(pending) > 3:
                size, done = pending.popleft()
                out.extend(done.result())
                bar.update(size)
        for size, done in pending:
            out.extend(done.result())
            bar.update(size)
    bar.close()
    return out


@dataclass
class Merged:
    """All of a build's vectors, in row order: files in a work folder read a block at a time (``merge_shards``),
    or arrays in memory (``Merged.of``)."""

    rows: Sequence[dict]
    embeddings: np.ndarray | RowFile
    hists: np.ndarray | RowFile
    errors: list[RowError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: list[dict], embeddings: np.ndarray, hists: np.ndarray | None = None) -> Merged:
        hists = np.zeros((len(rows), HIST_SIZE), np.float32) if hists is None else hists
        return cls(rows, np.asarray(embeddings, np.float32), hists)


def merge_shards(shards: ShardStore, count: int, folder: Path) -> Merged:
    """The ``count`` finished shards of a build appended, one at a time, to files under ``folder`` (the matrix,
    the histograms, the products): never more than one shard's vectors in memory, and none of the matrix's
    pages kept mapped (``safeio.rowfile``)."""
    sizes = [shards.finished(i) for i in range(count)]
    if any(size is None for size in sizes):
        raise ShardError(f"{shards.prefix}: shard {sizes.index(None)} is not finished")
    kept = sum(n for n, _ in sizes)
    dim = max((d for n, d in sizes if n), default=0)
    embeddings = RowWriter(folder / "embeddings.npy", kept, dim)
    hists = RowWriter(folder / "hists.npy", kept, HIST_SIZE)
    errors: list[RowError] = []
    counts = dict.fromkeys(COUNTS, 0)
    with embeddings, hists, open(folder / "products.jsonl", "wb") as products:  # UTF-8 whatever the locale
        for shard in range(count):
            result = shards.load(shard)
            n = len(result.rows)
            if n and (result.vectors.shape[1] != dim or result.hists.shape[1] != HIST_SIZE):
                raise ShardError(f"{shards.prefix}: shard {shard} has vectors of another width")
            if n:  # a shard whose every row failed has no vectors (and no width)
                embeddings.append(result.vectors)
                hists.append(result.hists)
            products.writelines((json.dumps(row, ensure_ascii=False) + "\n").encode() for row in result.rows)
            errors += result.errors
            for key in COUNTS:
                counts[key] += getattr(result, key)
    rows = ProductTable.open(folder / "products.jsonl") if kept else []
    return Merged(rows, embeddings.close(), hists.close(), errors, counts)


def fit_rows(count: int, limit: int = FIT_SAMPLE) -> np.ndarray:
    """The rows a catalog-fitted transform is fitted on: all ``count`` when there are at most ``limit``, else a
    seeded sample of ``limit`` (in row order), so the fit's memory does not grow with the catalog."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def finish_version(merged: Merged, catalog: Path, backbone_id: str, rows_read: int, folder: Path,
                   whiten_min: int = MIN_WHITEN, ann: AnnSettings | None = None
                   ) -> tuple[IndexData, dict[str, bytes | Path]]:
    """The index version for merged vectors: manifest, the catalog-fitted whitening and calibration (fitted on
    samples of at most ``FIT_SAMPLE`` rows), the error report, and the ANN graph when ``ann`` is given. Not
    written anywhere yet: the big files (search-space matrix, appearance vectors, graph) are in ``folder``, each
    computed a block of rows at a time, and the returned files name them by path."""
    errors = merged.errors
    counts = {k: merged.counts.get(k, 0) for k in ("embedded", "reused", "resumed")}
    manifest = {
        "backbone": backbone_id,
        "catalog": {"path": str(catalog), "root": str(catalog.parent)},
        "build": {"rows": rows_read + sum(e.stage == "catalog" for e in errors),
                  "errors": sum(e.stage != "warning" for e in errors),
                  "warnings": sum(e.stage == "warning" for e in errors), **counts},
    }
    extra: dict[str, bytes | Path] = {ERRORS: errors_csv(errors)}
    count = len(merged.embeddings)
    whitening = (fit_whitening(take(merged.embeddings, fit_rows(count)), **WHITENING_SETTINGS)
                 if count >= max(whiten_min, 2) else None)
    if whitening is not None:
        extra[WHITENING] = whitening.to_bytes()
    manifest["prototypes"] = _prototypes(merged.embeddings, extra) if count else None
    searchable = _search_space(merged.embeddings, whitening, folder / "search.npy")
    manifest["whitening"] = WHITENING_SETTINGS if whitening is not None else None
    labels = [str(p.get("category", "")) for p in merged.rows]
    manifest["calibration"] = fit_calibration(searchable, labels)
    manifest["no_match"] = fit_no_match(searchable, labels, Calibration.from_manifest(manifest).percent)
    del labels
    manifest["appearance"] = _appearance(merged, searchable, extra, folder) if count else None
    manifest["ann"] = None
    if ann is not None and count:
        if isinstance(merged.rows, ProductTable):
            merged.rows.release()
        return_freed_memory()
        extra[ANN] = write_ann(searchable, folder / ANN, ann)
        manifest["ann"] = {"library": "faiss", "index": "HNSWFlat", "metric": "inner_product",
                           "connectivity": ann.connectivity, "expansion_add": ann.expansion_add}
    return IndexData(embeddings=merged.embeddings, products=merged.rows, manifest=manifest), extra


def _prototypes(embeddings: np.ndarray | RowFile, extra: dict[str, bytes | Path]) -> dict:
    """The catalog's prototypes (ranking/prototypes.py), fitted on a sample of rows; their manifest entry."""
    rows = fit_rows(len(embeddings), PROTOTYPE_SETTINGS.sample)
    prototypes = fit_prototypes(take(embeddings, rows), PROTOTYPE_SETTINGS)
    extra[PROTOTYPES] = prototypes_bytes(prototypes)
    return {"count": len(prototypes), "fitted_on": len(rows), "iterations": PROTOTYPE_SETTINGS.iterations}


def return_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system before the graph, the build's biggest step: glibc keeps
    freed blocks below its mmap threshold (up to 32 MB, e.g. the 16,384-row blocks) for reuse, and the graph
    cannot reuse them. Nothing to do where the C library has no ``malloc_trim`` (musl, macOS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("no malloc_trim here: freed heap pages stay with the process")


def _search_space(matrix: np.ndarray | RowFile, whitening: Whitening | None, path: Path) -> np.ndarray | RowFile:
    """The search-space rows: the matrix itself when not whitened, else the whitened rows written to ``path``
    a block at a time."""
    if whitening is None:
        return matrix
    with RowWriter(path, len(matrix), whitening.projection.shape[1]) as out:
        for _, block in blocks(matrix):
            out.append(whitening.apply(block))
    return out.close()


def _appearance(merged: Merged, searchable: np.ndarray | RowFile, extra: dict[str, bytes | Path],
                folder: Path) -> dict:
    """Fit the appearance space on (a sample of) the catalog and store each row's appearance vector (a block
    at a time, into ``folder``); the manifest's entry."""
    column = colour_column(merged.rows)
    colours = [str(p.get(column) or "").strip() for p in merged.rows] if column else [""] * len(merged.hists)
    fit = fit_rows(len(merged.hists))
    space, info = fit_appearance(take(merged.hists, fit), take(searchable, fit), [colours[i] for i in fit])
    out: RowWriter | None = None
    for (start, hists), (_, search) in zip(blocks(merged.hists), blocks(searchable), strict=True):
        vectors = space.catalog_vectors(hists, search, colours[start:start + len(hists)])
        out = out or RowWriter(folder / APPEARANCE_VECTORS, len(merged.hists), vectors.shape[1])
        out.append(vectors)
    extra[APPEARANCE], extra[APPEARANCE_VECTORS] = space.to_bytes(), out.close().path
    return info | {"column": column}


def fill_milvus(settings: MilvusSettings, index: IndexData) -> None:
    """Fill the Milvus collection of a written (not yet published) version: its search-space rows, category codes
    and prices, derived as the gateway derives them (``Grouping.from_labels`` over the calibrated percent, prices
    by ``number_of``), so the gateway serves the collection without reading the matrix."""
    from search.milvus import MilvusSearch

    labels = [str(p.get("category", "")) for p in index.products]
    grouping = Grouping.from_labels(labels, Calibration.from_manifest(index.manifest).percent)
    prices = np.array([number_of(p.get("price")) for p in index.products])  # float64: number_of gives floats
    MilvusSearch.fill(settings, index.version, Transformed(index.embeddings, index.whitening()), grouping.codes,
                      prices)


def _write_fill_publish(store: Store, index: IndexData, extra: dict[str, bytes], keep: int,
                        milvus: MilvusSettings | None) -> tuple[str, list[str]]:
    """Every file of the version, then its Milvus collection (when ``milvus``), then the pointer, then pruning:
    dying at any step leaves the previous version served, and a re-run fills the collection again."""
    if milvus is None:
        return write_and_publish(store, index, extra, keep)
    version = write_version(store, index, extra)
    fill_milvus(milvus, index)
    publish(store, version)
    return version, prune(store, keep)


@dataclass(frozen=True)
class ShardJob:
    """What every shard of one build shares: plain values, so a Ray task receives it whole."""

    output: str  # the index store's location
    build: str  # the build's shard folder (``build_id``)
    catalog_root: str
    cache_dir: str
    vector_cache: str
    backbone_id: str
    workers: int = 8
    chunk_size: int = 64
    refresh_cache: bool = False
    allow_private: bool = False


def embed_shard(job: ShardJob, shard: int, rows: list[dict], embedder: BatchEmbedder,
                previous: PreviousVectors) -> dict[str, int]:
    """One shard, start to end, wherever it runs: fetch its images, reuse known vectors, embed the rest, and
    write the shard to the store (its JSON last). Returns its counts."""
    source = ImageSource(Path(job.catalog_root), Path(job.cache_dir), refresh=job.refresh_cache,
                         allow_private=job.allow_private)
    known = VectorSources(previous, VectorCache(Path(job.vector_cache), job.backbone_id))
    collected = collect_vectors(rows, source, embedder, known, job.workers, job.chunk_size, progress=False)
    result = collected.shard_result(source.downloads, source.cache_hits)
    ShardStore(open_store(job.output), job.build).save(shard, result)
    return {key: getattr(result, key) for key in COUNTS}


class LocalEngine:
    """Shards one after another in this process (the default: small and medium catalogs)."""

    def __init__(self, embedder: BatchEmbedder) -> None:
        self.embedder = embedder

    def backbone_id(self) -> str:
        return self.embedder.backbone_id

    def run(self, job: ShardJob, todo: list[PendingShard], previous: PreviousVectors,
            progress: bool = True) -> None:
        with tqdm(total=sum(shard.count for shard in todo), unit="img", desc="indexing",
                  disable=not progress) as bar:
            for shard in todo:
                embed_shard(job, shard.index, shard.rows(), self.embedder, previous)
                bar.update(shard.count)


class Engine(Protocol):
    """Runs a build's unfinished shards (``LocalEngine``; ``catalog.ray_engine.RayEngine`` on a cluster),
    reading each one's rows (``PendingShard.rows``) only when it starts it."""

    def backbone_id(self) -> str:
        """The id of the vectors its embedders make."""
        ...

    def run(self, job: ShardJob, todo: list[PendingShard], previous: PreviousVectors,
            progress: bool = True) -> None: ...


def _needed(embedder: BatchEmbedder | None) -> BatchEmbedder:
    if embedder is None:
        raise ValueError("build_index needs an embedder or an engine")
    return embedder


def build_index(
    catalog: Path,
    output: str | Path,
    embedder: BatchEmbedder | None,
    cache_dir: Path,
    workers: int = 8,
    chunk_size: int = 64,
    refresh_cache: bool = False,
    progress: bool = True,
    keep: int = 5,
    whiten_min: int = MIN_WHITEN,
    allow_private_hosts: bool = False,
    vector_cache: Path | None = None,
    ann: str = "auto",
    ann_settings: AnnSettings | None = None,
    shard_rows: int = SHARD_ROWS,
    engine: Engine | None = None,
    milvus: MilvusSettings | None = None,
    local_features: bool = False,
) -> BuildReport:
    """Build and publish a new index version for ``catalog`` at ``output``.

    The rows are embedded in shards of ``shard_rows`` by ``engine`` (default: this process), each written to
    the store when done, so a build run again after dying starts from its finished shards; then the shards are
    merged by memory map and the version written and published in one step. Catalogs with at least
    ``whiten_min`` products get a PCA-whitening fitted on them (a value above the catalog size disables it; see
    docs/QUALITY.md). ``ann``: ``always`` / ``never`` write the HNSW graph (indexstore/ann.py), ``auto`` from
    ``ann_settings.min_products`` products (``ANN_MIN_PRODUCTS``). ``embedder`` may be None when ``engine`` is
    given (its own workers embed). ``milvus``: the version's Milvus collection is filled before it is published.
    ``local_features``: each product's keypoints are stored too (catalog/local_features.py)."""
    if ann not in ANN_CHOICES:
        raise ValueError(f"ann={ann!r}: use one of {', '.join(ANN_CHOICES)}")
    ann_settings = ann_settings or AnnSettings()
    catalog = Path(catalog).resolve()
    check_shard_rows(shard_rows)
    with tempfile.TemporaryDirectory(prefix="photo-build-") as tmp:
        errors: list[RowError] = []  # the catalog is streamed into per-shard files, never held whole
        pending = spool(iter_catalog(catalog, errors), Path(tmp), shard_rows)
        store = open_store(output)
        engine = engine or LocalEngine(_needed(embedder))
        backbone_id = engine.backbone_id()
        job = ShardJob(store.uri, build_id(catalog, backbone_id, shard_rows), str(catalog.parent),
                       str(cache_dir), str(vector_cache or Path(cache_dir).parent / "vectors"), backbone_id, workers,
                       chunk_size, refresh_cache, allow_private_hosts)
        shards = ShardStore(store, job.build)
        todo = [shard for shard in pending if shards.finished(shard.index) is None]
        if len(todo) < len(pending):
            log.info("resuming build %s: %d of %d shards already done", job.build, len(pending) - len(todo),
                     len(pending))
        engine.run(job, todo, previous_vectors(store, backbone_id, Path(tmp)), progress)
        rows_read = sum(shard.count for shard in pending)
        merged = merge_shards(shards, len(pending), Path(tmp))
        merged.errors = sorted(merged.errors + errors, key=lambda e: e.line)
        with_ann = ann == "always" or (ann == "auto" and len(merged.rows) >= ann_settings.min_products)
        local = write_local_features(merged.rows, ImageSource(catalog.parent, Path(cache_dir),
                                                              allow_private=allow_private_hosts),
                                     Path(tmp), workers) if local_features and len(merged.rows) else {}
        index, extra = finish_version(merged, catalog, backbone_id, rows_read, Path(tmp), whiten_min,
                                      ann_settings if with_ann else None)
        if local:
            extra |= local
            index.manifest["local_features"] = local_manifest_entry()
        version, pruned = _write_fill_publish(store, index, extra, keep, milvus)
        report = BuildReport(version, store.uri, backbone_id, len(merged.rows), merged.errors,
                             shards=len(pending), shards_resumed=len(pending) - len(todo), **merged.counts)
        del index, merged  # the product table's memory map, before its folder goes
    shards.clear()
    if pruned:
        log.info("removed %d old version(s): %s", len(pruned), ", ".join(pruned))
    return report

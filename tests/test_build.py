"""catalog/build.py in fast unit tests: each step of a build on its own (the report, errors.csv, one chunk, the
pipeline's order, the merge, the fitted files, the write-fill-publish order) and whole builds on a few local
photos with a stand-in model. The real model's builds: tests/test_build_index.py; shards: tests/test_shards.py."""

from __future__ import annotations

import csv
import ctypes
import io
import logging
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from catalog import build as build_module
from catalog.build import (
    ANN_CHOICES,
    FIT_SAMPLE,
    MIN_WHITEN,
    WHITENING_SETTINGS,
    BuildReport,
    Collected,
    LocalEngine,
    Merged,
    ShardJob,
    VectorSources,
    build_index,
    collect_vectors,
    embed_shard,
    errors_csv,
    finish_version,
    fit_rows,
    merge_shards,
    return_freed_memory,
)
from catalog.fetch import FetchError
from catalog.previous import PreviousVectors
from catalog.reader import RowError
from catalog.shards import COUNTS, ShardError, ShardResult, ShardStore, spool
from catalog.vector_cache import VectorCache
from indexstore.ann import AnnSettings
from indexstore.store import ANN, APPEARANCE, APPEARANCE_VECTORS, ERRORS, WHITENING, open_store, read_current
from modelio.protocol import EmbedResult
from ranking.appearance import HIST_SIZE
from search.milvus import MilvusSearch, MilvusSettings
from tests.conftest import jpeg_bytes
from tests.embedders import HashEmbedder


def test_the_builds_settings():
    assert WHITENING_SETTINGS == {"dims": 512, "power": 0.5, "shrink": 0.1}
    assert (MIN_WHITEN, FIT_SAMPLE, ANN_CHOICES) == (2000, 200_000, ("auto", "always", "never"))
    job = ShardJob("out", "b", "root", "cache", "vectors", "id")
    assert (job.workers, job.chunk_size, job.refresh_cache, job.allow_private) == (8, 64, False, False)


# --------------------------------------------------------------------------- the report


def err(line: int, stage: str = "fetch", pid: str = "p", url: str = "images/a.jpg", error: str = "gone") -> RowError:
    return RowError(line, pid, url, stage, error)


def test_the_summary_names_every_count_and_each_error():
    report = BuildReport("v1", "s3://b/idx", "bb", 7, [err(2), err(5, "warning", "q\x1b[31m", error="odd\rprice")],
                         downloaded=3, cache_hits=4, embedded=5, reused=1, resumed=1, shards=2, shards_resumed=1)
    assert report.left_out == [err(2)]
    assert report.summary() == "\n".join([
        "index s3://b/idx version v1 (bb)",
        "  indexed 7 products: 5 embedded, 1 reused from the previous version, 1 from the vector cache; "
        "3 downloaded, 4 from cache; 2 shard(s), 1 finished by an earlier run",
        "  1 row(s) left out, 1 warning(s):",
        "    line 2 id='p' [fetch] gone",
        "    line 5 id='q\\x1b[31m' [warning] odd\\rprice",
    ])


def test_a_clean_builds_summary_ends_without_a_colon():
    report = BuildReport("v1", "out", "bb", 1)
    assert report.summary().splitlines()[-1] == "  0 row(s) left out, 0 warning(s)"
    assert (report.downloaded, report.cache_hits, report.embedded, report.reused, report.resumed, report.shards,
            report.shards_resumed, report.errors) == (0, 0, 0, 0, 0, 0, 0, [])


@pytest.mark.parametrize(("count", "listed", "more"), [(50, 50, None), (51, 50, "    ... 1 more in errors.csv")])
def test_the_summary_lists_fifty_errors_then_counts_the_rest(count, listed, more):
    lines = BuildReport("v", "o", "b", 0, [err(i) for i in range(count)]).summary().splitlines()
    assert sum(line.startswith("    line ") for line in lines) == listed
    assert (lines[-1] if more else None) == more
    assert lines[-1 if more is None else -2] == f"    line {listed - 1} id='p' [fetch] gone"


def read_errors(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_errors_csv_redacts_signed_urls_and_defuses_formulas():
    rows = read_errors(errors_csv([
        RowError(3, "=HYPERLINK(1)", "https://u:p@cdn.test/a.jpg?sig=secret", "fetch", "+not found"),
        RowError(4, "a=b", "images/b.jpg", "decode", "-1"),
    ]))
    assert rows == [
        {"line": "3", "id": "'=HYPERLINK(1)", "image_url": "https://cdn.test/a.jpg?…", "stage": "fetch",
         "error": "'+not found"},
        {"line": "4", "id": "a=b", "image_url": "images/b.jpg", "stage": "decode", "error": "'-1"},
    ]
    assert errors_csv([]).decode().splitlines() == ["line,id,image_url,stage,error"]


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
def test_every_formula_lead_is_defused_and_nothing_else(lead):
    assert build_module._inert(lead + "1") == "'" + lead + "1"
    assert build_module._inert("1" + lead) == "1" + lead
    assert build_module._inert("") == "" and build_module._inert(7) == 7


def test_chunks_cover_every_item_once_in_order():
    assert list(build_module._chunks(list(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    assert list(build_module._chunks(list(range(4)), 2)) == [[0, 1], [2, 3]]
    assert list(build_module._chunks([], 2)) == []


# --------------------------------------------------------------------------- one chunk


def unit(seed: int, dim: int = 4) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


class Model:
    """Answers each image with a vector, an error for b"bad", and a colour unless ``colour`` is off."""

    backbone_id = "test-model"

    def __init__(self, colour: bool = True) -> None:
        self.colour, self.asked = colour, []

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        self.asked.append((list(blobs), colour))
        return [EmbedResult(error="not an image") if b == b"bad" else
                EmbedResult(vector=unit(len(b)), colour=np.full(HIST_SIZE, 0.5, np.float32) if self.colour else None)
                for b in blobs]


def done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def row(line: int) -> dict:
    return {"line": line, "id": f"p{line}", "image_url": f"images/{line}.jpg"}


def test_a_chunk_reuses_what_is_known_and_embeds_only_the_rest(tmp_path):
    photo, cached, fresh, broken = jpeg_bytes((200, 0, 0)), jpeg_bytes((0, 200, 0)), jpeg_bytes((0, 0, 200)), b"bad"
    finished = VectorCache(tmp_path, "test-model")
    finished.put(sha(cached), unit(1), np.full(HIST_SIZE, 0.25, np.float32))
    known = VectorSources(PreviousVectors([sha(photo)], unit(0)[None, :]), finished)
    model = Model()
    rows = [row(i) for i in range(2, 7)]
    out = build_module._collect_chunk(rows, [done(photo), done(cached), done(FetchError("HTTP 404")), done(fresh),
                                             done(broken)], model, known)
    assert model.asked == [([fresh, broken], True)]  # once, for the colour too, with the unknown photos only
    assert [r["id"] for r in out.rows] == ["p2", "p3", "p5"]
    assert out.errors == [RowError(4, "p4", "images/4.jpg", "fetch", "HTTP 404"),
                          RowError(6, "p6", "images/6.jpg", "decode", "not an image")]
    assert (out.reused, out.resumed, out.embedded) == (1, 1, 1)
    assert rows[0]["image_sha256"] == sha(photo) and rows[3]["image_sha256"] == sha(fresh)
    assert np.allclose(out.vectors[0], unit(0)) and np.allclose(out.vectors[1], unit(1))
    assert out.hists[0].shape == (HIST_SIZE,) and not np.allclose(out.hists[0], 0.5)  # decoded here: reused
    assert np.allclose(out.hists[1], 0.25) and np.allclose(out.hists[2], 0.5)  # kept with it / from the model
    assert np.allclose(finished.get(sha(fresh)), out.vectors[2]) and np.allclose(finished.get_colour(sha(fresh)), 0.5)
    assert finished.get(sha(broken)) is None  # a failure is not cached


def test_a_chunk_decodes_the_colour_itself_only_when_none_came(tmp_path):
    photo = jpeg_bytes((10, 200, 10))
    finished = VectorCache(tmp_path, "test-model")
    finished.put(sha(photo), unit(1))  # an older cache entry: a vector without its colour
    known = VectorSources(PreviousVectors.none(), finished)
    out = build_module._collect_chunk([row(2)], [done(photo)], Model(), known)
    assert out.resumed == 1 and np.allclose(out.hists[0], build_module._colour_here(photo))
    other = jpeg_bytes((200, 10, 10))
    out = build_module._collect_chunk([row(3)], [done(other)], Model(colour=False), known)
    assert out.embedded == 1 and np.allclose(out.hists[0], build_module._colour_here(other))
    assert np.allclose(finished.get_colour(sha(other)), out.hists[0])


def test_a_chunk_with_nothing_new_does_not_call_the_model(tmp_path):
    model = Model()
    out = build_module._collect_chunk([row(2)], [done(FetchError("gone"))], model,
                                      VectorSources(PreviousVectors.none(), VectorCache(tmp_path, "m")))
    assert model.asked == [] and out.rows == [] and len(out.errors) == 1


def test_the_colour_of_what_is_not_a_photo_is_none():
    assert build_module._colour_here(b"not an image") is None
    assert build_module._colour_here(jpeg_bytes()).shape == (HIST_SIZE,)


def test_collected_rows_make_a_float32_shard_with_zero_histograms_for_the_missing():
    out = Collected()
    assert out.matrix().shape == (0, 0) and out.matrix().dtype == np.float32
    out.keep({"id": "a"}, np.ones(3, np.float64), np.full(HIST_SIZE, 2.0))
    other = Collected(embedded=2, reused=3, resumed=4, errors=[err(9)])
    other.keep({"id": "b"}, np.zeros(3))
    out.extend(other)
    assert [r["id"] for r in out.rows] == ["a", "b"] and out.errors == [err(9)]
    assert (out.embedded, out.reused, out.resumed) == (2, 3, 4)
    shard = out.shard_result(downloaded=5, cache_hits=6)
    assert shard.vectors.dtype == np.float32 and shard.vectors.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert shard.hists.dtype == np.float32 and shard.hists.shape == (2, HIST_SIZE)
    assert shard.hists[0].tolist() == [2.0] * HIST_SIZE and not shard.hists[1].any()
    assert [getattr(shard, k) for k in ("embedded", "reused", "resumed", "downloaded", "cache_hits")] == [2, 3, 4, 5, 6]
    empty = Collected().shard_result()
    assert empty.hists.shape == (0, HIST_SIZE) and empty.hists.dtype == np.float32


class Source:
    """Image bytes by URL; a URL it does not know is a FetchError."""

    def __init__(self, photos: dict[str, bytes]) -> None:
        self.photos = photos

    def fetch(self, url: str) -> bytes:
        if url not in self.photos:
            raise FetchError(f"no image at {url}")
        return self.photos[url]


@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_the_pipeline_keeps_row_order_across_many_chunks(tmp_path, chunk_size):
    rows = [row(i) for i in range(2, 13)]
    photos = {r["image_url"]: jpeg_bytes((20 * i, 0, 0), size=(8 + i, 8)) for i, r in enumerate(rows) if i != 4}
    out = collect_vectors(rows, Source(photos), Model(), VectorSources(PreviousVectors.none(),
                          VectorCache(tmp_path, "m")), workers=2, chunk_size=chunk_size, progress=False)
    assert [r["line"] for r in out.rows] == [r["line"] for r in rows if r["line"] != 6]
    assert out.errors == [RowError(6, "p6", "images/6.jpg", "fetch", "no image at images/6.jpg")]
    assert out.embedded == 10
    assert [len(v) for v in out.vectors] == [4] * 10


# --------------------------------------------------------------------------- merging and fitting


def shard(rows: int, dim: int = 3, errors: int = 0, **counts) -> ShardResult:
    return ShardResult([{"id": f"r{i}"} for i in range(rows)], np.full((rows, dim), float(rows), np.float32),
                       np.ones((rows, HIST_SIZE), np.float32), [err(i) for i in range(errors)],
                       **{k: counts.get(k, 0) for k in COUNTS})


def test_shards_merge_in_order_with_their_counts_and_errors(tmp_path):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    shards.save(0, shard(2, errors=1, embedded=2, downloaded=3))
    shards.save(1, shard(0, dim=0, errors=2))  # every row failed: no vectors, no width
    shards.save(2, shard(3, embedded=1, reused=2, cache_hits=4))
    merged = merge_shards(shards, 3, tmp_path)
    assert [r["id"] for r in merged.rows] == ["r0", "r1", "r0", "r1", "r2"]
    assert np.asarray(merged.embeddings[:])[:, 0].tolist() == [2, 2, 3, 3, 3]
    assert merged.hists.shape == (5, HIST_SIZE) and [e.line for e in merged.errors] == [0, 0, 1]
    assert merged.counts == {"embedded": 3, "reused": 2, "resumed": 0, "downloaded": 3, "cache_hits": 4}


def test_a_merge_of_no_kept_rows_has_no_products(tmp_path):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    shards.save(0, shard(0, dim=0, errors=1))
    merged = merge_shards(shards, 1, tmp_path)
    assert merged.rows == [] and len(merged.embeddings) == 0 and len(merged.errors) == 1


def test_a_merge_refuses_an_unfinished_shard_and_another_width(tmp_path):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    shards.save(0, shard(2))
    shards.save(2, shard(2))
    with pytest.raises(ShardError, match=r"^builds/b: shard 1 is not finished$"):
        merge_shards(shards, 3, tmp_path)
    shards.save(1, shard(1, dim=5))
    with pytest.raises(ShardError, match=r"^builds/b: shard (0|1) has vectors of another width$"):
        merge_shards(shards, 3, tmp_path)


def test_a_merge_refuses_histograms_of_another_width(tmp_path, monkeypatch):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    shards.save(0, shard(2))
    monkeypatch.setattr(build_module, "HIST_SIZE", HIST_SIZE + 1)
    with pytest.raises(ShardError, match="shard 0 has vectors of another width"):
        merge_shards(shards, 1, tmp_path)


@pytest.mark.parametrize("count", [0, 4, 5])
def test_every_row_is_fitted_on_up_to_the_limit(count):
    assert fit_rows(count, limit=5).tolist() == list(range(count))


def test_above_the_limit_a_seeded_sample_in_row_order():
    rows = fit_rows(100, limit=6)
    assert len(rows) == len(set(rows.tolist())) == 6 and rows.tolist() == sorted(rows.tolist())
    assert rows.min() >= 0 and rows.max() < 100 and rows.tolist() == fit_rows(100, limit=6).tolist()
    assert rows.tolist() == np.sort(np.random.default_rng(0).choice(100, 6, replace=False)).tolist()
    assert len(fit_rows(FIT_SAMPLE + 1)) == FIT_SAMPLE


def merged_of(n: int, dim: int = 8, colours: bool = True, errors: list[RowError] | None = None) -> Merged:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    rows = [{"id": str(i), "category": "ab"[i % 2], **({"base_colour": "Red"} if colours else {})} for i in range(n)]
    merged = Merged.of(rows, x / np.linalg.norm(x, axis=1, keepdims=True), rng.random((n, HIST_SIZE)))
    merged.errors, merged.counts = errors or [], {"embedded": n, "reused": 0, "resumed": 0, "downloaded": 9}
    return merged


def test_a_version_says_what_was_built_from_what(tmp_path):
    errors = [err(2, "catalog"), err(3, "fetch"), err(4, "warning")]
    index, extra = finish_version(merged_of(10, errors=errors), tmp_path / "shop" / "products.csv", "bb", 12,
                                  tmp_path)
    m = index.manifest
    assert m["backbone"] == "bb"
    assert m["catalog"] == {"path": str(tmp_path / "shop" / "products.csv"), "root": str(tmp_path / "shop")}
    assert m["build"] == {"rows": 13, "errors": 2, "warnings": 1, "embedded": 10, "reused": 0, "resumed": 0}
    assert read_errors(extra[ERRORS])[1]["stage"] == "fetch" and len(read_errors(extra[ERRORS])) == 3
    assert m["whitening"] is None and WHITENING not in extra and m["ann"] is None and ANN not in extra
    assert m["appearance"]["column"] == "base_colour"
    assert Path(extra[APPEARANCE_VECTORS]).parent == tmp_path and isinstance(extra[APPEARANCE], bytes)
    assert m["calibration"] is not None and "no_match" in m


@pytest.mark.parametrize(("count", "whiten_min", "whitened"), [(20, 20, True), (19, 20, False), (1, 1, False),
                                                              (2, 2, True)])
def test_whitening_from_its_size_on(tmp_path, monkeypatch, count, whiten_min, whitened):
    monkeypatch.setitem(WHITENING_SETTINGS, "dims", 4)
    index, extra = finish_version(merged_of(count), tmp_path / "c.csv", "bb", count, tmp_path, whiten_min)
    assert (WHITENING in extra) is whitened
    assert index.manifest["whitening"] == ({"dims": 4, "power": 0.5, "shrink": 0.1} if whitened else None)
    if whitened:
        assert (tmp_path / "search.npy").exists()


def test_the_search_space_is_the_whitened_matrix_written_a_block_at_a_time(tmp_path):
    merged = merged_of(30)
    assert build_module._search_space(merged.embeddings, None, tmp_path / "s.npy") is merged.embeddings
    from ranking.whitening import fit_whitening

    whitening = fit_whitening(merged.embeddings, dims=4, power=0.5, shrink=0.1)
    written = build_module._search_space(merged.embeddings, whitening, tmp_path / "s.npy")
    assert written.shape == (30, 4) and np.allclose(written[:], whitening.apply(merged.embeddings), atol=1e-5)


def test_a_version_of_no_products_has_no_appearance_and_no_graph(tmp_path):
    index, extra = finish_version(merged_of(0), tmp_path / "c.csv", "bb", 0, tmp_path, ann=AnnSettings())
    assert index.manifest["appearance"] is None and index.manifest["ann"] is None and ANN not in extra


def test_the_graph_is_written_when_asked_with_its_parameters(tmp_path, monkeypatch):
    trimmed = []
    monkeypatch.setattr(build_module, "return_freed_memory", lambda: trimmed.append(True))
    index, extra = finish_version(merged_of(12, colours=False), tmp_path / "c.csv", "bb", 12, tmp_path,
                                  ann=AnnSettings(connectivity=8, expansion_add=16))
    assert index.manifest["ann"] == {"library": "faiss", "index": "HNSWFlat", "metric": "inner_product",
                                     "connectivity": 8, "expansion_add": 16}
    assert Path(extra[ANN]).exists() and trimmed == [True]
    assert index.manifest["appearance"]["column"] is None


@pytest.mark.parametrize("libc", ["glibc", "missing", "no malloc_trim"])
def test_freed_memory_is_handed_back_where_the_c_library_can(monkeypatch, caplog, libc):
    """glibc's malloc_trim is called before the graph; a C library without it (musl, macOS) is no error."""
    calls = []

    class Glibc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    def load(name):
        assert name == "libc.so.6"
        if libc == "missing":
            raise OSError("libc.so.6: cannot open shared object file")
        return Glibc() if libc == "glibc" else object()

    monkeypatch.setattr(ctypes, "CDLL", load)
    with caplog.at_level(logging.DEBUG, logger="catalog.build"):
        return_freed_memory()
    assert calls == ([0] if libc == "glibc" else [])
    assert [r.getMessage() for r in caplog.records] == (
        [] if libc == "glibc" else ["no malloc_trim here: freed heap pages stay with the process"])


# --------------------------------------------------------------------------- Milvus and the publish order


def test_milvus_is_filled_with_the_codes_and_prices_the_gateway_derives(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(MilvusSearch, "fill", staticmethod(lambda *args: seen.update(args=args)))
    merged = merged_of(6)
    for i, price in enumerate([1.5, None, True, 2, "2", 3.0]):  # a number, or unknown
        merged.rows[i]["price"] = price
    index, _ = finish_version(merged, tmp_path / "c.csv", "bb", 6, tmp_path)
    index.manifest["version"] = "v9"
    settings = MilvusSettings("m.db")
    build_module.fill_milvus(settings, index)
    got_settings, version, vectors, codes, prices = seen["args"]
    assert (got_settings, version) == (settings, "v9")
    assert np.allclose(vectors[:], index.embeddings[:]) and codes.tolist() == [0, 1, 0, 1, 0, 1]
    assert prices.dtype == np.float64 and np.array_equal(prices, [1.5, np.nan, np.nan, 2, np.nan, 3], equal_nan=True)


def test_with_milvus_the_collection_is_filled_after_the_files_and_before_the_pointer(tmp_path, monkeypatch):
    steps = []
    for name in ("write_version", "publish", "prune", "fill_milvus"):
        real = getattr(build_module, name)
        monkeypatch.setattr(build_module, name, lambda *a, _n=name, _r=real: (steps.append(_n), _r(*a))[1])
    store = open_store(tmp_path / "idx")
    index, extra = finish_version(merged_of(4), tmp_path / "c.csv", "bb", 4, tmp_path)
    monkeypatch.setattr(build_module, "fill_milvus", lambda s, i: steps.append("fill_milvus"))
    version, pruned = build_module._write_fill_publish(store, index, extra, 5, MilvusSettings("m.db"))
    assert steps == ["write_version", "fill_milvus", "publish", "prune"] and pruned == []
    assert read_current(store).version == version


def test_a_fill_that_fails_publishes_nothing(tmp_path, monkeypatch):
    store = open_store(tmp_path / "idx")
    index, extra = finish_version(merged_of(4), tmp_path / "c.csv", "bb", 4, tmp_path)

    def fail(settings, index):
        raise RuntimeError("Milvus is down")

    monkeypatch.setattr(build_module, "fill_milvus", fail)
    with pytest.raises(RuntimeError):
        build_module._write_fill_publish(store, index, extra, 5, MilvusSettings("m.db"))
    assert len(store.list_versions()) <= 1 and not (tmp_path / "idx" / "CURRENT").exists()


# --------------------------------------------------------------------------- whole builds, stand-in model


def shop(tmp_path: Path, n: int = 5) -> Path:
    folder = tmp_path / "shop"
    (folder / "images").mkdir(parents=True)
    lines = ["id,name,category,price,image_url"]
    for i in range(n):
        (folder / "images" / f"{i}.jpg").write_bytes(jpeg_bytes((40 * i, 100, 200 - 30 * i)))
        lines.append(f"{i},item {i},{'ab'[i % 2]},{i}.5,images/{i}.jpg")
    lines.append(f"{n},missing,a,,images/none.jpg")
    (folder / "products.csv").write_text("\n".join(lines) + "\n")
    return folder / "products.csv"


def test_a_shard_is_embedded_and_saved_wherever_it_runs(tmp_path):
    catalog = shop(tmp_path)
    (tmp_path / "spool").mkdir()
    (pending,) = spool([{"line": i + 2, "id": str(i), "image_url": f"images/{i}.jpg"} for i in range(6)],
                       tmp_path / "spool", 10)
    job = ShardJob(str(tmp_path / "idx"), "b1", str(catalog.parent), str(tmp_path / "cache"),
                   str(tmp_path / "vectors"), "hash-16", workers=2, chunk_size=2)
    counts = embed_shard(job, 0, pending.rows(), HashEmbedder(), PreviousVectors.none())
    assert counts == {"embedded": 5, "reused": 0, "resumed": 0, "downloaded": 0, "cache_hits": 0}
    saved = ShardStore(open_store(tmp_path / "idx"), "b1")
    assert saved.finished(0) == (5, 16) and saved.load(0).errors[0].stage == "fetch"
    assert len(list((tmp_path / "vectors").rglob("*.npy"))) == 10  # each vector with its colour


def test_the_local_engine_runs_every_shard_it_is_given(tmp_path, monkeypatch):
    seen = []
    model, previous = HashEmbedder(), PreviousVectors.none()

    def record(job, index, rows, embedder, known):
        seen.append((job.build, index, [r["id"] for r in rows], embedder is model, known is previous))

    monkeypatch.setattr(build_module, "embed_shard", record)
    engine = LocalEngine(model)
    assert engine.backbone_id() == "hash-16"
    pending = spool([{"line": i, "id": str(i)} for i in range(5)], tmp_path, 2)
    engine.run(ShardJob("o", "b", "r", "c", "v", "hash-16"), [pending[0], pending[2]], previous)
    assert seen == [("b", 0, ["0", "1"], True, True), ("b", 2, ["4"], True, True)]


def test_the_local_engine_shows_progress_unless_told_not_to(tmp_path, bars, monkeypatch):
    monkeypatch.setattr(build_module, "embed_shard", lambda *args: None)
    pending = spool([{"line": i, "id": str(i)} for i in range(3)], tmp_path, 2)
    LocalEngine(HashEmbedder()).run(ShardJob("o", "b", "r", "c", "v", "h"), pending, PreviousVectors.none())
    assert bars[0]["disable"] is False


def test_a_build_needs_a_model_or_an_engine_and_a_known_ann_choice(tmp_path):
    with pytest.raises(ValueError, match="^build_index needs an embedder or an engine$"):
        build_index(shop(tmp_path), tmp_path / "idx", None, tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match=r"^ann='sometimes': use one of auto, always, never$"):
        build_index(tmp_path / "shop" / "products.csv", tmp_path / "idx", HashEmbedder(), tmp_path / "cache",
                    ann="sometimes")


def test_a_build_publishes_a_version_and_reports_it(tmp_path, caplog):
    catalog = shop(tmp_path)
    with caplog.at_level(logging.INFO, logger="catalog.build"):
        report = build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False,
                             workers=2, chunk_size=2, shard_rows=4)
    index = read_current(open_store(tmp_path / "idx"))
    assert (report.version, report.backbone, report.indexed, report.shards, report.shards_resumed) == (
        index.version, "hash-16", 5, 2, 0)
    assert report.output == open_store(tmp_path / "idx").uri and report.embedded == 5
    assert [e.stage for e in report.errors] == ["fetch"] and report.errors[0].line == 7
    assert index.manifest["build"]["rows"] == 6 and index.manifest["ann"] is None
    assert [p["id"] for p in index.products] == ["0", "1", "2", "3", "4"]
    assert (tmp_path / "vectors").is_dir()  # the vector cache beside the image cache by default
    assert not open_store(tmp_path / "idx").list_folders("builds")  # the shards go once published
    written = {p.name for p in (tmp_path / "idx" / "versions" / index.version).iterdir()}
    assert {ERRORS, APPEARANCE, APPEARANCE_VECTORS} <= written  # the build's own files, not just the matrix
    assert caplog.records == []


def test_a_rebuild_reuses_every_vector_and_prunes_to_keep(tmp_path, caplog):
    catalog = shop(tmp_path)
    kw = {"progress": False, "shard_rows": 4, "keep": 1}
    first = build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", **kw)
    with caplog.at_level(logging.INFO, logger="catalog.build"):
        second = build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", **kw)
    assert second.reused == 5 and second.embedded == 0
    assert [r.getMessage() for r in caplog.records] == [f"removed 1 old version(s): {first.version}"]


def test_a_killed_build_resumes_from_its_finished_shards_and_logs_it(tmp_path, caplog):
    catalog = shop(tmp_path)
    kw = {"progress": False, "shard_rows": 4, "chunk_size": 2}
    with pytest.raises(KeyboardInterrupt):  # dies in the second shard
        build_index(catalog, tmp_path / "idx", HashEmbedder(die_after=4), tmp_path / "cache", **kw)
    model = HashEmbedder()
    with caplog.at_level(logging.INFO, logger="catalog.build"):
        report = build_index(catalog, tmp_path / "idx", model, tmp_path / "cache", **kw)
    assert (report.shards, report.shards_resumed, report.indexed) == (2, 1, 5)
    assert model.embedded == 1  # the unfinished shard's one photo, no more
    from catalog.shards import build_id

    build = [r.getMessage() for r in caplog.records if r.name == "catalog.build"][0]
    assert build == f"resuming build {build_id(catalog.resolve(), 'hash-16', 4)}: 1 of 2 shards already done"


@pytest.mark.parametrize(("ann", "min_products", "graph"), [
    ("auto", 5, True), ("auto", 6, False), ("always", 100, True), ("never", 1, False)])
def test_the_graph_is_built_by_choice_or_from_its_size(tmp_path, ann, min_products, graph):
    report = build_index(shop(tmp_path), tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False,
                         ann=ann, ann_settings=AnnSettings(min_products=min_products))
    assert report.indexed == 5
    assert (read_current(open_store(tmp_path / "idx")).manifest["ann"] is not None) is graph


def test_an_engine_embeds_without_a_model_here_and_milvus_is_filled_before_publishing(tmp_path, monkeypatch):
    filled = []
    monkeypatch.setattr(build_module, "fill_milvus",
                        lambda settings, index: filled.append((settings, len(index.products))))
    report = build_index(shop(tmp_path), tmp_path / "idx", None, tmp_path / "cache", progress=False,
                         engine=LocalEngine(HashEmbedder()), milvus=MilvusSettings("m.db"))
    assert report.indexed == 5 and filled == [(MilvusSettings("m.db"), 5)]


# --------------------------------------------------------------------------- each step's inputs, pinned


class Bar:
    """A stand-in for tqdm that records how it was made and what it was told."""

    made: list[dict] = []

    def __init__(self, **kwargs) -> None:
        Bar.made.append(kwargs)
        self.updates: list = []
        kwargs["updates"] = self.updates

    def update(self, n) -> None:
        self.updates.append(n)

    def close(self) -> None:
        pass

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.fixture
def bars(monkeypatch) -> list[dict]:
    Bar.made = []
    monkeypatch.setattr(build_module, "tqdm", Bar)
    return Bar.made


@pytest.mark.parametrize("progress", [True, False])
def test_the_pipelines_progress_bar_counts_images(tmp_path, bars, monkeypatch, progress):
    pools = []
    real_pool = build_module.ThreadPoolExecutor
    monkeypatch.setattr(build_module, "ThreadPoolExecutor", lambda max_workers: (pools.append(max_workers),
                                                                                  real_pool(max_workers))[1])
    rows = [row(i) for i in range(2, 9)]
    collect_vectors(rows, Source({}), Model(), VectorSources(PreviousVectors.none(), VectorCache(tmp_path, "m")),
                    workers=5, chunk_size=2, progress=progress)
    (bar,) = bars
    assert {k: v for k, v in bar.items() if k != "updates"} == {"total": 7, "unit": "img", "desc": "indexing",
                                                                  "disable": not progress}
    assert bar["updates"] == [2, 2, 2, 1] and pools == [5, 3]


def test_the_pipelines_defaults_eight_fetchers_chunks_of_64_and_a_progress_bar(tmp_path, bars, monkeypatch):
    pools = []
    real_pool = build_module.ThreadPoolExecutor
    monkeypatch.setattr(build_module, "ThreadPoolExecutor", lambda max_workers: (pools.append(max_workers),
                                                                                  real_pool(max_workers))[1])
    collect_vectors([row(i) for i in range(70)], Source({}), Model(),
                    VectorSources(PreviousVectors.none(), VectorCache(tmp_path, "m")))
    assert pools == [8, 3] and bars[0]["updates"] == [64, 6] and bars[0]["disable"] is False


def test_the_pipelines_defaults():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(collect_vectors).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"workers": 8, "chunk_size": 64, "progress": True}
    defaults = {k: p.default for k, p in inspect.signature(build_index).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"workers": 8, "chunk_size": 64, "refresh_cache": False, "progress": True, "keep": 5,
                        "whiten_min": MIN_WHITEN, "allow_private_hosts": False, "vector_cache": None, "ann": "auto",
                        "ann_settings": None, "shard_rows": build_module.SHARD_ROWS, "engine": None, "milvus": None,
                        "local_features": False}
    assert inspect.signature(LocalEngine.run).parameters["progress"].default is True


def test_the_pipeline_fetches_at_most_four_chunks_ahead_of_the_model(tmp_path):
    """Bounded memory: while the model works on the first chunk, three more are fetched, and no more."""
    import threading
    import time

    release, fetched = threading.Event(), []

    class Slow(Model):
        def embed_bytes(self, blobs, colour=False):
            release.wait(10)
            return super().embed_bytes(blobs, colour)

    class Counting(Source):
        def fetch(self, url):
            fetched.append(url)
            return jpeg_bytes()

    rows = [row(i) for i in range(2, 12)]
    worker = threading.Thread(target=collect_vectors, args=(rows, Counting({}), Slow(), VectorSources(
        PreviousVectors.none(), VectorCache(tmp_path, "m"))), kwargs={"chunk_size": 1, "progress": False})
    worker.start()
    deadline = time.monotonic() + 10
    while len(fetched) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time enough to fetch a fifth, were it allowed
    assert len(fetched) == 4
    release.set()
    worker.join(10)
    assert len(fetched) == 10


def test_a_model_that_answers_fewer_results_than_images_is_an_error(tmp_path):
    class Short(Model):
        def embed_bytes(self, blobs, colour=False):
            return super().embed_bytes(blobs, colour)[:-1]

    known = VectorSources(PreviousVectors.none(), VectorCache(tmp_path, "m"))
    with pytest.raises(ValueError, match="zip"):
        build_module._collect_chunk([row(2), row(3)], [done(jpeg_bytes()), done(jpeg_bytes((1, 2, 3)))], Short(),
                                    known)
    with pytest.raises(ValueError, match="zip"):  # and rows without their images
        build_module._collect_chunk([row(2), row(3)], [done(jpeg_bytes())], Model(), known)


def test_a_refused_image_does_not_stop_the_rest_of_its_chunk(tmp_path):
    out = build_module._collect_chunk([row(2), row(3)], [done(b"bad"), done(jpeg_bytes())], Model(),
                                      VectorSources(PreviousVectors.none(), VectorCache(tmp_path, "m")))
    assert [r["id"] for r in out.rows] == ["p3"] and [e.line for e in out.errors] == [2]


def test_counts_add_up_across_extends():
    out = Collected(embedded=1, reused=2, resumed=3)
    out.extend(Collected(embedded=10, reused=20, resumed=30))
    assert (out.embedded, out.reused, out.resumed) == (11, 22, 33)
    shard = out.shard_result()
    assert (shard.downloaded, shard.cache_hits) == (0, 0)


def test_merged_arrays_in_memory_are_float32_with_zero_histograms_unless_given():
    merged = Merged.of([{"id": "a"}], np.ones((1, 3), np.float64))
    assert merged.embeddings.dtype == np.float32 and merged.hists.dtype == np.float32
    assert merged.hists.shape == (1, HIST_SIZE) and not merged.hists.any()
    given = np.full((1, HIST_SIZE), 3.0, np.float32)
    assert Merged.of([{"id": "a"}], np.ones((1, 3)), given).hists is given


def test_a_merge_writes_its_three_files_and_an_empty_one_has_no_width(tmp_path):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    shards.save(0, shard(1))
    (tmp_path / "work").mkdir()
    merge_shards(shards, 1, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["embeddings.npy", "hists.npy", "products.jsonl"]
    shards.save(0, shard(0, dim=0, errors=1))
    (tmp_path / "none").mkdir()
    assert merge_shards(shards, 1, tmp_path / "none").embeddings.shape == (0, 0)


def test_a_version_of_merged_rows_without_counts_counts_zero(tmp_path):
    merged = merged_of(4)
    merged.counts = {}
    index, _ = finish_version(merged, tmp_path / "c.csv", "bb", 4, tmp_path)
    assert index.manifest["build"] == {"rows": 4, "errors": 0, "warnings": 0, "embedded": 0, "reused": 0,
                                       "resumed": 0}


def test_the_whitening_stored_is_the_one_fitted_with_the_settings(tmp_path, monkeypatch):
    from ranking.whitening import Whitening

    monkeypatch.setitem(WHITENING_SETTINGS, "dims", 3)
    monkeypatch.setitem(WHITENING_SETTINGS, "power", 1.0)
    merged = merged_of(20)
    index, extra = finish_version(merged, tmp_path / "c.csv", "bb", 20, tmp_path, whiten_min=20)
    stored = Whitening.from_bytes(extra[WHITENING])
    expected = build_module.fit_whitening(merged.embeddings, dims=3, power=1.0, shrink=0.1)
    assert stored.projection.shape == (8, 3)
    assert np.allclose(stored.apply(merged.embeddings), expected.apply(merged.embeddings), atol=1e-5)


def test_calibration_and_the_no_match_rule_are_fitted_on_the_categories(tmp_path, monkeypatch):
    seen = {}
    real_calibration = build_module.fit_calibration

    def calibration(vectors, labels):
        seen["calibration"] = list(labels)
        return real_calibration(vectors, labels)

    def no_match(vectors, labels, percent):
        seen["no_match"] = list(labels)
        return {"rule": "fitted"}

    monkeypatch.setattr(build_module, "fit_calibration", calibration)
    monkeypatch.setattr(build_module, "fit_no_match", no_match)
    merged = merged_of(4)
    del merged.rows[3]["category"]
    index, _ = finish_version(merged, tmp_path / "c.csv", "bb", 4, tmp_path)
    assert seen == {"calibration": ["a", "b", "a", ""], "no_match": ["a", "b", "a", ""]}
    assert index.manifest["no_match"] == {"rule": "fitted"}


def test_the_graph_file_is_built_with_the_given_connectivity(tmp_path):
    import faiss

    _, extra = finish_version(merged_of(12), tmp_path / "c.csv", "bb", 12, tmp_path, ann=AnnSettings(connectivity=4))
    graph = faiss.read_index(str(extra[ANN]))
    assert faiss.downcast_index(graph).hnsw.nb_neighbors(1) == 4


@pytest.mark.parametrize("column", [True, False])
def test_the_appearance_space_is_fitted_on_each_rows_colour_and_search_vector(tmp_path, monkeypatch, column):
    from ranking.appearance import Appearance, AppearanceSettings

    seen = []
    real = build_module.fit_appearance

    def fit(hists, search, colours):
        seen.append((np.array(hists), np.array(search), colours))
        return real(hists, search, colours, AppearanceSettings(min_labelled=4, min_colours=2))

    monkeypatch.setattr(build_module, "fit_appearance", fit)
    merged = merged_of(8, colours=column)
    if column:
        for i, r in enumerate(merged.rows):
            r["base_colour"] = [" Red", "Blue ", "", None][i % 4]
    _, extra = finish_version(merged, tmp_path / "c.csv", "bb", 8, tmp_path)
    ((hists, search, colours),) = seen
    assert colours == (["Red", "Blue", "", ""] * 2 if column else [""] * 8)
    assert np.allclose(hists, merged.hists) and np.allclose(search, merged.embeddings)
    space = Appearance.from_bytes(extra[APPEARANCE])
    stored, guessed = np.load(extra[APPEARANCE_VECTORS]), space.vectors(merged.hists, merged.embeddings)
    labelled = [0, 1, 4, 5] if column else []  # a product's own colour, where the projection knows it, is its vector
    assert space.colours == (("Blue", "Red") if column else ())
    assert not column or np.array_equal(stored[labelled], np.array([[0, 1], [1, 0], [0, 1], [1, 0]], np.float32))
    rest = [i for i in range(8) if i not in labelled]  # the others: the projection's guess from the photo
    assert np.allclose(stored[rest], guessed[rest], atol=1e-5)


def test_milvus_gets_the_search_space_rows_and_unlabelled_rows_no_category(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(MilvusSearch, "fill", staticmethod(lambda *args: seen.update(args=args)))
    monkeypatch.setitem(WHITENING_SETTINGS, "dims", 3)
    merged = merged_of(20)
    del merged.rows[0]["category"]
    index, extra = finish_version(merged, tmp_path / "c.csv", "bb", 20, tmp_path, whiten_min=20)
    index.manifest["version"] = "v1"
    index.files = {WHITENING: extra[WHITENING]}
    build_module.fill_milvus(MilvusSettings("m.db"), index)
    _, _, vectors, codes, _ = seen["args"]
    assert vectors[:].shape == (20, 3) and codes[0] == -1 and codes[1:4].tolist() == [1, 0, 1]


def test_a_published_version_holds_its_error_report(tmp_path):
    for milvus_settings in (None, MilvusSettings("m.db")):
        store = open_store(tmp_path / str(milvus_settings is None))
        index, extra = finish_version(merged_of(4, errors=[err(7)]), tmp_path / "c.csv", "bb", 4, tmp_path)
        if milvus_settings is not None:
            import unittest.mock

            with unittest.mock.patch.object(build_module, "fill_milvus"):
                version, _ = build_module._write_fill_publish(store, index, extra, 5, milvus_settings)
        else:
            version, _ = build_module._write_fill_publish(store, index, extra, 5, None)
        assert read_errors(store.get(f"versions/{version}/{ERRORS}"))[0]["line"] == "7"


def test_a_shard_fetches_as_the_job_says_and_counts_downloads_and_cache_hits(tmp_path, http_server, monkeypatch):
    made, calls = [], []
    real_source, real_collect = build_module.ImageSource, build_module.collect_vectors
    monkeypatch.setattr(build_module, "ImageSource", lambda *a, **kw: (made.append(kw), real_source(*a, **kw))[1])
    monkeypatch.setattr(build_module, "collect_vectors",
                        lambda *a, **kw: (calls.append((a[4:], kw)), real_collect(*a, **kw))[1])
    url = http_server.add("/a.jpg", jpeg_bytes())
    rows = [{"line": 2, "id": "a", "image_url": url}]
    job = ShardJob(str(tmp_path / "idx"), "b", str(tmp_path), str(tmp_path / "cache"), str(tmp_path / "v"), "hash-16",
                   workers=3, chunk_size=5, refresh_cache=False, allow_private=True)
    assert embed_shard(job, 0, rows, HashEmbedder(), PreviousVectors.none())["downloaded"] == 1
    assert embed_shard(job, 1, rows, HashEmbedder(), PreviousVectors.none())["cache_hits"] == 1
    assert made[0] == {"refresh": False, "allow_private": True} and calls[0] == ((3, 5), {"progress": False})
    refreshed = ShardJob(**{**job.__dict__, "refresh_cache": True})
    assert embed_shard(refreshed, 2, rows, HashEmbedder(), PreviousVectors.none())["downloaded"] == 1
    closed = ShardJob(**{**job.__dict__, "allow_private": False})
    assert embed_shard(closed, 3, rows, HashEmbedder(), PreviousVectors.none())["embedded"] == 0


@pytest.mark.parametrize("progress", [True, False])
def test_the_local_engines_progress_counts_each_shards_rows(tmp_path, bars, monkeypatch, progress):
    monkeypatch.setattr(build_module, "embed_shard", lambda *args: None)
    pending = spool([{"line": i, "id": str(i)} for i in range(5)], tmp_path, 2)
    LocalEngine(HashEmbedder()).run(ShardJob("o", "b", "r", "c", "v", "h"), pending, PreviousVectors.none(), progress)
    (bar,) = bars
    assert {k: v for k, v in bar.items() if k != "updates"} == {"total": 5, "unit": "img", "desc": "indexing",
                                                                  "disable": not progress}
    assert bar["updates"] == [2, 2, 1]


class Recording(LocalEngine):
    def run(self, job, todo, previous, progress=True):
        self.seen = (job, [s.index for s in todo], progress)
        super().run(job, todo, previous, progress=False)


@pytest.mark.parametrize("progress", [True, False])
def test_the_engine_gets_the_whole_job(tmp_path, monkeypatch, progress):
    from catalog.shards import build_id

    temps = []
    real_temp = build_module.tempfile.TemporaryDirectory
    monkeypatch.setattr(build_module.tempfile, "TemporaryDirectory",
                        lambda **kw: (temps.append(kw), real_temp(**kw))[1])
    catalog, engine = shop(tmp_path), Recording(HashEmbedder())
    build_index(catalog, tmp_path / "idx", None, tmp_path / "cache", workers=3, chunk_size=7, refresh_cache=True,
                progress=progress, allow_private_hosts=True, engine=engine, shard_rows=4)
    job, todo, seen_progress = engine.seen
    assert job == ShardJob(open_store(tmp_path / "idx").uri, build_id(catalog.resolve(), "hash-16", 4),
                           str(catalog.parent.resolve()), str(tmp_path / "cache"), str(tmp_path / "vectors"), "hash-16",
                           3, 7, True, True)
    assert todo == [0, 1] and seen_progress is progress
    assert temps[0] == {"prefix": "photo-build-"}


def test_a_build_reads_the_previous_version_of_a_remote_store_into_its_work_folder(tmp_path, monkeypatch):
    class Remote:
        """A store that is not a local folder, as S3 is (its files are copied before they are read)."""

        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    real_open = build_module.open_store
    monkeypatch.setattr(build_module, "open_store", lambda uri: Remote(real_open(uri)))
    catalog = shop(tmp_path)
    build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False)
    model = HashEmbedder()
    again = build_index(catalog, tmp_path / "idx", model, tmp_path / "cache", progress=False,
                        vector_cache=tmp_path / "empty")
    assert again.reused == 5 and model.embedded == 0


def test_errors_are_reported_in_catalog_line_order(tmp_path):
    catalog = shop(tmp_path)
    lines = catalog.read_text().splitlines()
    lines[1] = lines[1].replace(",0.5,", ",-3,")  # line 2: a price no shop has (a catalog error)
    catalog.write_text("\n".join(lines) + "\n")
    (catalog.parent / "images" / "1.jpg").unlink()  # line 3: no image
    report = build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False)
    assert [(e.line, e.stage) for e in report.errors] == [(2, "catalog"), (3, "fetch"), (7, "fetch")]


def test_pruning_several_versions_names_them_all(tmp_path, caplog):
    catalog = shop(tmp_path)
    old = [build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False).version
           for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="catalog.build"):
        build_index(catalog, tmp_path / "idx", HashEmbedder(), tmp_path / "cache", progress=False, keep=1)
    assert [r.getMessage() for r in caplog.records] == [f"removed 2 old version(s): {', '.join(sorted(old))}"]


def test_a_builds_defaults(tmp_path):
    engine = Recording(HashEmbedder())
    build_index(shop(tmp_path), tmp_path / "idx", None, tmp_path / "cache", engine=engine)
    job, _, progress = engine.seen
    assert (job.workers, job.chunk_size, job.refresh_cache, job.allow_private, progress) == (8, 64, False, False, True)
    for _ in range(5):
        build_index(tmp_path / "shop" / "products.csv", tmp_path / "idx", HashEmbedder(), tmp_path / "cache",
                    progress=False)
    assert len(open_store(tmp_path / "idx").list_versions()) == 5  # six builds, five kept


def test_products_are_written_as_utf8_whatever_the_text(tmp_path):
    shards = ShardStore(open_store(tmp_path / "store"), "b")
    result = shard(1)
    result.rows[0]["name"] = "Café ☕ \u00e9"
    shards.save(0, result)
    merged = merge_shards(shards, 1, tmp_path)
    assert merged.rows[0]["name"] == "Café ☕ \u00e9"
    assert "Café ☕".encode() in (tmp_path / "products.jsonl").read_bytes()


@pytest.mark.parametrize("count", [0, 12])
def test_the_catalogs_prototypes_are_fitted_on_a_sample_and_stored(tmp_path, monkeypatch, count):
    """Fitted on the model vectors of at most ``PrototypeSettings.sample`` rows (here 5 of 12), stored with the
    version and said in its manifest; a version of no products has none."""
    from dataclasses import replace

    from indexstore.store import PROTOTYPES
    from ranking.prototypes import from_bytes

    seen = []
    real = build_module.fit_prototypes

    def fit(vectors, settings):
        seen.append(np.asarray(vectors).copy())
        return real(vectors, settings)

    monkeypatch.setattr(build_module, "fit_prototypes", fit)
    monkeypatch.setattr(build_module, "PROTOTYPE_SETTINGS", replace(build_module.PROTOTYPE_SETTINGS, count=3, sample=5))
    merged = merged_of(count)
    index, extra = finish_version(merged, tmp_path / "c.csv", "bb", count, tmp_path)
    if not count:
        assert index.manifest["prototypes"] is None and PROTOTYPES not in extra and not seen
        return
    assert index.manifest["prototypes"] == {"count": 3, "fitted_on": 5, "iterations": 15}
    rows = build_module.fit_rows(count, 5)
    assert len(seen) == 1 and np.array_equal(seen[0], np.asarray(merged.embeddings)[rows])
    assert from_bytes(extra[PROTOTYPES], 8).shape == (3, 8)

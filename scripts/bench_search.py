"""Search at catalog scale: ``python scripts/bench_search.py`` → build/bench_search.json (``make bench-search``).

On ``--n`` synthetic clustered unit vectors (1,000,000 × 512 by default: the dimension the pipeline stores
after whitening), and on the real Myntra vectors when the dataset is there:

- the in-process ANN (indexstore/ann.py, search/ann.py ``AnnSearch``): query p50 and recall@10 against exact
  search, exact NumPy p50 beside it, the graph's build time (reused from an earlier run when it exists);
- the gateway's memory: PSS of all gunicorn processes (shared pages counted once) serving the n vectors from
  a published index version, divided by the raw float32 vector bytes;
- Milvus Lite at a size it handles (``--milvus-n``): fill time, p50, recall@10;
- the whole build's peak memory at ``--build-n`` products (scripts/bench_build_memory.py):
  ``build_peak_rss_ratio``, peak RSS ÷ the bytes of the stored search vectors.
Synthetic queries are fresh points of the same distribution, never rows of the index.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.process import REPO, free_ports, wait_for_http  # noqa: E402
from indexstore.ann import AnnSettings, build_ann, open_ann  # noqa: E402
from indexstore.store import ANN, IndexData, IndexNotFound, open_store, read_current, write_and_publish  # noqa: E402
from scripts.bench import p50_ms, write_report  # noqa: E402
from scripts.bench_build_memory import measure as measure_build_memory  # noqa: E402
from search import ExactSearch  # noqa: E402
from search.ann import AnnSearch  # noqa: E402

MYNTRA = REPO.parent / "shared" / "datasets" / "myntra-fashion"


def clustered(n: int, dim: int, seed: int = 0, per_cluster: int = 500, per_group: int = 5) -> np.ndarray:
    """Unit vectors in clusters (~``per_cluster`` rows: a kind of product) of groups (~``per_group``: a product's
    variants), plus noise. The weights are fitted so that a row's median top-1 and top-10 cosine match those of
    the real, whitened Myntra vectors at their size (0.62 / 0.48 here, 0.65 / 0.47 there; docs/SCALING.md);
    uniform noise would have no neighbours at all. The gap between the 10th and 11th neighbour is smaller
    than Myntra's, which makes recall@10 harder here than on real photos."""
    rng = np.random.default_rng(seed)
    clusters, groups = max(1, n // per_cluster), max(1, n // per_group)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) / np.sqrt(dim)
    variants = centres[rng.integers(0, clusters, groups)]
    variants += rng.normal(scale=0.7 / np.sqrt(dim), size=(groups, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        size = min(n, start + 100_000) - start
        x = variants[rng.integers(0, groups, size)]
        x += rng.normal(scale=1.0 / np.sqrt(dim), size=(size, dim)).astype(np.float32)
        out[start:start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def neighbour_profile(x: np.ndarray, queries: int = 300) -> dict:
    """Median cosine of a row's 1st and 10th nearest other row (how clustered the vectors are)."""
    rows = np.random.default_rng(0).choice(len(x), min(queries, len(x)), replace=False)
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = -np.sort(-scores, axis=1)[:, :10]
    return {"top1_cosine": round(float(np.median(top[:, 0])), 3), "top10_cosine": round(float(np.median(top[:, 9])), 3)}


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 50):
        scores = queries[start:start + 50] @ matrix.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1))
    return np.concatenate(out)


def recall(found: list[np.ndarray], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth,
                                                                                             strict=True)]))


def bench_ann(matrix: np.ndarray, queries: np.ndarray, ann_path: Path, settings: AnnSettings) -> dict:
    """Build (or reuse) the graph for ``matrix``; ANN and exact p50, recall@10 against exact."""
    meta = ann_path.with_suffix(".json")
    if ann_path.exists() and meta.exists():
        build_s, reused = json.loads(meta.read_text())["build_s"], True
    else:
        started = time.perf_counter()
        data = build_ann(matrix, settings)
        build_s, reused = time.perf_counter() - started, False
        ann_path.write_bytes(data)
        meta.write_text(json.dumps({"build_s": build_s}))
        del data
    backend = AnnSearch(open_ann(ann_path, *matrix.shape), np.zeros(len(matrix), np.int64),
                        settings.expansion_search)
    backend.search(queries[0], 10)  # first touch of the mapped file
    truth = exact_top(matrix, queries)
    found = [backend.search(q, 10).rows for q in queries]
    it = iter(np.resize(queries, (len(queries) * 2, queries.shape[1])))
    ann_ms = p50_ms(lambda: backend.search(next(it), 10), n=len(queries), warmup=20)
    sweep = {}
    for depth in (64, 128, 256, 512):  # what efSearch buys (ANN_EXPANSION)
        backend._expansion = depth
        got = [backend.search(q, 10).rows for q in queries]
        it = iter(np.resize(queries, (len(queries) * 2, queries.shape[1])))
        sweep[str(depth)] = {"recall_at_10": round(recall(got, truth), 4),
                             "p50_ms": round(p50_ms(lambda it=it: backend.search(next(it), 10), n=len(queries)), 3)}
    exact = ExactSearch(matrix)
    exact_ms = p50_ms(lambda: exact.search(queries[0], 10), n=20, warmup=2)
    return {"p50_ms": round(ann_ms, 3), "exact_p50_ms": round(exact_ms, 2),
            "recall_at_10": round(recall(found, truth), 4), "expansion_sweep": sweep, "ann_build_s": round(build_s, 1),
            "ann_build_reused": reused, "ann_file_mb": round(ann_path.stat().st_size / 2**20)}


def publish_synthetic(root: Path, matrix: np.ndarray, ann_path: Path, categories: int = 50) -> Path:
    """A published index version of ``matrix`` (products, ANN file) at ``root``; reused when present."""
    store = open_store(root)
    try:
        store.get("CURRENT")
        return root
    except IndexNotFound:
        pass
    products = [{"id": str(i), "name": f"Product {i}", "category": f"Type {i % categories}", "price": None,
                 "image_url": f"images/{i}.jpg"} for i in range(len(matrix))]
    write_and_publish(store, IndexData(matrix, products, {"backbone": "bench-synthetic", "whitening": None}),
                      {ANN: ann_path.read_bytes()})
    return root


def pss_mb(pid: int) -> float:
    """PSS of ``pid`` and all its descendants, in MiB: shared pages are divided among their users."""
    pids = [pid]
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        pids.append(int(child))
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def bench_gateway(index: Path, work: Path, n: int, raw_bytes: int, workers: int = 2, backend: str = "auto",
                  queries: int = 400) -> dict:
    """Serve the index with gunicorn (``SEARCH_BACKEND=backend``), query it, measure the memory of all processes."""
    port, nothing_there = free_ports(2)  # distinct: two free_port() calls in a row can return the same port
    env = {**os.environ, "INDEX_URI": str(index), "INDEX_CACHE_DIR": str(work / "gateway-cache"),
           "INDEX_POLL_S": "0", "TORCHSERVE_URL": f"http://127.0.0.1:{nothing_there}", "SEARCH_BACKEND": backend}
    rng = np.random.default_rng(1)
    with open(work / "gateway.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), "--workers", str(workers)],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_for_http(f"{url}/api/products/0/similar", timeout=1800):
                raise RuntimeError(f"gateway did not serve; see {work / 'gateway.log'}")
            load_s = time.perf_counter() - started
            session = requests.Session()
            ids = iter(rng.integers(0, n, 2000))
            similar_ms = p50_ms(lambda: session.get(f"{url}/api/products/{next(ids)}/similar", timeout=30)
                                .raise_for_status(), n=queries, warmup=queries // 4)
            pss = pss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    return {"gateway_workers": workers, "gateway_pss_mb": round(pss), "raw_vector_mb": round(raw_bytes / 2**20),
            "gateway_rss_ratio": round(pss * 2**20 / raw_bytes, 3), "gateway_load_s": round(load_s, 1),
            "gateway_similar_p50_ms": round(similar_ms, 2)}


def bench_milvus(matrix: np.ndarray, queries: np.ndarray, work: Path) -> dict:
    """Milvus Lite (the embedded engine) with AUTOINDEX: fill time, p50 and recall@10 against exact."""
    from search.milvus import MilvusSearch, MilvusSettings

    uri = work / "milvus.db"
    for stale in work.glob("milvus.db*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    settings = MilvusSettings(str(uri))
    version = "20260101T000000000000Z-000000"
    started = time.perf_counter()
    MilvusSearch.fill(settings, version, matrix, np.zeros(len(matrix), np.int64))  # the build's step
    fill_s = time.perf_counter() - started
    backend = MilvusSearch.serve(settings, version, len(matrix))
    truth = exact_top(matrix, queries)
    found = [backend.search(q, 10).rows for q in queries]
    it = iter(np.resize(queries, (len(queries) * 2, queries.shape[1])))
    return {"milvus_lite_n": len(matrix), "milvus_lite_fill_s": round(fill_s, 1),
            "milvus_lite_p50_ms": round(p50_ms(lambda: backend.search(next(it), 10), n=len(queries)), 2),
            "milvus_lite_recall_at_10": round(recall(found, truth), 4)}


def myntra_vectors(work: Path) -> np.ndarray | None:
    """The Myntra photos' vectors in the search space (whitened), from an index built once with the archive."""
    if not (MYNTRA / "products.csv").exists() or not (REPO / "model_store" / "embedding.mar").exists():
        return None
    store = open_store(work / "myntra-index")
    try:
        data = read_current(store)
    except IndexNotFound:
        from catalog.build import build_index
        from handlers.embedder import Embedder

        build_index(MYNTRA / "products.csv", work / "myntra-index", Embedder.from_archive(
            REPO / "model_store" / "embedding.mar"), work / "myntra-cache", progress=False, ann="never")
        data = read_current(store)
    whitening = data.whitening()
    return whitening.apply(data.embeddings) if whitening else np.asarray(data.embeddings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--milvus-n", type=int, default=100_000)
    parser.add_argument("--build-n", type=int, default=1_000_000,
                        help="products of the build whose peak memory is measured (scripts/bench_build_memory.py)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-search", help="reused between runs")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench_search.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    settings = AnnSettings()
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "date": datetime.now(UTC).date().isoformat(),
                    "n": args.n, "dim": args.dim, "queries": args.queries, "ann": "faiss HNSWFlat",
                    "connectivity": settings.connectivity, "expansion_add": settings.expansion_add,
                    "expansion_search": settings.expansion_search}
    vectors = clustered(args.n + args.queries, args.dim)
    matrix, queries = vectors[:args.n], vectors[args.n:]
    tag = f"{args.n}x{args.dim}-M{settings.connectivity}-ef{settings.expansion_add}"
    ann_path = args.work / f"synthetic-{tag}.faiss"
    report.update(neighbour_profile(matrix))
    report.update(bench_ann(matrix, queries, ann_path, settings))
    print(json.dumps(report), flush=True)
    index = publish_synthetic(args.work / f"index-{tag}", matrix, ann_path)
    report.update(bench_gateway(index, args.work, args.n, matrix.nbytes))
    exact = bench_gateway(index, args.work, args.n, matrix.nbytes, backend="exact", queries=40)
    report.update({f"exact_{key}": value for key, value in exact.items() if key != "raw_vector_mb"})
    print(json.dumps(report), flush=True)
    del vectors, matrix
    small = clustered(args.milvus_n + args.queries, args.dim, seed=2)
    report.update(bench_milvus(small[:args.milvus_n], small[args.milvus_n:], args.work))
    real = myntra_vectors(args.work)
    if real is not None:  # held out: the graph is built without the query rows
        rng = np.random.default_rng(3)
        held = rng.permutation(len(real))
        queries, gallery = real[held[:500]], real[held[500:]]
        got = bench_ann(gallery, queries, args.work / f"myntra-{len(gallery)}-{tag}.faiss", settings)
        report.update({f"myntra_{key}": value for key, value in got.items()})
        report["myntra_n"] = len(gallery)
        report.update({f"myntra_{key}": value for key, value in neighbour_profile(real).items()})
    print(json.dumps(report), flush=True)
    report.update(measure_build_memory(args.work, args.build_n))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

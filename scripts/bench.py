"""``make bench``: throughput of the embedding paths, as ratios against a baseline measured in the same run.

    python scripts/bench.py [--images ../shared/datasets/myntra-fashion/images] [--n 160]

1. TorchServe with request batching (batchSize 8) vs without (batchSize 1), same archive, same
   concurrent client (8 requests in flight), same images: images per second and the ratio.
2. The in-process embedder (batch 32) on the same images, as a reference for TorchServe's overhead.
3. Exact search latency over the catalog-sized matrix, and category-first ranking's cost on top of it.
Writes ``build/bench.json``. Loopback only; every loop is bounded by ``--n``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from catalog.calibration import UNCALIBRATED, Calibration
from catalog.category_first import Grouping
from gateway.search import ExactSearch, top_rows
from handlers.archive import build_archive
from handlers.client import TorchServeClient
from handlers.embedder import Embedder
from handlers.serving import REPO, TorchServe, models_setting

UNCALIBRATED_PERCENT = Calibration(UNCALIBRATED).percent


def torchserve_throughput(store: Path, workdir: Path, batch: int, blobs: list[bytes]) -> float:
    ts = TorchServe(store, workdir, 18080, 18081, 18082, grpc_ports=(17070, 17071),
                    overrides={"models": models_setting("embedding.mar", batch, 20)})
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        client = TorchServeClient(ts.url, concurrency=8, timeout=120)
        client.embed_bytes(blobs[:16])  # warm-up
        started = time.perf_counter()
        results = client.embed_bytes(blobs)
        elapsed = time.perf_counter() - started
        assert all(r.error is None for r in results)
        return len(blobs) / elapsed
    finally:
        ts.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO / "data" / "demo" / "images")
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    blobs = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))[: args.n]]
    report: dict[str, object] = {"images": len(blobs)}
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.out.parent if args.out.parent.exists() else None))
    store = work / "store"  # kept with the TorchServe logs of both runs, for a look afterwards
    _, model_id = build_archive("efficientnet_lite0", output=store)
    report["model"] = model_id
    unbatched = torchserve_throughput(store, work / "batch1", 1, blobs)
    batched = torchserve_throughput(store, work / "batch8", 8, blobs)
    report["torchserve_batch1_img_s"] = round(unbatched, 2)
    report["torchserve_batch8_img_s"] = round(batched, 2)
    report["batching_speedup"] = round(batched / unbatched, 2)

    embedder = Embedder.create("efficientnet_lite0")
    embedder.embed_bytes(blobs[:16])
    started = time.perf_counter()
    embedder.embed_bytes(blobs)
    in_process = len(blobs) / (time.perf_counter() - started)
    report["in_process_img_s"] = round(in_process, 2)
    report["torchserve_batch8_vs_in_process"] = round(batched / in_process, 2)

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(10_000, 1280)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    engine = ExactSearch(matrix)
    queries = matrix[:200]
    started = time.perf_counter()
    for q in queries:
        engine.search(q, 12)
    report["exact_search_10k_x_1280_ms"] = round((time.perf_counter() - started) / len(queries) * 1000, 3)
    # category-first ranking (the gateway's default): the vote and grouping on top of the same scores
    grouping = Grouping.from_labels([f"c{i % 40}" for i in range(len(matrix))], UNCALIBRATED_PERCENT)
    started = time.perf_counter()
    for q in queries:
        scores = engine.scores(q)
        top_rows(scores, 12, keys=grouping.guessed_first(scores)[0])
    report["category_first_search_10k_x_1280_ms"] = round((time.perf_counter() - started) / len(queries) * 1000, 3)
    report["category_first_vs_similarity_alone"] = round(
        report["category_first_search_10k_x_1280_ms"] / report["exact_search_10k_x_1280_ms"], 2)

    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\nTorchServe batching (batchSize 8 vs 1, 8 requests in flight): {report['batching_speedup']}x throughput")
    print(f"TorchServe batch 8 vs in-process embedder: {report['torchserve_batch8_vs_in_process']}x")
    print(f"Category-first vs similarity alone (10k x 1280): {report['category_first_vs_similarity_alone']}x time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The build's engines side by side on this machine (docs/SCALING.md): images/s and images/s per core of
``build_index`` on one local catalog, cold caches, for the one-process engine and Ray, each embedding through
TorchServe or in-process (the archive's runtime)::

    python scripts/bench_ray.py --images 1000 [--out build/bench-ray.json]

Ray runs as a local cluster of this machine's cores (one CPU per shard task); TorchServe with the tuned
settings of scripts/bench.py. Figures are bounded by the machine: on 2 cores every engine shares the same two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.build import build_index
from catalog.embedders import EmbedderSpec
from catalog.ray_engine import RayEngine
from devtools.process import REPO
from scripts.bench import MYNTRA, TUNED, local_catalog, serving, write_report


@dataclass(frozen=True)
class InProcess:
    """A Ray worker's in-process embedder: the archive's runtime on one thread (one task per CPU)."""

    archive: str

    def __call__(self):
        os.environ["OMP_NUM_THREADS"] = "1"
        from handlers.embedder import Embedder

        return Embedder.from_archive(Path(self.archive))


def timed(catalog: Path, work: Path, name: str, embedder, engine, shard_rows: int) -> float:
    started = time.perf_counter()
    report = build_index(catalog, work / name, embedder, work / f"{name}-cache" / "images", progress=False,
                         vector_cache=work / f"{name}-vectors", shard_rows=shard_rows, engine=engine)
    rate = report.indexed / (time.perf_counter() - started)
    assert report.embedded + report.resumed == report.indexed, report.summary()  # identical photos: once
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--shard-rows", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-ray.json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    images = sorted(MYNTRA.glob("*.jpg"))[: args.images]
    archive = REPO / "model_store" / "embedding.mar"
    out: dict = {"images": len(images), "cores": cores, "shard_rows": args.shard_rows}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        catalog = local_catalog(work / "catalog", images)
        local = InProcess(str(archive))()
        local.embed_bytes([images[0].read_bytes()] * 8)  # warm-up
        out["local_inprocess_img_s"] = timed(catalog, work, "li", local, None, args.shard_rows)
        out["ray_inprocess_img_s"] = timed(catalog, work, "ri", None, RayEngine(InProcess(str(archive))),
                                           args.shard_rows)
        with serving(REPO / "model_store", work / "ts", TUNED) as ts:
            spec = EmbedderSpec(url=ts.url, concurrency=8, timeout=120)
            client = spec.create()
            client.embed_bytes([p.read_bytes() for p in images[:64]])  # warm-up, as scripts/bench.py
            out["local_torchserve_img_s"] = timed(catalog, work, "lt", client, None, args.shard_rows)
            out["ray_torchserve_img_s"] = timed(catalog, work, "rt", None, RayEngine(spec), args.shard_rows)
    for key in [k for k in out if k.endswith("_img_s")]:
        out[key] = round(out[key], 1)
        out[key.replace("_img_s", "_img_s_per_core")] = round(out[key] / cores, 1)
    write_report(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

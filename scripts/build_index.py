"""Build a catalog index: ``python scripts/build_index.py --catalog products.csv --output DIR``.

Embeds through TorchServe by default (``--torchserve-url``), or in-process with ``--embedder local``; in shards
(``--shard-rows``) in this process, or over a Ray cluster with ``--engine ray``. A build that dies resumes from
its finished shards when run again. With ``MILVUS_URI`` set, the version's Milvus collection is filled before the
version is published (the gateways on ``SEARCH_BACKEND=milvus`` only serve it).
Bad rows never abort the build: they are listed at the end and written to the version's errors.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from catalog.build import ANN_CHOICES, Engine, build_index
from catalog.embedders import EmbedderSpec
from catalog.reader import CatalogError
from catalog.shards import MAX_SHARD_ROWS, SHARD_ROWS, ShardError, ShardFailed
from gateway.config import Config
from indexstore.store import StoreUnavailable
from modelserver.client import ModelServerError
from safeio.logs import configure as configure_logs
from safeio.paths import cache_home, printable
from search.milvus import MilvusError

log = logging.getLogger("photo.build")

def embedder_spec(args: argparse.Namespace, settings: Config) -> EmbedderSpec:
    """The model the build embeds with, from the command line and the environment."""
    return EmbedderSpec(args.embedder, args.torchserve_url, args.model, args.timeout, settings.torchserve_token,
                        settings.torchserve_key_file, args.concurrency, args.backbone,
                        str(args.weights or ""), str(args.archive or ""))


def make_engine(args: argparse.Namespace, spec: EmbedderSpec) -> Engine | None:
    """None (this process) or a Ray engine whose workers each make their own embedder from ``spec``."""
    if args.engine == "local":
        return None
    from catalog.ray_engine import RayEngine

    return RayEngine(spec, args.ray_address, args.ray_cpus_per_task)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Config.from_env()  # the one reading of the environment (TORCHSERVE_*, ANN_MIN_PRODUCTS, ...)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, required=True, help="products.csv")
    parser.add_argument("--output", required=True, help="index folder or s3://bucket/prefix")
    parser.add_argument("--embedder", choices=("torchserve", "local"), default="torchserve")
    parser.add_argument("--torchserve-url", default=settings.torchserve_url,
                        help="TorchServe, or sagemaker://ENDPOINT; TORCHSERVE_TOKEN / TORCHSERVE_KEY_FILE "
                             "when TorchServe's token authorization is on")
    parser.add_argument("--model", default=settings.torchserve_model)
    parser.add_argument("--backbone", default="auto", help="local embedder only")
    parser.add_argument("--weights", type=Path, help="local embedder only: explicit weights file")
    parser.add_argument("--archive", type=Path,
                        help="local embedder only: embed with a built model archive (its runtime), e.g. "
                             "model_store/embedding.mar")
    parser.add_argument("--cache-dir", type=Path, default=cache_home(settings.xdg_cache_home) / "images",
                        help="download cache")
    parser.add_argument("--refresh-cache", action="store_true", help="re-download remote images")
    parser.add_argument("--allow-private-hosts", action="store_true",
                        help="let image URLs point at loopback/private addresses (refused by default)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent downloads")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent TorchServe requests")
    parser.add_argument("--timeout", type=float, default=60.0, help="TorchServe read timeout, seconds")
    parser.add_argument("--keep", type=int, default=5, help="complete versions to keep (older ones deleted)")
    parser.add_argument("--ann", choices=ANN_CHOICES, default="auto",
                        help="write the HNSW graph for approximate search: auto = from ANN_MIN_PRODUCTS products "
                             "(default 100000)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where the shards are embedded: this process, or a Ray cluster (RAY_ADDRESS or "
                             "--ray-address; a local Ray when neither is set)")
    parser.add_argument("--ray-address", default=None, help="the Ray cluster, e.g. ray://head:10001 or auto")
    parser.add_argument("--ray-cpus-per-task", type=float, default=1.0, help="CPUs Ray reserves per shard")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS,
                        help=f"rows per shard, written to the store when done; a re-run resumes from them "
                             f"(1 to {MAX_SHARD_ROWS:,})")
    parser.add_argument("--local-features", action="store_true",
                        help="also store each product's keypoints, so the gateway can confirm the very product a "
                             "shopper photographed (~9 ms of one core a photo more; docs/QUALITY.md)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.shard_rows <= MAX_SHARD_ROWS:
        parser.error(f"--shard-rows must be 1 to {MAX_SHARD_ROWS:,}")
    configure_logs(settings.log_format)  # LOG_FORMAT: json (default) or text
    try:
        spec = embedder_spec(args, settings)
        engine = make_engine(args, spec)
        report = build_index(args.catalog, args.output, spec.create() if engine is None else None,
                             args.cache_dir, workers=args.workers,
                             refresh_cache=args.refresh_cache, progress=not args.no_progress, keep=args.keep,
                             allow_private_hosts=args.allow_private_hosts, ann=args.ann, ann_settings=settings.ann,
                             shard_rows=args.shard_rows, engine=engine, milvus=settings.milvus,
                             local_features=args.local_features)
    except (CatalogError, ModelServerError, StoreUnavailable, ShardError, ShardFailed, MilvusError) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    summary = report.summary()
    log.info("%s", " ".join(line.strip() for line in summary.splitlines()))  # the result, as one log record
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

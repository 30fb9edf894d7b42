"""Build a catalog index: ``python scripts/build_index.py --catalog products.csv --output DIR``.

Embeds through TorchServe by default (``--torchserve-url``), or in-process with ``--embedder local``.
Bad rows never abort the build: they are listed at the end and written to the version's errors.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from catalog.build import ANN_CHOICES, build_index
from catalog.reader import CatalogError
from gateway.config import Config
from indexstore.store import StoreUnavailable
from modelserver.client import BUILD_ATTEMPTS, ModelServerError, make_client
from safeio.logs import configure as configure_logs
from safeio.paths import cache_home, printable

log = logging.getLogger("photo.build")

def make_embedder(args: argparse.Namespace, settings: Config):
    if args.embedder == "local":
        from handlers.embedder import Embedder

        if args.archive:  # the archive's runtime (e.g. OpenVINO), checked as the handler checks it
            return Embedder.from_archive(args.archive)
        return Embedder.create(args.backbone, args.weights)
    client = make_client(args.torchserve_url, args.model, args.timeout, settings.torchserve_token,
                         settings.torchserve_key_file, attempts=BUILD_ATTEMPTS)
    client.concurrency = args.concurrency
    client.probe()  # fail fast, before any download, if TorchServe is not there
    return client


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
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    configure_logs(settings.log_format)  # LOG_FORMAT: json (default) or text
    try:
        embedder = make_embedder(args, settings)
        report = build_index(args.catalog, args.output, embedder, args.cache_dir, workers=args.workers,
                             refresh_cache=args.refresh_cache, progress=not args.no_progress, keep=args.keep,
                             allow_private_hosts=args.allow_private_hosts, ann=args.ann, ann_settings=settings.ann)
    except (CatalogError, ModelServerError, StoreUnavailable) as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    summary = report.summary()
    log.info("%s", " ".join(line.strip() for line in summary.splitlines()))  # the result, as one log record
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

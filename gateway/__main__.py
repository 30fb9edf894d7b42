"""Serve the gateway with gunicorn: ``python -m gateway [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable

from gunicorn.app.base import BaseApplication

from gateway.config import Config
from safeio.cpus import blas_threads, cpu_limit
from safeio.logs import gunicorn_config


class GatewayServer(BaseApplication):
    def __init__(self, options: dict, admin_port: int = 0, blas: int = 0) -> None:
        self.options = options
        self.admin_port = admin_port
        self.blas = blas  # BLAS threads per worker; 0: the library's default
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from gateway import create_app  # imported in the worker, after PROMETHEUS_MULTIPROC_DIR is set
        from gateway.listener import tag_admin_requests

        if self.blas:
            limit_blas(self.blas)
        return tag_admin_requests(create_app(), self.admin_port)


def limit_blas(threads: int) -> None:
    """This process's BLAS (OpenBLAS) threads: set in each worker, since the count is fixed when the library
    loads and the master loaded it before its settings were read."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    logging.getLogger("photo.gateway").info("BLAS threads per worker: %d", threads)


def _worker_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = Config.from_env()  # a bad setting stops here, named once, instead of in every worker's boot
        check_threads(args.threads, settings)
        if settings.gateway_admin_port == args.port:
            raise ValueError(f"GATEWAY_ADMIN_PORT={args.port} is the public port: give the admin listener its own")
    except ValueError as exc:
        sys.exit(f"gateway: {exc}")
    if not settings.query_token_key and not settings.query_token_secret_arn:  # one key for every worker
        from gateway.query_token import new_key

        os.environ["QUERY_TOKEN_KEY"] = new_key()
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics adds up every worker's counts
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="photo-metrics-")
    try:
        serve(args, settings)
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options, each defaulting to its GATEWAY_* variable; a port outside 1–65535 or no worker is refused."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=_whole("GATEWAY_PORT", 1, 65535),
                        default=os.environ.get("GATEWAY_PORT", "5000"))
    parser.add_argument("--workers", type=_whole("GATEWAY_WORKERS", 1), default=os.environ.get("GATEWAY_WORKERS", "2"))
    parser.add_argument("--threads", type=_whole("GATEWAY_THREADS", 2), default=os.environ.get("GATEWAY_THREADS", "8"))
    return parser.parse_args(argv)


def _whole(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], else an error naming the option's variable."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"{low}–{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number {bound} ({name})")
        return value

    return parse


def check_threads(threads: int, settings: Config) -> None:
    """Refuse settings under which image-link fetches could take every thread of a worker: uploads, page
    loads and health checks must always find one free (slow links then get 503, not the whole worker)."""
    if settings.url_fetch_concurrency >= threads:
        raise ValueError(f"URL_FETCH_CONCURRENCY={settings.url_fetch_concurrency} must be below "
                         f"GATEWAY_THREADS={threads}: image links must leave a thread for uploads and health checks")


def workers_for(requested: int, settings: Config) -> int:
    """``requested``, except 1 with Milvus Lite: its local file can be opened by one process only."""
    uri = settings.milvus_uri
    lite = settings.search_backend == "milvus" and uri and "://" not in uri
    if lite and requested > 1:
        print(f"gateway: MILVUS_URI={uri} is a Milvus Lite file, which one process can open: 1 worker "
              f"(not {requested}); raise GATEWAY_THREADS instead", file=sys.stderr)
        return 1
    return requested


def binds(args: argparse.Namespace, settings: Config) -> list[str]:
    """The public address, and the admin listener's on the same host when ``GATEWAY_ADMIN_PORT`` is set."""
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    admin = [f"{host}:{settings.gateway_admin_port}"] if settings.gateway_admin_port else []
    return [f"{host}:{args.port}", *admin]


def serve(args: argparse.Namespace, settings: Config) -> None:
    blas = blas_threads(settings.blas_threads, cpu_limit(), os.cpu_count() or 1)
    GatewayServer({
        "bind": binds(args, settings),
        "workers": workers_for(args.workers, settings),
        "threads": args.threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,  # the app logs each request itself, as JSON with its request id (gateway/request_id.py)
        "logconfig_dict": gunicorn_config(settings.log_format, "gateway.request_id.RequestIdFilter"),
        "child_exit": _worker_exit,
    }, settings.gateway_admin_port, blas).run()


if __name__ == "__main__":
    main()

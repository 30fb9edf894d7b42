"""Serve the gateway with gunicorn: ``python -m gateway [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import os

from gunicorn.app.base import BaseApplication

from gateway import create_app


class GatewayServer(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "5000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", "2")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GATEWAY_THREADS", "4")))
    args = parser.parse_args(argv)
    GatewayServer({
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": "-",
    }).run()


if __name__ == "__main__":
    main()

"""``make demo``: archive → TorchServe → sample index → gateway on http://127.0.0.1:5000. Ctrl-C stops all."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalog.build import build_index
from devtools.process import REPO, TorchServe, models_setting, wait_for_http
from gateway.config import Config
from modelarchive.archive import build_archive
from modelserver.client import TorchServeClient
from safeio.paths import cache_home


def _interrupt(*_: object) -> None:
    """SIGTERM stops the demo the same way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=REPO / "data" / "demo" / "products.csv")
    parser.add_argument("--index", default=str(REPO / "index" / "demo"))
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)

    archive = build_archive(args.backbone, output=REPO / "model_store")
    print(f"[demo] archive {archive.path} serves {archive.backbone_id} with runtime {archive.runtime}", flush=True)
    ts = TorchServe(REPO / "model_store", REPO / "logs" / "torchserve", 8080, 8081, 8082, grpc_ports=(7070, 7071),
                    overrides={"models": models_setting(archive.path.name, 4, 2, workers=2)},
                    env={"PHOTO_THREADS": "1"})  # the tuned settings: docs/PERFORMANCE.md
    gateway: subprocess.Popen | None = None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print("[demo] starting TorchServe on http://127.0.0.1:8080 (logs in logs/torchserve)", flush=True)
        ts.start().wait_ready()
        images = cache_home(Config.from_env().xdg_cache_home) / "images"
        # with each product's keypoints: the sample's shopper photos find the very product (docs/QUALITY.md)
        report = build_index(args.catalog, args.index, TorchServeClient(ts.url), images, local_features=True)
        print(report.summary(), flush=True)
        env = {**os.environ, "INDEX_URI": args.index, "TORCHSERVE_URL": ts.url,
               "CATALOG_DIR": str(args.catalog.resolve().parent)}
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(args.port)], env=env, cwd=REPO)
        url = f"http://127.0.0.1:{args.port}"
        wait_for_http(f"{url}/readyz", timeout=30)
        print(f"\n[demo] photo is running: open {url}  (Ctrl-C stops everything)\n", flush=True)
        while gateway.poll() is None:
            time.sleep(0.5)
        return gateway.returncode or 0
    except KeyboardInterrupt:
        print("\n[demo] stopping", flush=True)
        return 0
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(15)
        ts.stop()


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: real files, a real local HTTP server, a real TorchServe, a real gunicorn gateway."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from catalog.build import build_index
from devtools.process import REPO, TorchServe, free_ports, models_setting
from gateway import create_app
from gateway.config import Config
from modelio.imaging import ImageError
from modelserver.client import ModelServerError

DEMO_CSV = REPO / "data" / "demo" / "products.csv"
DEMO_DIR = DEMO_CSV.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """The URL of a loopback port where nothing listens, bound for the test's length: connections to it are
    refused, and no port chosen meanwhile (a gateway's own) can be it, as a closed ``free_port()`` could."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def jpeg_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def demo_image(pid: str | int) -> bytes:
    return (DEMO_DIR / "images" / f"{pid}.jpg").read_bytes()


# --------------------------------------------------------------------------- local HTTP server


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        route = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404, "Not Found")
            return
        status, headers, body = route
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LocalHTTPServer:
    """Serves ``routes[path] = (status, headers, body)`` on loopback and records every request path."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.routes = {}  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[str]:
        return self.server.requests  # type: ignore[attr-defined]

    def add(self, path: str, body: bytes, status: int = 200, content_type: str = "image/jpeg", **headers) -> str:
        self.server.routes[path] = (status, {"Content-Type": content_type, **headers}, body)  # type: ignore
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    server = LocalHTTPServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def local_embedder():
    """The in-process embedder of the offline backbone (efficientnet_lite0, real ImageNet weights)."""
    from handlers.embedder import Embedder

    return Embedder.create("efficientnet_lite0")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    from modelarchive.archive import build_archive

    store = tmp_path_factory.mktemp("model_store")
    build_archive("efficientnet_lite0", output=store)
    return store


@pytest.fixture(scope="session")
def torchserve(model_store, tmp_path_factory) -> Iterator[TorchServe]:
    """A real TorchServe process serving the built archive with batching on (batch 4, 200 ms)."""
    ts = TorchServe(model_store, tmp_path_factory.mktemp("torchserve"),
                    overrides={"models": models_setting("embedding.mar", batch_size=4, max_batch_delay_ms=200)})
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="session")
def demo_index(torchserve, tmp_path_factory) -> Path:
    """The sample catalog indexed through the real TorchServe by the build CLI."""
    from scripts.build_index import main as build_cli

    out = tmp_path_factory.mktemp("e2e") / "index"
    code = build_cli(["--catalog", str(DEMO_CSV), "--output", str(out), "--torchserve-url", torchserve.url,
                      "--cache-dir", str(out.parent / "cache"), "--no-progress"])
    assert code == 0
    return out


# --------------------------------------------------------------------------- in-process gateway


class StubClient:
    """Stands in for TorchServeClient: same interface, vectors from the in-process embedder."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.down = False
        self.calls = 0
        self.maps = 0  # feature maps asked for (gateway/outline.py)

    def embed(self, blob: bytes):
        self.calls += 1
        if self.down:
            raise ModelServerError("embedding service unreachable at http://127.0.0.1:1: ConnectionError")
        res = self.embedder.embed_bytes([blob])[0]
        if res.error:
            raise ImageError(res.error)
        return res.vector, self.embedder.backbone_id

    def probe(self) -> str:
        return self.embed(jpeg_bytes())[1]

    def feature_map(self, blob: bytes, side: int):
        self.maps += 1
        if self.down:
            raise ModelServerError("embedding service unreachable at http://127.0.0.1:1: ConnectionError")
        try:
            return self.embedder.feature_map(blob, side), self.embedder.backbone_id
        except ValueError as exc:  # ImageError too: the server's 400
            raise ImageError(str(exc)) from None


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, local_embedder):
    """The first 48 demo products, indexed in-process."""
    root = tmp_path_factory.mktemp("small")
    lines = DEMO_CSV.read_text().splitlines()
    (root / "products.csv").write_text("\n".join(lines[:49]) + "\n")
    (root / "images").mkdir()
    for line in lines[1:49]:
        pid = line.split(",", 1)[0]
        (root / "images" / f"{pid}.jpg").write_bytes(demo_image(pid))
    build_index(root / "products.csv", root / "index", local_embedder, root / "cache", progress=False)
    return root / "index"


@pytest.fixture(scope="session")
def priced_index(tmp_path_factory, local_embedder):
    """The first 24 demo products with prices 0, 10, 20, ... (every fourth left unknown), indexed in-process."""
    root = tmp_path_factory.mktemp("priced")
    lines = DEMO_CSV.read_text().splitlines()
    rows = [lines[0]]
    (root / "images").mkdir()
    for n, line in enumerate(lines[1:25]):
        pid, name, category, _, rest = line.split(",", 4)
        rows.append(",".join([pid, name, category, "" if n % 4 == 3 else str(n * 10), rest]))
        (root / "images" / f"{pid}.jpg").write_bytes(demo_image(pid))
    (root / "products.csv").write_text("\n".join(rows) + "\n")
    build_index(root / "products.csv", root / "index", local_embedder, root / "cache", progress=False)
    return root / "index"


@pytest.fixture
def stub(local_embedder):
    return StubClient(local_embedder)


@pytest.fixture
def client(small_index, stub, tmp_path):
    config = Config(index_uri=str(small_index), max_upload_mb=1, ready_cache_s=0, index_poll_s=0,
                    index_cache_dir=str(tmp_path / "copy"), catalog_dir=str(small_index.parent))
    app = create_app(config, client=stub)
    return app.test_client()



# --------------------------------------------------------------------------- gateway process


#: Flask test-client environ of a request that came in through the admin listener (gateway/listener.py).
ADMIN = {"photo.admin_listener": True}


class GatewayProcess:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port, admin_port = free_ports(2)  # two free_port() calls in a row can return the same port
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = int(env.setdefault("GATEWAY_ADMIN_PORT", str(admin_port)))
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = workdir / "gateway.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(self.port), "--workers", "2"],
            env={**os.environ, **env}, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise TimeoutError(self.log_path.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self._log.close()


@pytest.fixture
def start_gateway(tmp_path) -> Iterator:
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        env.setdefault("INDEX_CACHE_DIR", str(tmp_path / "index-cache"))
        gw = GatewayProcess(env, tmp_path)
        started.append(gw)
        gw.wait_up()
        return gw

    yield start
    for gw in started:
        gw.stop()

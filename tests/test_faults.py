"""Faults with real processes: TorchServe killed mid-load and restarted, a TorchServe that hangs, a bounded
load test, and the OpenAPI contract checked by schemathesis against a running gateway."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from devtools.process import TorchServe, models_setting
from gateway import create_app
from gateway.config import Config
from gateway.routes import SEARCH_DOWN
from modelserver.client import TorchServeClient
from scripts.loadtest import run_load
from tests.conftest import DEMO_DIR, demo_image

pytestmark = pytest.mark.integration
UPLOADS = [demo_image(p.stem) for p in sorted((DEMO_DIR / "images").glob("*.jpg"))[:20]]
IDS = [p.stem for p in sorted((DEMO_DIR / "images").glob("*.jpg"))]


@pytest.fixture(scope="module")
def served_demo(torchserve, tmp_path_factory, local_embedder):
    from catalog.build import build_index

    out = tmp_path_factory.mktemp("faults") / "index"
    build_index(DEMO_DIR / "products.csv", out, local_embedder, out.parent / "cache", progress=False)
    return out


def test_torchserve_killed_mid_load_then_recovers_by_itself(model_store, tmp_path, served_demo, start_gateway):
    ts = TorchServe(model_store, tmp_path / "ts",
                    overrides={"models": models_setting("embedding.mar", 4, 50)})
    ts.start().wait_ready(timeout=240)
    try:
        gw = start_gateway(INDEX_URI=str(served_demo), TORCHSERVE_URL=ts.url, TORCHSERVE_TIMEOUT="5",
                           READY_CACHE_S="0")
        assert requests.get(f"{gw.url}/readyz", timeout=30).status_code == 200
        seen: list[tuple[str, int, str]] = []
        stop = threading.Event()

        def loop():
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline:
                search = requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", UPLOADS[0])}, timeout=30)
                similar = requests.get(f"{gw.url}/api/products/{IDS[0]}/similar", timeout=30)
                seen.append(("search", search.status_code, search.text[:200]))
                seen.append(("similar", similar.status_code, similar.text[:200]))

        worker = threading.Thread(target=loop)
        worker.start()
        time.sleep(2)
        ts.stop(timeout=10)  # TorchServe dies mid-load
        time.sleep(3)
        down = requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", UPLOADS[1])}, timeout=30)
        assert down.status_code == 503 and "temporarily unavailable" in down.json()["error"]
        readyz = requests.get(f"{gw.admin_url}/readyz", timeout=30)
        assert readyz.status_code == 503 and "not ready" in readyz.json()["reason"]
        ts.start().wait_ready(timeout=240)  # same ports: the gateway must find it again by itself
        deadline = time.monotonic() + 60
        while requests.get(f"{gw.url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "gateway did not recover"
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        worker.join()
        codes = {(kind, code) for kind, code, _ in seen}
        assert ("search", 503) in codes and ("search", 200) in codes
        assert {code for kind, code, _ in seen if kind == "similar"} == {200}  # no model call, never down
        assert all(code in (200, 503) for _, code, _ in seen), [s for s in seen if s[1] not in (200, 503)]
        assert seen[-2][1] == 200  # recovered
    finally:
        ts.stop()


class _Hanging(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        time.sleep(4)
        self.send_response(200)
        self.end_headers()


def test_slow_torchserve_is_a_bounded_503(served_demo, tmp_path, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = Config(index_uri=str(served_demo), torchserve_url=url, torchserve_timeout=1, index_poll_s=0,
                        index_cache_dir=str(tmp_path / "copy"))
        app = create_app(config, TorchServeClient(url, timeout=1)).test_client()
        started = time.monotonic()
        resp = app.post("/api/search", data={"file": (io.BytesIO(UPLOADS[0]), "q.jpg")})
        assert resp.status_code == 503 and resp.get_json()["error"] == SEARCH_DOWN  # the shopper's words ...
        assert "timed out after 1s" in caplog.text  # ... and the reason, in the log
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()


def test_bounded_load_has_no_5xx(torchserve, served_demo, start_gateway, http_server):
    urls = [http_server.add(f"/q/{i}.jpg", blob) for i, blob in enumerate(UPLOADS[:5])]
    gw = start_gateway(INDEX_URI=str(served_demo), TORCHSERVE_URL=torchserve.url, ALLOW_PRIVATE_URLS="1")
    report = run_load(gw.url, clients=6, seconds=15, uploads=UPLOADS, image_urls=urls, product_ids=IDS,
                      max_requests=3000)
    print("load:", report)
    assert report["errors_5xx"] == 0 and report["requests"] > 30
    assert set(report["kinds"]) == {"upload", "url", "similar"}
    for kind in report["kinds"].values():
        assert set(kind["statuses"]) == {"200"}


def test_api_matches_its_openapi_contract(torchserve, served_demo, start_gateway, tmp_path):
    """schemathesis (its CLI, in its own process) generates requests from /openapi.json, valid and invalid,
    and checks every answer: never a 5xx, status codes, content types and bodies as documented."""
    gw = start_gateway(INDEX_URI=str(served_demo), TORCHSERVE_URL=torchserve.url)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{gw.url}/openapi.json",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
           "response_schema_conformance", "--max-examples", "30", "--seed", "1", "--request-timeout", "60"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= 50


class _DripHeaders(BaseHTTPRequestHandler):
    """Sends its status line and then a header one byte every 0.2 s: each read is quick, the answer never ends."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):  # 20 s at most: the gateway's deadline ends it long before
                self.wfile.write(b"X")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the gateway hung up: what its deadline is for


def test_slow_image_links_never_take_the_threads_uploads_and_health_checks_need(torchserve, served_demo,
                                                                                 start_gateway):
    """Twelve links to a server that drips its headers, at once, against 2 workers × 3 threads with at most 2
    fetches per worker: each link ends at the 3 s deadline (504) or is refused at once (503), while /healthz and
    an upload search keep answering quickly."""
    from concurrent.futures import ThreadPoolExecutor

    drip = ThreadingHTTPServer(("127.0.0.1", 0), _DripHeaders)
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    gw = start_gateway(INDEX_URI=str(served_demo), TORCHSERVE_URL=torchserve.url, ALLOW_PRIVATE_URLS="1",
                       GATEWAY_THREADS="3", URL_FETCH_CONCURRENCY="2", URL_FETCH_TIMEOUT="3")
    link = f"http://127.0.0.1:{drip.server_address[1]}/slow.jpg"
    try:
        with ThreadPoolExecutor(12) as pool:
            started = time.monotonic()
            links = [pool.submit(requests.post, f"{gw.url}/api/search", json={"image_url": link}, timeout=30)
                     for _ in range(12)]
            time.sleep(0.5)  # the links are in flight
            health_started = time.monotonic()
            assert requests.get(f"{gw.url}/healthz", timeout=5).status_code == 200
            health_s = time.monotonic() - health_started
            upload = requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", UPLOADS[0])}, timeout=30)
            upload_s = time.monotonic() - health_started
            answers = [f.result() for f in links]
            links_s = time.monotonic() - started
    finally:
        drip.shutdown()
    assert upload.status_code == 200 and upload_s < 2.5, upload_s  # not behind the links' 3 s
    assert health_s < 1, health_s
    assert {a.status_code for a in answers} <= {503, 504} and 504 in {a.status_code for a in answers}
    assert links_s < 10, links_s  # every link ended by its deadline, none held on by the drip
    assert all("127.0.0.1" not in a.text for a in answers)

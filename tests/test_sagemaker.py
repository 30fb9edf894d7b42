"""The gateway's SageMaker mode (modelserver/client.py SageMakerClient) against a local stand-in that speaks
the SageMaker runtime's InvokeEndpoint request and response shapes and forwards to a real TorchServe."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from gateway import create_app
from gateway.config import Config
from modelserver.client import SageMakerClient, make_client
from tests.conftest import demo_image

pytestmark = pytest.mark.integration
ENDPOINT = "photo-embedding"


class _Runtime(BaseHTTPRequestHandler):
    """POST /endpoints/{name}/invocations → the container's answer, or SageMaker's ModelError (424)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls.append((self.path, self.headers.get("Accept"), self.headers.get("Authorization", "")))
        if self.path != f"/endpoints/{ENDPOINT}/invocations":
            return self._send(400, {"message": "Endpoint not found"}, "ValidationError")
        resp = requests.post(f"{self.server.torchserve}/predictions/embedding", data=body, timeout=60,
                             headers={"Accept": self.headers.get("Accept", "")})
        if resp.status_code == 200:
            return self._send(200, resp.content)
        return self._send(424, {"ErrorCode": "CLIENT_ERROR_FROM_MODEL", "OriginalStatusCode": resp.status_code,
                                "OriginalMessage": resp.text, "LogStreamArn": "arn:aws:logs:test",
                                "Message": f"Received client error ({resp.status_code}) from primary"}, "ModelError")

    def _send(self, status: int, body, error_type: str | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def sagemaker(torchserve, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Runtime)
    server.torchserve, server.calls = torchserve.url, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield server
    server.shutdown()
    server.server_close()


def test_client_gets_the_same_vectors_as_from_torchserve(sagemaker, local_embedder):
    client = make_client(f"sagemaker://{ENDPOINT}")
    assert isinstance(client, SageMakerClient)
    vector, backbone_id = client.embed(demo_image("10109"))
    assert backbone_id == local_embedder.backbone_id
    assert float(vector @ local_embedder.embed_one(demo_image("10109"))) >= 0.999
    path, accept, auth = sagemaker.calls[0]
    assert path == f"/endpoints/{ENDPOINT}/invocations" and "AWS4-HMAC-SHA256" in auth  # signed like AWS
    results = client.embed_bytes([demo_image("10109"), b"not an image"])
    assert results[0].error is None and "not a supported image" in results[1].error


def test_gateway_in_sagemaker_mode(sagemaker, small_index, tmp_path):
    config = Config(index_uri=str(small_index), torchserve_url=f"sagemaker://{ENDPOINT}", index_poll_s=0,
                    index_cache_dir=str(tmp_path / "copy"))
    client = create_app(config).test_client()
    ok = client.post("/api/search", data={"file": (io.BytesIO(demo_image("10109")), "q.jpg"), "threshold": "0"},
                     content_type="multipart/form-data")
    assert ok.status_code == 200 and ok.get_json()["results"][0]["id"] == "10109"
    bad = client.post("/api/search", data={"file": (io.BytesIO(b"GIF89a nope"), "q.gif")},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and "not a picture we can open" in bad.get_json()["error"]
    assert client.get("/readyz").status_code == 200
    with pytest.raises(ValueError, match="no SageMaker endpoint"):
        make_client("sagemaker://")

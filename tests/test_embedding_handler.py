"""The archive served by a REAL TorchServe process (handlers/embedding_handler.py, handlers/archive.py)."""

from __future__ import annotations

import base64
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import DEMO_DIR, demo_image

pytestmark = pytest.mark.integration

IDS = [p.stem for p in sorted((DEMO_DIR / "images").glob("*.jpg"))[:: 24]]  # 10 products across types


def post(ts, data: bytes, content_type: str = "application/octet-stream") -> requests.Response:
    return requests.post(f"{ts.url}/predictions/embedding", data=data, headers={"Content-Type": content_type},
                         timeout=60)


def test_archive_carries_handler_package_and_backbone(model_store):
    names = zipfile.ZipFile(model_store / "embedding.mar").namelist()
    assert {"embedding_handler.py", "backbone.json", "handlers/backbones.py", "handlers/imaging.py"} <= set(names)


def test_vectors_equal_in_process_vectors(torchserve, local_embedder):
    for pid in IDS:
        resp = post(torchserve, demo_image(pid))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["dim"] == 1280 and body["model"] == local_embedder.model_id
        served = np.asarray(body["embedding"], dtype=np.float32)
        local = local_embedder.embed_one(demo_image(pid))
        assert float(served @ local) >= 0.9999
        assert abs(float(np.linalg.norm(served)) - 1.0) < 1e-4


def test_concurrent_requests_are_batched_and_each_gets_its_own_vector(torchserve, local_embedder):
    described = requests.get(f"{torchserve.management_url}/models/embedding", timeout=5).json()[0]
    assert described["batchSize"] == 4
    blobs = [demo_image(pid) for pid in IDS] * 2
    with ThreadPoolExecutor(max_workers=len(blobs)) as pool:
        responses = list(pool.map(lambda b: post(torchserve, b), blobs))
    expected = [local_embedder.embed_one(b) for b in blobs]
    for resp, want in zip(responses, expected, strict=True):
        assert resp.status_code == 200
        got = np.asarray(resp.json()["embedding"], dtype=np.float32)
        assert float(got @ want) >= 0.9999
    # The images differ, so a mixed-up batch would pair a response with another image's vector.
    assert float(expected[0] @ expected[1]) < 0.99
    log = (torchserve.workdir / "logs" / "model_log.log").read_text()
    assert "batch of 4" in log or "batch of 3" in log or "batch of 2" in log, "no request was ever batched"


def test_corrupt_image_in_a_batch_fails_alone(torchserve, local_embedder):
    good = [demo_image(pid) for pid in IDS[:5]]
    truncated = demo_image(IDS[5])[:1000]
    blobs = good[:2] + [truncated] + good[2:] + [b"not an image at all"]
    with ThreadPoolExecutor(max_workers=len(blobs)) as pool:
        responses = list(pool.map(lambda b: post(torchserve, b), blobs))
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 400, 200, 200, 200, 400]
    assert "truncated" in responses[2].json()["error"]
    assert "not a supported image" in responses[-1].json()["error"]
    for resp, blob in zip(responses, blobs, strict=True):
        if resp.status_code == 200:
            assert float(np.asarray(resp.json()["embedding"]) @ local_embedder.embed_one(blob)) >= 0.9999
    # The worker survived: the next request is served.
    assert post(torchserve, good[0]).status_code == 200


def test_base64_json_and_form_upload(torchserve, local_embedder):
    blob = demo_image(IDS[0])
    want = local_embedder.embed_one(blob)
    as_json = requests.post(f"{torchserve.url}/predictions/embedding",
                            json={"image": base64.b64encode(blob).decode()}, timeout=60)
    as_form = requests.post(f"{torchserve.url}/predictions/embedding", files={"data": blob}, timeout=60)
    for resp in (as_json, as_form):
        assert resp.status_code == 200, resp.text
        assert float(np.asarray(resp.json()["embedding"]) @ want) >= 0.9999
    empty_json = requests.post(f"{torchserve.url}/predictions/embedding", json={"nothing": 1}, timeout=60)
    assert empty_json.status_code == 400 and "empty image" in empty_json.json()["error"]

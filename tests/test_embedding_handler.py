"""The archive served by a REAL TorchServe process (handlers/embedding_handler.py)."""

from __future__ import annotations

import base64
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


def test_vectors_equal_in_process_vectors(torchserve, local_embedder):
    for pid in IDS:
        resp = post(torchserve, demo_image(pid))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["dim"] == 1280 and body["model"] == local_embedder.backbone_id
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


@pytest.fixture(scope="module", params=["eager", "onnxruntime", "openvino"])
def runtime_server(request, tmp_path_factory):
    """A real TorchServe serving an archive built with one explicit runtime (batching on)."""
    from devtools.process import TorchServe, models_setting
    from modelarchive.archive import build_archive

    store = tmp_path_factory.mktemp(f"store-{request.param}")
    archive = build_archive("efficientnet_lite0", output=store, runtime=request.param)
    assert archive.runtime == request.param
    ts = TorchServe(store, tmp_path_factory.mktemp(f"ts-{request.param}"),
                    overrides={"models": models_setting("embedding.mar", batch_size=4, max_batch_delay_ms=100)})
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        yield request.param, ts
    finally:
        ts.stop()


def test_each_runtime_serves_eager_vectors_and_a_bad_image_fails_alone(runtime_server, local_embedder):
    runtime, ts = runtime_server
    blobs = [demo_image(pid) for pid in IDS[:6]]
    blobs.insert(3, b"GIF89a not really")
    with ThreadPoolExecutor(max_workers=len(blobs)) as pool:  # concurrent, so TorchServe batches them
        responses = list(pool.map(lambda b: post(ts, b), blobs))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200]
    assert "not a supported image" in responses[3].json()["error"]
    for resp, blob in zip(responses, blobs, strict=True):
        if resp.status_code == 200:
            body = resp.json()
            assert body["runtime"] == runtime and body["model"] == local_embedder.backbone_id
            assert float(np.asarray(body["embedding"]) @ local_embedder.embed_one(blob)) >= 0.999


def test_several_images_in_one_request_through_the_real_torchserve(runtime_server, local_embedder):
    """The build's groups (modelio/protocol.py): 7 images with a corrupt one in the middle, sent 3 to a request,
    come back aligned with their inputs, the corrupt one alone refused; the vectors are the one-image ones."""
    from modelserver.client import TorchServeClient
    from ranking.appearance import colour_histogram

    _, ts = runtime_server
    blobs = [demo_image(pid) for pid in IDS[:6]]
    blobs.insert(3, b"GIF89a not really")
    client = TorchServeClient(ts.url, concurrency=3)
    client.images_per_request = 3
    sent: list[bytes] = []
    post = client._post
    client._post = lambda body, content_type="application/octet-stream": sent.append(body) or post(body, content_type)
    results = client.embed_bytes(blobs)
    assert sorted(body.startswith(b'{"images"') for body in sent) == [False, True, True]  # 3 + 3, and 1 alone
    assert [r.error is None for r in results] == [True, True, True, False, True, True, True]
    assert "not a supported image" in results[3].error
    for blob, result in zip(blobs, results, strict=True):
        if result.error is None:
            assert float(result.vector @ local_embedder.embed_one(blob)) >= 0.999
    # the build asks for each image's colour too: every group (the last image alone included) carries it
    sent.clear()
    coloured = client.embed_bytes(blobs, colour=True)
    assert all(body.startswith(b'{"images"') and b'"colour": true' in body for body in sent) and len(sent) == 3
    for blob, result in zip(blobs, coloured, strict=True):
        if result.error is None:
            np.testing.assert_allclose(result.colour, colour_histogram(blob, 40_000_000), atol=1e-6)
    assert coloured[3].error is not None and coloured[3].colour is None


def test_default_runtime_keeps_retrieval_quality(demo_index, local_embedder):
    """The sample catalog indexed through TorchServe with the default (optimised) runtime ranks like eager
    PyTorch in-process: leave-one-out same-category precision within 0.005."""
    from evaluation.metrics import evaluate
    from indexstore.store import open_store, read_current
    from ranking.calibration import Calibration
    from ranking.category_first import Grouping

    index = read_current(open_store(demo_index))
    labels = [p["category"] for p in index.products]
    images = [(DEMO_DIR / p["image_url"]).read_bytes() for p in index.products]
    eager_vectors = np.stack([r.vector for r in local_embedder.embed_bytes(images)])
    assert float((eager_vectors * index.embeddings).sum(axis=1).min()) >= 0.999
    percent = Calibration.from_manifest(index.manifest).percent  # the gateway's vote scale, for both
    served = evaluate(index.embeddings, labels, grouping=Grouping.from_labels(labels, percent)).metrics
    eager = evaluate(eager_vectors, labels, grouping=Grouping.from_labels(labels, percent)).metrics
    for key in ("precision@1", "precision@5", "precision@10", "mAP@10"):
        assert abs(served[key] - eager[key]) <= 0.005, (key, served[key], eager[key])


def test_compact_answer_when_asked_for(torchserve):
    """``Accept: COMPACT`` (modelio/protocol.py) gets base64 float32, the same vector as the JSON list."""
    from modelio.protocol import COMPACT, decode_vector

    blob = demo_image(IDS[0])
    plain = post(torchserve, blob).json()
    compact = requests.post(f"{torchserve.url}/predictions/embedding", data=blob, timeout=60,
                            headers={"Content-Type": "application/octet-stream", "Accept": COMPACT}).json()
    assert "embedding" in plain and "embedding_b64" not in plain
    assert "embedding_b64" in compact and "embedding" not in compact
    np.testing.assert_array_equal(decode_vector(compact), np.asarray(plain["embedding"], dtype=np.float32))


def test_a_feature_map_through_the_real_torchserve_and_its_client(torchserve, local_embedder):
    """The client asks the served archive for a photo's feature map (beside vector requests in flight): the
    map is the in-process one (float16 on the wire); a request that is not an image, and one with a side out of
    range, are refused as image errors, and the worker goes on serving."""
    from modelio.imaging import ImageError
    from modelserver.client import TorchServeClient

    client = TorchServeClient(torchserve.url)
    blob = demo_image(IDS[0])
    with ThreadPoolExecutor(max_workers=3) as pool:
        vectors = [pool.submit(client.embed, demo_image(pid)) for pid in IDS[1:3]]
        fmap, model = client.feature_map(blob, 96)
        assert all(v.result()[1] == model for v in vectors)
    want = local_embedder.feature_map(blob, 96)
    assert model == local_embedder.backbone_id and fmap.shape == want.shape == (local_embedder.dim, 3, 3)
    assert np.allclose(fmap, want, rtol=2e-3, atol=2e-2)
    with pytest.raises(ImageError, match="not a supported image"):
        client.feature_map(b"not an image at all", 96)
    with pytest.raises(ImageError, match="64 to 640"):
        client.feature_map(blob, 1000)
    assert post(torchserve, blob).status_code == 200

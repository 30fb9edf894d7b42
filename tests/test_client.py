"""The TorchServe HTTP client (modelserver/client.py) against a local stand-in speaking TorchServe's answers.

The real TorchServe is exercised through this client by the integration tests (test_e2e, test_faults)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from modelio.imaging import ImageError
from modelio.protocol import COMPACT
from modelserver.client import ModelServerError, TorchServeClient


class _Fake(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        status, answer = self.server.answer(body)  # type: ignore[attr-defined]
        if answer is None:  # hang up without a word
            self.close_connection = True
            return
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.answer = lambda body: (200, {"embedding": [0.6, 0.8], "dim": 2, "model": "m-1"})
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(server, **kw) -> TorchServeClient:
    return TorchServeClient(f"http://127.0.0.1:{server.server_address[1]}", **kw)


def test_vector_and_backbone_id(fake):
    client = client_for(fake)
    vector, backbone_id = client.embed(b"img")
    assert vector.dtype == np.float32 and vector.tolist() == [np.float32(0.6), np.float32(0.8)]
    assert backbone_id == "m-1" and client.backbone_id == "m-1"


def grouped(per_image, seen: list | None = None):
    """A stand-in answering one-image requests with ``per_image(body)`` and several-image ones (modelio/protocol.py)
    with an entry per image; ``seen`` collects how many images each request carried."""
    def answer(body: bytes):
        if not body.startswith(b'{"images"'):
            seen is not None and seen.append(1)
            return per_image(body)
        images = [base64.b64decode(item) for item in json.loads(body)["images"]]
        seen is not None and seen.append(len(images))
        entries = [b if st == 200 else {"error": b["error"]} for st, b in map(per_image, images)]
        return 200, {"model": "m-1", "runtime": "eager", "results": entries}
    return answer


def one_value(body: bytes):
    """A 1-d vector naming the image (its first byte), or a refusal for b"bad"."""
    if body == b"bad":
        return 400, {"error": "not a supported image"}
    return 200, {"embedding": [float(body[0])], "dim": 1, "model": "m-1"}


def test_refused_image_is_an_image_error_and_a_batch_keeps_going(fake):
    fake.answer = grouped(one_value)
    client = client_for(fake)
    with pytest.raises(ImageError, match="not a supported image"):
        client.embed(b"bad")
    results = client.embed_bytes([b"good", b"bad", b"good"])
    assert [r.error for r in results] == [None, "not a supported image", None]


def test_images_travel_in_groups_and_come_back_aligned(fake):
    seen: list[int] = []
    fake.answer = grouped(one_value, seen)
    client = client_for(fake)
    blobs = [bytes([i + 1]) * 10 for i in range(19)]
    blobs[9] = b"bad"
    results = client.embed_bytes(blobs)
    assert sorted(seen) == [3, 8, 8]  # 19 images: two full groups of 8 and the rest
    assert [r.error for r in results][8:11] == [None, "not a supported image", None]
    assert [r.vector[0] for i, r in enumerate(results) if i != 9] == [i + 1 for i in range(19) if i != 9]
    assert client.backbone_id == "m-1"


@pytest.mark.parametrize(("answer", "message"), [
    ((200, {"model": "m-1", "results": [{"error": "x"}]}), "malformed group: expected 2 results, got 1"),
    ((200, {"model": "m-1", "results": ["x", "y"]}), "malformed group: a result is not an object"),
    ((200, {"model": "m-1", "results": [{"embedding": [1.0], "dim": 2}, {"error": "x"}]}), "malformed group"),
    ((400, {"error": "images must be a list of 1 to 64 base64 images"}), "answered 400: images must be a list"),
    ((503, {"code": 503, "message": "Model is not ready"}), "answered 503: Model is not ready"),
])
def test_a_group_answer_that_does_not_fit_is_a_model_server_error(fake, answer, message):
    fake.answer = lambda body: answer
    with pytest.raises(ModelServerError, match=message):
        client_for(fake).embed_group([b"a", b"b"])


def test_image_groups_on_both_sides_of_their_limits():
    from modelserver.client import image_groups

    assert image_groups([1] * 8, 8, 100) == [list(range(8))]  # exactly the count: one group
    assert image_groups([1] * 9, 8, 100) == [list(range(8)), [8]]  # one more: a second
    assert image_groups([50, 50], 8, 100) == [[0, 1]]  # exactly the bytes: together
    assert image_groups([50, 51], 8, 100) == [[0], [1]]  # one byte more: apart
    assert image_groups([200, 1, 1], 8, 100) == [[0], [1, 2]]  # a big image goes alone
    assert image_groups([1] * 70, 100, 10**9) == [list(range(64)), list(range(64, 70))]  # never over MAX_IMAGES
    assert image_groups([], 8, 100) == [] and image_groups([1, 1], 0, 100) == [[0], [1]]


@pytest.mark.parametrize(("status", "answer", "message"), [
    (503, {"code": 503, "message": "Model is not ready"}, "answered 503: Model is not ready"),
    (200, b"<html>proxy page</html>", "answered 200"),
    (200, {"something": "else"}, "answered 200"),
])
def test_server_trouble_is_a_model_server_error(fake, status, answer, message):
    fake.answer = lambda body: (status, answer)
    with pytest.raises(ModelServerError, match=message):
        client_for(fake).embed(b"img")


def test_unreachable_server():
    """Nothing listening is "unreachable" at once, not a timeout (urllib3 files a refused connection under its
    connect timeouts)."""
    started = time.monotonic()
    with pytest.raises(ModelServerError, match=r"unreachable at http://127.0.0.1:9: NewConnectionError"):
        TorchServeClient("http://127.0.0.1:9", timeout=5).embed(b"img")
    assert time.monotonic() - started < 2


def test_a_slow_server_times_out_at_the_clients_timeout_and_the_next_call_works(fake):
    """A server slower than ``timeout`` is a timeout naming it (the gateway's 503, in test_faults through the
    page); the pool is not left broken by it: the next call, answered in time, gets its vector."""
    slow = threading.Event()

    def answer(body: bytes) -> tuple[int, dict]:
        slow.wait(2)  # the first call gives up after 0.3 s; the test then lets this one finish
        return 200, {"embedding": [1.0], "dim": 1, "model": "m"}

    fake.answer = answer
    client = client_for(fake, timeout=0.3)
    with pytest.raises(ModelServerError, match=r"timed out after 0.3s"):
        client.embed(b"img")
    slow.set()
    vector, model = client.embed(b"img")
    assert vector.tolist() == [1.0] and model == "m"


def test_a_dropped_connection_is_a_model_server_error_and_a_post_is_never_sent_twice(fake):
    fake.answer = lambda body: (0, None)
    with pytest.raises(ModelServerError, match=r"unreachable at http://127.0.0.1:\d+: ProtocolError"):
        client_for(fake).embed(b"img")
    assert len(fake.paths) == 1  # no retry of a POST: an image is embedded once per call


def test_the_url_may_carry_a_path_prefix(fake):
    """TorchServe behind a path (a proxy's ``/ts/``): the predictions path goes under it."""
    url = f"http://127.0.0.1:{fake.server_address[1]}/ts/"
    assert TorchServeClient(url, model="shoes").embed(b"img")[1] == "m-1"
    assert TorchServeClient(url.rstrip("/")).embed(b"img")[1] == "m-1"
    assert client_for(fake).embed(b"img")[1] == "m-1"
    assert fake.paths == ["/ts/predictions/shoes", "/ts/predictions/embedding", "/predictions/embedding"]


def test_compact_answer_is_asked_for_and_decoded(fake):
    seen = {}

    def answer(body):
        return 200, {"embedding_b64": base64.b64encode(np.array([0.6, 0.8], "<f4").tobytes()).decode(),
                     "dim": 2, "model": "m-1"}

    fake.answer = answer
    fake.RequestHandlerClass = type("Recording", (_Fake,), {"do_POST": lambda self: (
        seen.update(accept=self.headers["Accept"]), _Fake.do_POST(self))})
    vector, _ = client_for(fake).embed(b"img")
    assert seen["accept"] == COMPACT and vector.tolist() == [np.float32(0.6), np.float32(0.8)]


@pytest.mark.parametrize("body", [
    {"embedding_b64": "not base64!", "dim": 2, "model": "m-1"},
    {"embedding_b64": base64.b64encode(np.ones(3, "<f4").tobytes()).decode(), "dim": 2, "model": "m-1"},
    {"embedding": [1.0, 2.0], "dim": 3, "model": "m-1"},
])
def test_malformed_vector_is_a_model_server_error(fake, body):
    fake.answer = lambda _: (200, body)
    with pytest.raises(ModelServerError, match="answered 200"):
        client_for(fake).embed(b"img")


def test_token_is_sent_and_a_rotated_key_file_is_read_again(fake, tmp_path):
    """TorchServe refuses a stale key with 400 InvalidKeyException; the client reads the key file again once."""
    current = {"key": "k1"}
    seen = []

    def answer(body):
        return (200, {"embedding": [1.0], "dim": 1, "model": "m-1"}) if seen[-1] == f"Bearer {current['key']}" \
            else (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})

    fake.answer = answer
    fake.RequestHandlerClass = type("Recording", (_Fake,), {"do_POST": lambda self: (
        seen.append(self.headers.get("Authorization")), _Fake.do_POST(self))})
    key_file = tmp_path / "key_file.json"
    client = client_for(fake, key_file=key_file)  # TorchServe has not written its keys yet
    key_file.write_text(json.dumps({"inference": {"key": "k1"}}))
    assert client.embed(b"img")[1] == "m-1" and seen == [None, "Bearer k1"]
    current["key"] = "k2"  # rotated through the management API
    key_file.write_text(json.dumps({"inference": {"key": "k2"}}))
    assert client.embed(b"img")[1] == "m-1" and seen[-2:] == ["Bearer k1", "Bearer k2"]
    current["key"] = "k3"  # rotated, but the file still says k2: a clear error, not a loop
    with pytest.raises(ModelServerError, match="refused the token"):
        client.embed(b"img")
    assert client_for(fake, token="k3").embed(b"img")[1] == "m-1"


def test_the_image_never_goes_through_an_environment_proxy(fake, monkeypatch):
    """A proxy named in the environment (HTTP_PROXY, ALL_PROXY) would see every shopper's photo: the client
    ignores it and talks to TorchServe directly."""
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    seen: list[bytes] = []
    proxy.answer = lambda body: (seen.append(body), (502, {"error": "the proxy"}))[1]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.server_address[1]}")
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        vector, _ = client_for(fake).embed(b"a shopper's photo")
        assert vector.tolist() == [np.float32(0.6), np.float32(0.8)] and seen == []
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_build_backs_off_on_throttling_and_a_query_fails_fast(monkeypatch):
    """SageMaker serverless throttles past its MaxConcurrency: a build retries adaptively (10 attempts, botocore
    slows its own rate); a shopper's query tries twice."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from modelserver.client import BUILD_ATTEMPTS, boto_config, make_client

    build, query = boto_config(30, BUILD_ATTEMPTS), boto_config(10, 2)
    assert build.retries == {"max_attempts": 10, "mode": "adaptive"}
    assert query.retries == {"max_attempts": 2, "mode": "standard"}
    client = make_client("sagemaker://ep", attempts=BUILD_ATTEMPTS)
    assert client.runtime.meta.config.retries["mode"] == "adaptive"
    assert make_client("sagemaker://ep").runtime.meta.config.retries["mode"] == "standard"


def test_a_sagemaker_client_never_has_more_requests_in_flight_than_its_concurrency(monkeypatch):
    """The build embeds from 3 threads with 8 requests each: 24 in flight would pass a serverless endpoint's
    MaxConcurrency of 20. The client's own gate holds the total at ``concurrency`` (8), across threads."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from modelserver.client import SageMakerClient

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Runtime:
        def invoke_endpoint(self, **kwargs):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1
            body = json.dumps({"model": "m", "dim": 2, "embedding": [1.0, 0.0]}).encode()
            return {"Body": io.BytesIO(body)}

    client = SageMakerClient("ep", runtime=Runtime())
    client.concurrency = 8
    with ThreadPoolExecutor(3) as threads:
        list(threads.map(lambda _: client.embed_bytes([b"x"] * 24), range(3)))
    assert state["most"] == 8  # reached, never passed
    client.concurrency = 2  # the build sets it after construction: the gate follows
    state["most"] = 0
    client.embed_bytes([b"x"] * 10)
    assert state["most"] == 2

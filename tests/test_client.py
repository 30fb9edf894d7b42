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

from modelio.colour import HIST_SIZE
from modelio.imaging import ImageError
from modelio.protocol import COMPACT
from modelserver.client import ModelServerError, TorchServeClient


class _Fake(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.server.seen.append((self.headers.get("Content-Type"), body))  # type: ignore[attr-defined]
        status, answer, *reason = self.server.answer(body)  # type: ignore[attr-defined]
        if answer is None:  # hang up without a word
            self.close_connection = True
            return
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status, *reason)  # a reason phrase of its own when the answer gives one
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.answer = lambda body: (200, {"embedding": [0.6, 0.8], "dim": 2, "model": "m-1"})
    server.paths, server.seen = [], []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(server, **kw) -> TorchServeClient:
    return TorchServeClient(f"http://127.0.0.1:{server.server_address[1]}", **kw)


class InFlight:
    """Counts the calls in progress (each held ``seconds``) and the most there were at once."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.now, self.most = seconds, 0, 0
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.seconds)
        with self._lock:
            self.now -= 1


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
    assert image_groups([1] * 8 + [50, 50], 8, 100) == [list(range(8)), [8, 9]]  # a new group counts from 0
    assert image_groups([40, 40, 40], 8, 100) == [[0, 1], [2]]  # bytes add up across a group
    assert image_groups([1] * 70, 100, 10**9) == [list(range(64)), list(range(64, 70))]  # never over MAX_IMAGES
    assert image_groups([], 8, 100) == [] and image_groups([1, 1], 0, 100) == [[0], [1]]


@pytest.mark.parametrize(("answer", "message"), [
    ((503, {"code": 503, "message": "Model is not ready"}), "answered 503: Model is not ready"),
    ((200, b"<html>proxy page</html>"), "answered 200: OK"),
    ((200, {"something": "else"}), "answered 200: OK"),
    ((502, b"<html>bad gateway</html>", "Bad Gateway"), "answered 502: Bad Gateway"),  # no JSON: the reason
    ((503, {"code": 503}, "Busy Now"), "answered 503: Busy Now"),  # JSON without a message: the reason
    ((503, b"<html>", ""), "answered 503: "),  # no reason phrase at all: nothing made up
    ((503, {"code": 503}, ""), "answered 503: "),
])
def test_server_trouble_is_a_model_server_error(fake, answer, message):
    fake.answer = lambda body: answer
    with pytest.raises(ModelServerError, match=f"^embedding service {message}$"):
        client_for(fake).embed(b"img")
    with pytest.raises(ModelServerError, match=f"^embedding service {message}$"):
        client_for(fake).embed_group([b"a", b"b"])


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
    TorchServeClient(f"http://127.0.0.1:{fake.server_address[1]}/TX").embed(b"img")  # only slashes are trimmed
    assert fake.paths[-1] == "/TX/predictions/embedding"


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
    with pytest.raises(ModelServerError, match="^embedding service refused the token: set TORCHSERVE_TOKEN or "
                       "TORCHSERVE_KEY_FILE to TorchServe's inference key$"):
        client.embed(b"img")
    assert client_for(fake, token="k3").embed(b"img")[1] == "m-1"


def test_the_image_never_goes_through_an_environment_proxy(fake, monkeypatch):
    """A proxy named in the environment (HTTP_PROXY, ALL_PROXY) would see every shopper's photo: the client
    ignores it and talks to TorchServe directly."""
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    seen: list[bytes] = []
    proxy.answer = lambda body: (seen.append(body), (502, {"error": "the proxy"}))[1]
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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
    assert build.retries == {"total_max_attempts": 10, "mode": "adaptive"}  # the first try counted
    assert boto_config(5, 3).retries["mode"] == "adaptive"  # more than a query's two tries: a build
    assert query.retries == {"total_max_attempts": 2, "mode": "standard"}
    client = make_client("sagemaker://ep", attempts=BUILD_ATTEMPTS)
    assert client.runtime.meta.config.retries["mode"] == "adaptive"
    assert make_client("sagemaker://ep").runtime.meta.config.retries["mode"] == "standard"


def test_a_sagemaker_client_never_has_more_requests_in_flight_than_its_concurrency(monkeypatch):
    """The build embeds from 3 threads with 8 requests each: 24 in flight would pass a serverless endpoint's
    MaxConcurrency of 20. The client's own gate holds the total at ``concurrency`` (8), across threads."""
    from concurrent.futures import ThreadPoolExecutor

    from modelserver.client import SageMakerClient

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    state = InFlight()

    class Runtime:
        def invoke_endpoint(self, **kwargs):
            state.hold()
            body = json.dumps({"model": "m", "dim": 2, "embedding": [1.0, 0.0]}).encode()
            return {"Body": io.BytesIO(body)}

    client = SageMakerClient("ep", runtime=Runtime())
    client.concurrency = 8
    with ThreadPoolExecutor(3) as threads:
        list(threads.map(lambda _: client.embed_bytes([b"x"] * 24), range(3)))
    assert state.most == 8  # reached, never passed
    client.concurrency = 2  # the build sets it after construction: the gate follows
    state.most = 0
    client.embed_bytes([b"x"] * 10)
    assert state.most == 2
    client.concurrency = 1  # one at a time (and never none: 0 still lets one through)
    state.most = 0
    with ThreadPoolExecutor(3) as threads:
        list(threads.map(lambda _: client.embed_bytes([b"x"] * 4), range(3)))
    assert state.most == 1
    client.concurrency = 0
    assert client.embed_bytes([b"x"])[0].vector.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- the pieces, one by one


def test_the_probe_is_a_small_grey_png_and_probing_sends_it(fake):
    from PIL import Image

    from modelserver.client import PROBE_PNG, _probe_png

    assert _probe_png() == PROBE_PNG  # made once, at import
    img = Image.open(io.BytesIO(_probe_png()))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
    assert img.getcolors() == [(32 * 32, (128, 128, 128))]
    bodies: list[bytes] = []
    fake.answer = lambda body: (bodies.append(body), (200, {"embedding": [1.0], "dim": 1, "model": "p-2"}))[1]
    client = client_for(fake)
    assert client.backbone_id == "p-2" and bodies == [PROBE_PNG]  # learnt by probing once ...
    assert client.backbone_id == "p-2" and len(bodies) == 1  # ... then remembered


def test_the_torchserve_clients_connection_settings(tmp_path):
    """Hardening asserted: connect in 3 s and read within ``timeout``, no retries (a POST is never sent twice),
    a pool as wide as ``concurrency`` that never blocks a caller; the key file is read at once when it exists,
    and a token given outright wins over it."""
    client = TorchServeClient("http://127.0.0.1:9/", model="shoes", timeout=7.5, concurrency=3)
    pool = client._pool
    assert pool.timeout.connect_timeout == 3.0 and pool.timeout.read_timeout == 7.5
    assert pool.retries is False and pool.block is False and pool.pool.maxsize == 3
    assert (client.url, client.model, client.timeout, client.concurrency) == ("http://127.0.0.1:9", "shoes", 7.5, 3)
    assert TorchServeClient("http://127.0.0.1:9", concurrency=0)._pool.pool.maxsize == 1
    default = TorchServeClient("http://127.0.0.1:9")  # 30 s, 8 connections
    assert (default.timeout, default.concurrency, default._pool.pool.maxsize) == (30.0, 8, 8)
    assert default._pool.timeout.read_timeout == 30.0
    key_file = tmp_path / "key_file.json"
    assert TorchServeClient("http://127.0.0.1:9", key_file=key_file)._token == ""  # not written yet: read on a 401
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}}))
    assert TorchServeClient("http://127.0.0.1:9", key_file=key_file)._token == "from-file"
    assert TorchServeClient("http://127.0.0.1:9", token="given", key_file=key_file)._token == "given"
    key_file.write_text("{not json")
    with pytest.raises(ModelServerError, match=r"cannot read the TorchServe key file .*key_file.json"):
        TorchServeClient("http://127.0.0.1:9", key_file=key_file)
    assert TorchServeClient("http://127.0.0.1:9")._read_key_file() == ""  # no key file: no token


def test_make_client_picks_the_client_by_its_url(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from modelserver.client import SageMakerClient, make_client

    key_file = tmp_path / "key"
    key_file.write_text(json.dumps({"inference": {"key": "k"}}))
    ts = make_client("http://ts:8080", "shoes", 12.0, "", str(key_file))
    assert isinstance(ts, TorchServeClient)
    assert (ts.url, ts.model, ts.timeout, ts._token, ts.key_file) == ("http://ts:8080", "shoes", 12.0, "k", key_file)
    assert make_client("http://ts:8080", token="t")._token == "t"
    sm = make_client("sagemaker://my-endpoint/", timeout=9.0, attempts=5)
    assert isinstance(sm, SageMakerClient) and (sm.endpoint, sm.timeout) == ("my-endpoint", 9.0)
    config = sm.runtime.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 9.0)
    assert config.retries == {"total_max_attempts": 5, "mode": "adaptive"}  # 5 tries in all, the first counted
    plain = make_client("http://ts:8080")  # the defaults: model "embedding", 30 s, no token, no key file
    assert (plain.model, plain.timeout, plain._token, plain.key_file, plain._path) == (
        "embedding", 30.0, "", None, "/predictions/embedding")
    default = make_client("sagemaker://ep").runtime.meta.config  # a shopper's query: two tries, 30 s
    assert default.retries == {"total_max_attempts": 2, "mode": "standard"} and default.read_timeout == 30.0
    sm = SageMakerClient("ep", runtime=object())
    assert (sm.timeout, sm.concurrency) == (30.0, 8)
    assert SageMakerClient("ep").runtime.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
    assert make_client("sagemaker://endpointX/").endpoint == "endpointX"  # only slashes are trimmed
    for empty in ("sagemaker://", "sagemaker:///"):
        with pytest.raises(ValueError, match=f"{empty}: no SageMaker endpoint name"):
            make_client(empty)


@pytest.mark.parametrize(("status", "body", "reason", "error", "message"), [
    (400, {"error": "not a supported image"}, "Bad Request", ImageError, "^not a supported image$"),
    (400, {"message": "bad"}, "Bad Request", ModelServerError, "^embedding service answered 400: bad$"),
    (400, {}, "Bad Request", ModelServerError, "^embedding service answered 400: Bad Request$"),
    (500, {"error": "boom"}, "Server Error", ModelServerError, "^embedding service answered 500: Server Error$"),
    (200, {"model": "m", "embedding": "x"}, "OK", ModelServerError, "^embedding service answered 200: OK$"),
    (200, {"embedding": [1.0], "dim": 1}, "OK", ModelServerError, "^embedding service answered 200: OK$"),
    (200, ["a list"], "OK", ModelServerError, "^embedding service answered 200: OK$"),
    (500, {"model": "m", "embedding": [1.0], "dim": 1}, "Server Error", ModelServerError,
     "^embedding service answered 500: Server Error$"),  # a vector in an error answer is not used
])
def test_parse_answer_tells_a_refused_image_from_a_server_in_trouble(status, body, reason, error, message):
    from modelserver.client import parse_answer

    with pytest.raises(error, match=message):
        parse_answer(status, body, reason)
    vector, model = parse_answer(200, {"model": "m", "embedding": [0.6, 0.8], "dim": 2}, "OK")
    assert vector.tolist() == [np.float32(0.6), np.float32(0.8)] and model == "m"


@pytest.mark.parametrize(("status", "body", "refused"), [
    (401, b"", True),
    (400, b'{"code": 400, "type": "InvalidKeyException"}', True),
    (400, b" " * (400 - len("InvalidKeyException")) + b"InvalidKeyException", True),  # the last 400 bytes read
    (400, b" " * (401 - len("InvalidKeyException")) + b"InvalidKeyException", False),  # one byte past them
    (400, b'{"error": "not a supported image"}', False),
    (403, b"InvalidKeyException", False),
])
def test_which_answers_say_the_token_was_refused(status, body, refused):
    from urllib3 import HTTPResponse

    from modelserver.client import _token_refused

    assert _token_refused(HTTPResponse(body=body, status=status, preload_content=True)) is refused


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_one_image_at_a_time_client_keeps_order_errors_and_its_concurrency(concurrency):
    """``BatchingClient.embed_bytes`` (SageMaker's): one result per blob in order, a refused image an error result
    alone, and never more than ``concurrency`` calls at once."""
    from modelserver.client import BatchingClient

    state = InFlight()

    class Counting(BatchingClient):
        def embed(self, blob: bytes):
            state.hold()
            if blob == b"bad":
                raise ImageError("not a supported image")
            return np.array([float(blob[0])], np.float32), "m"

    blobs = [bytes([i + 1]) for i in range(9)]
    blobs[4] = b"bad"
    counting = Counting()
    counting.concurrency = concurrency
    results = counting.embed_bytes(blobs)
    assert [r.error for r in results] == [None] * 4 + ["not a supported image"] + [None] * 4
    assert [None if r.vector is None else float(r.vector[0]) for r in results] == [1, 2, 3, 4, None, 6, 7, 8, 9]
    assert state.most == concurrency
    assert BatchingClient().embed_bytes([]) == []
    with pytest.raises(NotImplementedError):
        BatchingClient().embed(b"x")


class _Runtime:
    """A stand-in for boto3's sagemaker-runtime client: records each call, answers with ``answer()``."""

    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, []

    def invoke_endpoint(self, **kwargs):
        self.calls.append(kwargs)
        return self.answer()


def _client_error(code: str | None, message: str = "", status: int | None = None, original: str | None = None):
    """botocore's error for an InvokeEndpoint answer; ``code`` None: an answer with no ``Error`` at all."""
    from botocore.exceptions import ClientError

    response: dict = {} if code is None else {"Error": {"Code": code, "Message": message}}
    if status is not None:
        response["OriginalStatusCode"] = status
    if original is not None:
        response["OriginalMessage"] = original
    return ClientError(response, "InvokeEndpoint")


def test_a_sagemaker_endpoint_is_asked_as_torchserve_is_and_its_answer_decoded():
    from modelserver.client import SageMakerClient

    runtime = _Runtime(lambda: {"Body": io.BytesIO(json.dumps({"model": "sm-1", "embedding": [0.6, 0.8]}).encode())})
    client = SageMakerClient("ep", runtime=runtime)
    vector, model = client.embed(b"photo")
    assert vector.tolist() == [np.float32(0.6), np.float32(0.8)] and model == "sm-1" and client.backbone_id == "sm-1"
    assert runtime.calls == [{"EndpointName": "ep", "Body": b"photo", "ContentType": "application/octet-stream",
                              "Accept": COMPACT}]


@pytest.mark.parametrize(("failure", "error", "message"), [
    (_client_error("ModelError", "x", 400, json.dumps({"error": "not a supported image"})), ImageError,
     "^not a supported image$"),
    (_client_error("ModelError", "Received client error (400)", 400, "<html>"), ModelServerError,
     r"^embedding endpoint ep answered ModelError: Received client error \(400\)$"),
    (_client_error("ModelError", "Received client error (400)", 400, json.dumps({"no": "error"})), ModelServerError,
     r"^embedding endpoint ep answered ModelError: Received client error \(400\)$"),
    (_client_error("ModelError", "Received server error (500)", 500, json.dumps({"error": "boom"})), ModelServerError,
     r"^embedding endpoint ep answered ModelError: Received server error \(500\)$"),
    (_client_error("ThrottlingException", "Rate exceeded"), ModelServerError,
     "^embedding endpoint ep answered ThrottlingException: Rate exceeded$"),
    (_client_error("ValidationError"), ModelServerError, "^embedding endpoint ep answered ValidationError$"),
    (_client_error("LimitX"), ModelServerError, "^embedding endpoint ep answered LimitX$"),  # only ": " trimmed
    (_client_error("ModelError", "", 400), ModelServerError, "^embedding endpoint ep answered ModelError$"),
    (_client_error(None), ModelServerError, "^embedding endpoint ep answered an error$"),  # no Error at all
])
def test_a_sagemaker_refusal_is_an_image_error_only_when_the_container_refused_the_image(failure, error, message):
    from modelserver.client import SageMakerClient

    def answer():
        raise failure

    with pytest.raises(error, match=message):
        SageMakerClient("ep", runtime=_Runtime(answer)).embed(b"photo")


def test_an_unreachable_or_garbled_sagemaker_endpoint_is_a_model_server_error():
    from botocore.exceptions import EndpointConnectionError

    from modelserver.client import SageMakerClient

    def unreachable():
        raise EndpointConnectionError(endpoint_url="https://runtime.sagemaker")

    with pytest.raises(ModelServerError, match="^embedding endpoint ep unreachable: EndpointConnectionError$"):
        SageMakerClient("ep", runtime=_Runtime(unreachable)).embed(b"photo")
    no_model = _Runtime(lambda: {"Body": io.BytesIO(json.dumps({"embedding": [1.0]}).encode())})
    with pytest.raises(ModelServerError, match="^embedding service answered 200: OK$"):
        SageMakerClient("ep", runtime=no_model).embed(b"photo")
    with pytest.raises(ModelServerError, match="^embedding endpoint ep unreachable: JSONDecodeError$"):
        SageMakerClient("ep", runtime=_Runtime(lambda: {"Body": io.BytesIO(b"<html>")})).embed(b"photo")


def _colour_group(body: bytes):
    """A stand-in's answer: one-image requests a 1-d vector, groups an entry each with a colour when asked."""
    if not body.startswith(b'{"images"'):
        return 200, {"embedding": [float(len(body))], "dim": 1, "model": "m-1"}
    request = json.loads(body)
    entries = [{"embedding": [float(len(base64.b64decode(b)))], "dim": 1,
                **({"colour_b64": base64.b64encode(np.eye(1, HIST_SIZE, dtype="<f4").tobytes()).decode()}
                   if request.get("colour") else {})} for b in request["images"]]
    return 200, {"model": "m-1", "results": entries}


def test_a_lone_image_travels_alone_unless_its_colour_is_wanted(fake):
    """One image without colour: a plain one-image request. With colour: a group of one (only groups carry
    the histogram), unless it is over ``GROUP_BYTES``: then alone, without one. Both sides of that size."""
    fake.answer = _colour_group
    client = client_for(fake)
    client.GROUP_BYTES = 100
    plain = client.embed_bytes([b"x" * 10])
    assert fake.seen[-1] == ("application/octet-stream", b"x" * 10) and plain[0].colour is None
    coloured = client.embed_bytes([b"x" * 100], colour=True)  # exactly the limit: still a group
    assert fake.seen[-1][0] == "application/json" and json.loads(fake.seen[-1][1])["colour"] is True
    assert coloured[0].vector.tolist() == [100.0] and coloured[0].colour is not None
    big = client.embed_bytes([b"x" * 101], colour=True)  # one byte over: alone, no colour
    assert fake.seen[-1] == ("application/octet-stream", b"x" * 101)
    assert big[0].vector.tolist() == [101.0] and big[0].colour is None
    both = client.embed_bytes([b"x" * 5, b"x" * 7])  # a group without colour does not ask for it
    assert "colour" not in json.loads(fake.seen[-1][1]) and [r.vector[0] for r in both] == [5.0, 7.0]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_groups_in_flight_never_exceed_the_clients_concurrency(fake, concurrency):
    state = InFlight(0.05)

    def answer(body: bytes):
        state.hold()
        return _colour_group(body)

    fake.answer = answer
    client = client_for(fake, concurrency=concurrency)
    results = client.embed_bytes([bytes([i]) * (i + 1) for i in range(40)])  # 5 groups of 8
    assert [r.vector[0] for r in results] == [float(i + 1) for i in range(40)]
    assert state.most == concurrency


def test_a_refused_token_is_sent_again_with_the_same_body_and_an_accepted_one_once(fake, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "new"}}))
    client = client_for(fake, token="old", key_file=key_file)
    fake.answer = lambda body: ((200, {"model": "m-1", "results": [{"embedding": [1.0], "dim": 1}]})
                                if len(fake.seen) > 1 else (401, {"message": "refused"}))
    assert client.embed_group([b"the photo"])[0].vector.tolist() == [1.0]
    assert len(fake.seen) == 2 and fake.seen[0] == fake.seen[1]  # the same request again, with the new key
    assert fake.seen[1][0] == "application/json" and json.loads(fake.seen[1][1])["images"] == [
        base64.b64encode(b"the photo").decode()]
    fake.answer = lambda body: (200, {"embedding": [1.0], "dim": 1, "model": "m-1"})
    client.embed(b"next")
    assert len(fake.seen) == 3  # accepted at once: sent once, key file or not


def test_a_group_answer_names_the_model_and_a_non_object_error_is_still_worded(fake):
    fake.answer = lambda body: (200, {"model": "g-7", "results": [{"embedding": [1.0], "dim": 1}]})
    client = client_for(fake)
    client.embed_group([b"a"])
    assert client.backbone_id == "g-7" and len(fake.seen) == 1  # known from the answer: no probe
    assert "colour" not in json.loads(fake.seen[0][1])  # not asked for unless wanted
    fake.answer = lambda body: (400, ["not", "an", "object"])
    with pytest.raises(ModelServerError, match="^embedding service answered 400: Bad Request$"):
        client.embed_group([b"a"])


def test_a_sagemaker_endpoint_is_asked_for_a_feature_map_as_torchserve_is():
    from modelio.protocol import encode_feature_map
    from modelserver.client import SageMakerClient

    fmap = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    runtime = _Runtime(lambda: {"Body": io.BytesIO(encode_feature_map(fmap, "sm-1"))})
    got, model = SageMakerClient("ep", runtime=runtime).feature_map(b"photo", 96)
    assert model == "sm-1" and np.array_equal(got, fmap)
    sent = runtime.calls[0]
    assert sent["ContentType"] == "application/json"
    assert json.loads(sent["Body"]) == {"feature_map": base64.b64encode(b"photo").decode(), "side": 96}


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (400, {"error": "not a supported image"}, ImageError, "^not a supported image$"),
    (200, {"model": "m", "shape": [1, 1], "map_b64": ""}, ModelServerError, "^embedding service answered 200: OK$"),
    (200, {"shape": [1, 1, 1]}, ModelServerError, "^embedding service answered 200: OK$"),
    (500, {"error": "the feature map could not be computed"}, ModelServerError, "answered 500: Internal"),
    (503, "not json", ModelServerError, "answered 503: Internal"),
])
def test_a_feature_map_answer_that_is_not_one_is_an_error(status, body, error, message):
    from modelserver.client import parse_feature_map

    with pytest.raises(error, match=message):
        parse_feature_map(status, body, "OK" if status == 200 else "Internal")

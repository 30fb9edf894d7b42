"""Clients for the embedding model server, used by the gateway and the index build.

``TorchServeClient`` speaks TorchServe's ``/predictions`` API (sending its inference token when one is
configured); ``SageMakerClient`` calls a SageMaker endpoint that runs the same archive and gets the same
JSON. ``make_client`` picks one from ``TORCHSERVE_URL`` (``sagemaker://ENDPOINT`` for the latter).
No torch here: the gateway only needs urllib3, numpy and (for SageMaker) boto3. Concurrent calls let
TorchServe fuse requests into batches (``batchSize`` in ``infra/torchserve/config.properties``).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as HTTPTimeout  # not the builtin TimeoutError

from modelio.imaging import ImageError
from modelio.protocol import COMPACT, MAX_IMAGES, EmbedResult, decode_answers, decode_feature_map, decode_vector

SAGEMAKER_SCHEME = "sagemaker://"


class ModelServerError(RuntimeError):
    """The model server is unreachable, too slow, or answered with a server error."""


class ModelClient(Protocol):
    """What the gateway needs of a model server: one image's vector and the backbone id that made it."""

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        """Vector and backbone id; ``ImageError`` if the server refused the image, else ``ModelServerError``."""
        ...

    def probe(self) -> str:
        """Embed a tiny image; the served backbone id."""
        ...

    def feature_map(self, blob: bytes, side: int) -> tuple[np.ndarray, str]:
        """The image's last feature map (C, h, w) at ``side`` pixels and the backbone id; ``ImageError`` if the
        server refused the request (an archive older than feature maps refuses it too), else ``ModelServerError``."""
        ...


def feature_map_request(blob: bytes, side: int) -> bytes:
    """The JSON body of a feature-map request (modelio/protocol.py)."""
    return json.dumps({"feature_map": base64.b64encode(blob).decode("ascii"), "side": side}).encode()


def parse_feature_map(status: int, body: object, reason: str) -> tuple[np.ndarray, str]:
    """A feature-map answer → (map, backbone id), or the error (``parse_answer``'s rules)."""
    return _model_answer(status, body, reason, decode_feature_map)


def parse_answer(status: int, body: object, reason: str) -> tuple[np.ndarray, str]:
    """The handler's JSON answer (either form, modelio/protocol.py) → (vector, backbone id), or the error."""
    return _model_answer(status, body, reason, decode_vector)


def _model_answer(status: int, body: object, reason: str, decode: Callable[[dict], np.ndarray]
                  ) -> tuple[np.ndarray, str]:
    """A model server's answer → (what ``decode`` reads of it, backbone id): its refusal of the input (400 with
    an error) is an ``ImageError``; anything else that is not a well-formed answer, a ``ModelServerError``."""
    if status == 400 and isinstance(body, dict) and "error" in body:
        raise ImageError(str(body["error"]))
    if status == 200 and isinstance(body, dict) and "model" in body:
        try:
            return decode(body), str(body["model"])
        except (ValueError, KeyError, TypeError):
            pass
    detail = body.get("message") if isinstance(body, dict) else None
    raise ModelServerError(f"embedding service answered {status}: {detail or reason}")


class BatchingClient:
    """``embed_bytes`` and ``probe`` on top of a subclass's ``embed``."""

    concurrency = 8
    _backbone_id: str | None = None

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        """One result per blob; bad images become error results, a dead service raises. One image per request
        carries no colour histogram (``colour`` is then not given: the caller computes it if it needs it)."""

        def one(blob: bytes) -> EmbedResult:
            try:
                return EmbedResult(vector=self.embed(blob)[0])
            except ImageError as exc:
                return EmbedResult(error=str(exc))

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(blobs)))) as pool:
            return list(pool.map(one, blobs))

    @property
    def backbone_id(self) -> str:
        """The served backbone id, learnt from the last answer (probes once if none yet)."""
        if self._backbone_id is None:
            self.probe()
        return self._backbone_id  # type: ignore[return-value]

    def probe(self) -> str:
        """Embed a tiny generated image: proves the model answers and returns its id."""
        return self.embed(PROBE_PNG)[1]


class TorchServeClient(BatchingClient):
    """TorchServe's inference API. With token authorization on (TorchServe's default), pass the inference
    ``token``, or the ``key_file`` TorchServe wrote (read again when TorchServe refuses it: keys rotate)."""

    def __init__(self, url: str, model: str = "embedding", timeout: float = 30.0, concurrency: int = 8,
                 token: str = "", key_file: str | Path = "") -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.concurrency = concurrency
        self.key_file = Path(key_file) if key_file else None
        self._token = token
        if not token and self.key_file is not None and self.key_file.is_file():
            self._token = self._read_key_file()  # else read on the first 401: TorchServe may start later
        # urllib3 itself rather than requests: half the time per call (0.38 vs 0.75 ms a ping here), paid on
        # every query; it never reads proxy variables, so a shopper's photo never goes through an environment
        # proxy; and no retries, so a POST is never sent twice.
        parts = urllib3.util.parse_url(self.url)
        self._path = f"{parts.path or ''}/predictions/{model}"  # self.url has no trailing slash
        self._pool = urllib3.connection_from_url(self.url, maxsize=max(1, concurrency), block=False, retries=False,
                                                 timeout=urllib3.Timeout(connect=3.0, read=timeout))

    def _read_key_file(self) -> str:
        if self.key_file is None:
            return ""
        try:
            return str(json.loads(self.key_file.read_text())["inference"]["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelServerError(f"cannot read the TorchServe key file {self.key_file}: {exc}") from None

    def _post(self, body: bytes, content_type: str) -> urllib3.BaseHTTPResponse:
        headers = {"Content-Type": content_type, "Accept": COMPACT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            return self._pool.urlopen("POST", self._path, body=body, headers=headers)
        except NewConnectionError as exc:  # a ConnectTimeoutError to urllib3, but nothing listens: not slow
            raise ModelServerError(f"embedding service unreachable at {self.url}: {type(exc).__name__}") from None
        except HTTPTimeout:
            raise ModelServerError(f"embedding service timed out after {self.timeout:g}s") from None
        except HTTPError as exc:
            raise ModelServerError(f"embedding service unreachable at {self.url}: {type(exc).__name__}") from None

    def _answer(self, body: bytes, content_type: str = "application/octet-stream") -> tuple[int, object, str]:
        """POST ``body`` (with the token, read again once if refused): the status, the JSON body and reason."""
        resp = self._post(body, content_type)
        if _token_refused(resp) and self.key_file is not None:  # rotated or not read yet: read it again
            self._token = self._read_key_file()
            resp = self._post(body, content_type)
        if _token_refused(resp):
            raise ModelServerError("embedding service refused the token: set TORCHSERVE_TOKEN or "
                                   "TORCHSERVE_KEY_FILE to TorchServe's inference key")
        try:
            return resp.status, json.loads(resp.data), resp.reason or ""
        except ValueError:
            return resp.status, {}, resp.reason or ""

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        """Vector and backbone id for one image. ``ImageError`` if TorchServe refused the image."""
        vector, backbone_id = parse_answer(*self._answer(blob))
        self._backbone_id = backbone_id
        return vector, backbone_id

    def feature_map(self, blob: bytes, side: int) -> tuple[np.ndarray, str]:
        """The image's last feature map and the backbone id (``ModelClient.feature_map``)."""
        return parse_feature_map(*self._answer(feature_map_request(blob, side), "application/json"))

    #: ``embed_bytes`` (the build) sends up to this many images in one request, at most ``GROUP_BYTES`` of
    #: them (a bigger image goes alone): TorchServe's per-request costs are paid once per group.
    images_per_request = 8
    GROUP_BYTES = 4 << 20

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        """One result per blob, in order; the blobs travel in groups (several-image requests), concurrently.
        A bad image gets its error result alone; a dead service raises ``ModelServerError``. ``colour``: each
        result also carries its colour histogram (an image over ``GROUP_BYTES`` travels alone, without one)."""
        groups = image_groups([len(b) for b in blobs], self.images_per_request, self.GROUP_BYTES)

        def one_group(indices: list[int]) -> list[EmbedResult]:
            if len(indices) == 1 and (not colour or len(blobs[indices[0]]) > self.GROUP_BYTES):
                return BatchingClient.embed_bytes(self, [blobs[indices[0]]])
            return self.embed_group([blobs[i] for i in indices], colour)

        results: list[EmbedResult] = [EmbedResult()] * len(blobs)
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(groups)))) as pool:
            for indices, found in zip(groups, pool.map(one_group, groups), strict=True):
                for i, result in zip(indices, found, strict=True):
                    results[i] = result
        return results

    def embed_group(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        """Several images in one request (modelio/protocol.py): one result each, in order (with its colour
        histogram when ``colour``)."""
        request: dict[str, object] = {"images": [base64.b64encode(b).decode("ascii") for b in blobs]}
        if colour:
            request["colour"] = True
        payload = json.dumps(request).encode()
        status, body, reason = self._answer(payload, "application/json")
        if status == 200 and isinstance(body, dict) and "model" in body:
            try:
                found = decode_answers(body, len(blobs))
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelServerError(f"embedding service answered a malformed group: {exc}") from None
            self._backbone_id = str(body["model"])
            return found
        detail = body.get("error") or body.get("message") if isinstance(body, dict) else None
        raise ModelServerError(f"embedding service answered {status}: {detail or reason}")


def image_groups(sizes: list[int], most: int, most_bytes: int) -> list[list[int]]:
    """Consecutive indices of images with these byte ``sizes``, in groups of at most ``most`` (and
    ``MAX_IMAGES``) images and ``most_bytes`` together; an image over ``most_bytes`` is a group alone."""
    most = max(1, min(most, MAX_IMAGES))
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if current and (len(current) >= most or total + size > most_bytes):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        groups.append(current)
    return groups


def _token_refused(resp: urllib3.BaseHTTPResponse) -> bool:
    """TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException (401 elsewhere)."""
    if resp.status == 401:
        return True
    return resp.status == 400 and b"InvalidKeyException" in resp.data[:400]


class SageMakerClient(BatchingClient):
    """A SageMaker endpoint serving the same archive: ``InvokeEndpoint`` with the image bytes, the
    handler's JSON back. Credentials, region and ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` come from boto3's
    standard chain."""

    def __init__(self, endpoint: str, timeout: float = 30.0, concurrency: int = 8, runtime=None,
                 attempts: int = 2) -> None:
        import boto3

        self.endpoint = endpoint
        self.timeout = timeout
        self.concurrency = concurrency
        self.runtime = runtime or boto3.client("sagemaker-runtime", config=boto_config(timeout, attempts))
        self._gate_lock = threading.Lock()
        self._gate: tuple[int, threading.BoundedSemaphore] | None = None

    def _in_flight(self) -> threading.BoundedSemaphore:
        """At most ``concurrency`` requests in flight from this client, whichever threads send them (the build
        embeds from several threads at once): a serverless endpoint throttles past its MaxConcurrency."""
        with self._gate_lock:
            if self._gate is None or self._gate[0] != self.concurrency:
                self._gate = (self.concurrency, threading.BoundedSemaphore(max(1, self.concurrency)))
            return self._gate[1]

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        vector, backbone_id = parse_answer(200, self._invoke(blob, "application/octet-stream"), "OK")
        self._backbone_id = backbone_id
        return vector, backbone_id

    def feature_map(self, blob: bytes, side: int) -> tuple[np.ndarray, str]:
        """The image's last feature map and the backbone id (``ModelClient.feature_map``)."""
        return parse_feature_map(200, self._invoke(feature_map_request(blob, side), "application/json"), "OK")

    def _invoke(self, body: bytes, content_type: str) -> object:
        """``InvokeEndpoint`` with ``body``: the handler's JSON answer (its 400 as ``ImageError``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with self._in_flight():
                resp = self.runtime.invoke_endpoint(EndpointName=self.endpoint, Body=body,
                                                    ContentType=content_type, Accept=COMPACT)
                return json.loads(resp["Body"].read())
        except ClientError as exc:
            raise self._model_error(exc) from None
        except (BotoCoreError, ValueError) as exc:
            raise ModelServerError(f"embedding endpoint {self.endpoint} unreachable: {type(exc).__name__}") from None

    def _model_error(self, exc) -> Exception:
        """SageMaker wraps the container's own 4xx answer as a ModelError with its status and body."""
        error = exc.response.get("Error", {})
        if error.get("Code") == "ModelError" and exc.response.get("OriginalStatusCode") == 400:
            try:
                return ImageError(str(json.loads(exc.response.get("OriginalMessage", ""))["error"]))
            except (ValueError, KeyError, TypeError):
                pass
        return ModelServerError(f"embedding endpoint {self.endpoint} answered {error.get('Code', 'an error')}: "
                                f"{error.get('Message', '')}".rstrip(": "))


def boto_config(timeout: float, attempts: int):
    """botocore's settings for ``InvokeEndpoint``: a shopper's query tries twice and fails fast; a build
    (``attempts`` > 2) uses botocore's adaptive mode, which backs off and slows its own sending rate when a
    serverless endpoint throttles at its ``MaxConcurrency``, instead of aborting hours of work."""
    from botocore.config import Config as BotoConfig

    mode = "adaptive" if attempts > 2 else "standard"
    # total_max_attempts counts the first try; botocore's max_attempts counts only the retries after it (2 → 3 tries)
    return BotoConfig(connect_timeout=3, read_timeout=timeout, retries={"total_max_attempts": attempts, "mode": mode})


#: Attempts per image for a build against SageMaker (adaptive backoff on throttling between them).
BUILD_ATTEMPTS = 10


def make_client(url: str, model: str = "embedding", timeout: float = 30.0, token: str = "",
                key_file: str = "", attempts: int = 2) -> TorchServeClient | SageMakerClient:
    """``sagemaker://ENDPOINT`` → ``SageMakerClient``; an http(s) URL → ``TorchServeClient``."""
    if url.startswith(SAGEMAKER_SCHEME):
        endpoint = url[len(SAGEMAKER_SCHEME):].strip("/")
        if not endpoint:
            raise ValueError(f"{url}: no SageMaker endpoint name")
        return SageMakerClient(endpoint, timeout, attempts=attempts)
    return TorchServeClient(url, model, timeout=timeout, token=token, key_file=key_file)


def _probe_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


PROBE_PNG = _probe_png()

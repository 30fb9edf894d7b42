"""HTTP client for the TorchServe embedding model, used by the gateway and the index build.

No torch here: the gateway only needs requests and numpy. Concurrent calls let TorchServe fuse
requests into batches (``batchSize`` in ``infra/torchserve/config.properties``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from handlers.imaging import ImageError
from handlers.protocol import EmbedResult


class TorchServeError(RuntimeError):
    """TorchServe is unreachable, too slow, or answered with a server error."""


class TorchServeClient:
    def __init__(self, url: str, model: str = "embedding", timeout: float = 30.0, concurrency: int = 8):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.concurrency = concurrency
        self._local = threading.local()
        self._model_id: str | None = None

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        """Vector and model id for one image. ``ImageError`` if TorchServe refused the image."""
        try:
            resp = self._session().post(
                f"{self.url}/predictions/{self.model}",
                data=blob,
                headers={"Content-Type": "application/octet-stream"},
                timeout=(3.0, self.timeout),
            )
        except requests.Timeout:
            raise TorchServeError(f"embedding service timed out after {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise TorchServeError(f"embedding service unreachable at {self.url}: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 400 and isinstance(body, dict) and "error" in body:
            raise ImageError(body["error"])
        if resp.status_code != 200 or not isinstance(body, dict) or "embedding" not in body:
            detail = body.get("message") if isinstance(body, dict) else None
            raise TorchServeError(f"embedding service answered {resp.status_code}: {detail or resp.reason}")
        self._model_id = body["model"]
        return np.asarray(body["embedding"], dtype=np.float32), body["model"]

    def embed_bytes(self, blobs: list[bytes]) -> list[EmbedResult]:
        """One result per blob; bad images become error results, a dead service raises."""

        def one(blob: bytes) -> EmbedResult:
            try:
                return EmbedResult(vector=self.embed(blob)[0])
            except ImageError as exc:
                return EmbedResult(error=str(exc))

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(blobs)))) as pool:
            return list(pool.map(one, blobs))

    @property
    def model_id(self) -> str:
        """The served backbone id, learnt from the last answer (probes once if none yet)."""
        if self._model_id is None:
            self.probe()
        return self._model_id  # type: ignore[return-value]

    def probe(self) -> str:
        """Embed a tiny generated image: proves the model answers and returns its id."""
        return self.embed(PROBE_PNG)[1]


def _probe_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


PROBE_PNG = _probe_png()

"""What every embedder returns, in-process or over HTTP: one ``EmbedResult`` per input image, and the
handler's JSON answer for one image (written by the handler, read by modelserver/client.py).

The answer is ``{"embedding": [floats], "dim", "model", "runtime"}``. A caller that sends
``Accept: COMPACT`` gets ``"embedding_b64"`` (little-endian float32, base64) instead of the float list:
the same vector, without formatting and parsing 1,280 decimal numbers per image on both sides.

One request may carry several images (``{"images": [base64, ...]}``, at most ``MAX_IMAGES``): its answer is
``{"model", "runtime", "results": [...]}``, one entry per image in order, each an image's answer or
``{"error": reason}``: a bad image fails alone, and a build pays the per-request costs once per group.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: The media type a caller accepts to get the vector as base64 float32.
COMPACT = "application/vnd.photo.embedding-b64+json"


def encode_answer(vector: np.ndarray, backbone_id: str, runtime: str, compact: bool = False) -> bytes:
    """One image's answer as JSON bytes."""
    vec = np.asarray(vector, dtype="<f4")
    body: dict[str, object] = {"dim": int(vec.shape[0]), "model": backbone_id, "runtime": runtime}
    if compact:
        body["embedding_b64"] = base64.b64encode(vec.tobytes()).decode("ascii")
    else:
        body["embedding"] = vec.tolist()
    return json.dumps(body, separators=(",", ":")).encode()


#: The most images one request may carry.
MAX_IMAGES = 64


def encode_answers(results: list[EmbedResult], backbone_id: str, runtime: str, compact: bool = False) -> bytes:
    """A several-image request's answer as JSON bytes: one entry per image, in order."""
    entries = [json.loads(encode_answer(r.vector, backbone_id, runtime, compact)) if r.error is None
               else {"error": r.error} for r in results]
    body = {"model": backbone_id, "runtime": runtime, "results": entries}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_answers(body: object, count: int) -> list[EmbedResult]:
    """The results of a several-image answer for ``count`` images; ``ValueError`` when it is malformed (a
    result missing, or one that is neither a vector nor an error)."""
    entries = body.get("results") if isinstance(body, dict) else None
    if not isinstance(entries, list) or len(entries) != count:
        raise ValueError(f"expected {count} results, got {len(entries) if isinstance(entries, list) else None}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a result is not an object")
        if "error" in entry:
            out.append(EmbedResult(error=str(entry["error"])))
        else:
            out.append(EmbedResult(vector=decode_vector(entry)))
    return out


def decode_vector(body: dict) -> np.ndarray:
    """The vector of an answer in either form; ``ValueError`` when it is malformed."""
    if "embedding_b64" in body:
        vec = np.frombuffer(base64.b64decode(body["embedding_b64"], validate=True), dtype="<f4")
    else:
        vec = np.asarray(body["embedding"], dtype=np.float32)
    if vec.ndim != 1 or ("dim" in body and vec.shape[0] != body["dim"]):
        raise ValueError(f"embedding of shape {vec.shape} does not match dim {body.get('dim')}")
    return vec.astype(np.float32)


@dataclass(frozen=True)
class EmbedResult:
    """One input's outcome: a unit vector, or the reason the input was refused."""

    vector: np.ndarray | None = None
    error: str | None = None


class BatchEmbedder(Protocol):
    """Anything that embeds image bytes: ``handlers.embedder.Embedder`` or ``TorchServeClient``."""

    @property
    def backbone_id(self) -> str: ...

    def embed_bytes(self, blobs: list[bytes]) -> list[EmbedResult]: ...

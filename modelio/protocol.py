"""What every embedder returns, in-process or over HTTP: one ``EmbedResult`` per input image, and the
handler's JSON answer for one image (written by the handler, read by modelserver/client.py).

The answer is ``{"embedding": [floats], "dim", "model", "runtime"}``. A caller that sends
``Accept: COMPACT`` gets ``"embedding_b64"`` (little-endian float32, base64) instead of the float list:
the same vector, without formatting and parsing 1,280 decimal numbers per image on both sides.

One request may carry several images (``{"images": [base64, ...]}``, at most ``MAX_IMAGES``): its answer is
``{"model", "runtime", "results": [...]}``, one entry per image in order, each an image's answer or
``{"error": reason}``: a bad image fails alone, and a build pays the per-request costs once per group. With
``"colour": true`` in that request each image's entry also carries ``"colour_b64"``: its colour descriptor
(modelio/colour.py's histograms, ``HIST_SIZE`` little-endian float32), from the same decode as its vector, so
the index build never decodes a photo itself.

A feature-map request (``{"feature_map": base64 image, "side": pixels}``) is answered with the backbone's
last feature map of that image before pooling: ``{"model", "shape": [C, h, w], "map_b64"}`` (little-endian
float16, channels first). The gateway outlines the item of a whole photo with it (gateway/outline.py).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelio.colour import HIST_SIZE

#: The media type a caller accepts to get the vector as base64 float32.
COMPACT = "application/vnd.photo.embedding-b64+json"


def encode_answer(vector: np.ndarray, backbone_id: str, runtime: str, compact: bool = False,
                  colour: np.ndarray | None = None) -> bytes:
    """One image's answer as JSON bytes (with its colour histogram when given)."""
    vec = np.asarray(vector, dtype="<f4")
    body: dict[str, object] = {"dim": int(vec.shape[0]), "model": backbone_id, "runtime": runtime}
    if compact:
        body["embedding_b64"] = base64.b64encode(vec.tobytes()).decode("ascii")
    else:
        body["embedding"] = vec.tolist()
    if colour is not None:
        body["colour_b64"] = base64.b64encode(np.asarray(colour, dtype="<f4").tobytes()).decode("ascii")
    return json.dumps(body, separators=(",", ":")).encode()


#: The most images one request may carry.
MAX_IMAGES = 64


def encode_answers(results: list[EmbedResult], backbone_id: str, runtime: str, compact: bool = False) -> bytes:
    """A several-image request's answer as JSON bytes: one entry per image, in order."""
    entries = [json.loads(encode_answer(r.vector, backbone_id, runtime, compact, r.colour)) if r.error is None
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
            out.append(EmbedResult(vector=decode_vector(entry), colour=decode_colour(entry)))
    return out


def decode_colour(body: dict) -> np.ndarray | None:
    """An answer's colour histogram, or None when it has none; ``ValueError`` when it is not ``HIST_SIZE``
    finite, non-negative floats (an answer is untrusted input too)."""
    if "colour_b64" not in body:
        return None
    hist = np.frombuffer(base64.b64decode(body["colour_b64"], validate=True), dtype="<f4").astype(np.float32)
    if hist.shape != (HIST_SIZE,) or not np.isfinite(hist).all() or (hist < 0).any():
        raise ValueError(f"a colour histogram must be {HIST_SIZE} finite, non-negative floats, got {hist.size} "
                         "(an archive built by other code sends another size: rebuild it, make mar)")
    return hist


def decode_vector(body: dict) -> np.ndarray:
    """The vector of an answer in either form; ``ValueError`` when it is malformed."""
    if "embedding_b64" in body:
        vec = np.frombuffer(base64.b64decode(body["embedding_b64"], validate=True), dtype="<f4")
    else:
        vec = np.asarray(body["embedding"], dtype=np.float32)
    if vec.ndim != 1 or ("dim" in body and vec.shape[0] != body["dim"]):
        raise ValueError(f"embedding of shape {vec.shape} does not match dim {body.get('dim')}")
    return vec.astype(np.float32)


#: The largest feature map an answer may carry (cells × channels): 20 × 40 cells of 1,280 channels.
MAX_MAP_VALUES = 20 * 40 * 1280


def encode_feature_map(fmap: np.ndarray, backbone_id: str) -> bytes:
    """A feature-map answer as JSON bytes."""
    values = np.clip(np.asarray(fmap, dtype=np.float32), -65504.0, 65504.0).astype("<f2")  # float16's range
    body = {"model": backbone_id, "shape": [int(n) for n in values.shape],
            "map_b64": base64.b64encode(values.tobytes()).decode("ascii")}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_feature_map(body: object) -> np.ndarray:
    """The (C, h, w) float32 map of a feature-map answer; ``ValueError`` when it is malformed: not three
    positive sizes, more than ``MAX_MAP_VALUES``, bytes that do not fill the shape, or not finite."""
    shape = body.get("shape") if isinstance(body, dict) else None
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ValueError("a feature map's shape must be three positive whole numbers")
    if shape[0] * shape[1] * shape[2] > MAX_MAP_VALUES:
        raise ValueError(f"a feature map of shape {shape} is larger than {MAX_MAP_VALUES:,} values")
    raw = base64.b64decode(str(body.get("map_b64", "")), validate=True)
    if len(raw) != 2 * shape[0] * shape[1] * shape[2]:
        raise ValueError(f"a feature map of shape {shape} needs {2 * shape[0] * shape[1] * shape[2]} bytes, "
                         f"got {len(raw)}")
    fmap = np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(shape)
    if not np.isfinite(fmap).all():
        raise ValueError("a feature map must be finite numbers")
    return fmap


@dataclass(frozen=True)
class EmbedResult:
    """One input's outcome: a unit vector, or the reason the input was refused."""

    vector: np.ndarray | None = None
    error: str | None = None
    colour: np.ndarray | None = None  # its colour histogram, when asked for and given




class BatchEmbedder(Protocol):
    """Anything that embeds image bytes: ``handlers.embedder.Embedder`` or ``TorchServeClient``."""

    @property
    def backbone_id(self) -> str: ...

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        """One result per blob; ``colour``: each with its colour histogram where the embedder can give it."""
        ...

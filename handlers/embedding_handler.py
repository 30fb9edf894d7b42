"""TorchServe handler: image bytes (or base64 in JSON) → ``{"embedding", "dim", "model"}``; several images in
one request (``{"images": [base64, ...]}``) → one answer each, in order; ``{"feature_map": base64, "side": n}``
→ the image's last feature map (modelio/protocol.py).

Batch-aware: TorchServe hands ``handle`` up to ``batch_size`` requests; every request gets exactly
one answer, and a bad image answers 400 for its own request only (in a several-image request, an error entry
for that image only). All the work is in ``handlers.embedder.Embedder`` so the same code runs in-process.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.embedder import Embedder
from modelio.imaging import ImageError
from modelio.protocol import COMPACT, MAX_IMAGES, encode_answer, encode_answers, encode_feature_map

log = logging.getLogger(__name__)


def request_bytes(row: dict) -> bytes:
    """Raw bytes of one request: a binary body, or base64 under ``image``/``data`` in a JSON body."""
    payload = row.get("data") if row.get("data") is not None else row.get("body")
    if payload is None and row:  # a form upload under another field name
        payload = next(iter(row.values()))
    if isinstance(payload, dict):
        payload = payload.get("image") or payload.get("data") or payload.get("b64")
        if payload is None:
            return b""
    if isinstance(payload, str):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return payload.encode("utf-8", "replace")  # decodes as "not an image" below
    return bytes(payload or b"")


def _json_payload(row: dict) -> object:
    """A request's body, parsed when it is JSON sent without its content type."""
    payload = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(payload, bytes | bytearray) and payload[:1] == b"{":
        try:
            return json.loads(payload)
        except ValueError:
            return None
    return payload


def request_feature_map(row: dict) -> tuple[bytes, object] | None:
    """The image and the side asked for by a feature-map request (``{"feature_map": base64, "side": n}``), or
    None for any other request. Text that is not base64 becomes bytes that fail as "not an image"."""
    payload = _json_payload(row)
    if not isinstance(payload, dict) or "feature_map" not in payload:
        return None
    image = payload["feature_map"]
    return (request_bytes({"data": image}) if isinstance(image, str) else b""), payload.get("side")


def request_images(row: dict) -> tuple[list[bytes], bool] | None:
    """The images of a several-image request (a JSON body ``{"images": [base64, ...]}``) and whether it asks for
    each one's colour histogram (``"colour": true``), or None for a one-image request; ``ValueError`` when the
    list is not 1 to ``MAX_IMAGES`` items. An item that is not base64 text becomes bytes that fail alone as
    "not an image"."""
    payload = _json_payload(row)
    if not isinstance(payload, dict) or "images" not in payload:
        return None
    images = payload["images"]
    if not isinstance(images, list) or not 0 < len(images) <= MAX_IMAGES:
        raise ValueError(f"images must be a list of 1 to {MAX_IMAGES} base64 images")
    return [request_bytes({"data": item}) if isinstance(item, str) else b"" for item in images], \
        payload.get("colour") is True


def wants_compact(context, idx: int) -> bool:
    """Whether request ``idx`` accepts the base64 float32 answer (modelio/protocol.py)."""
    headers = context.get_all_request_header(idx) or {}
    return any(k.lower() == "accept" and COMPACT in str(v) for k, v in headers.items())


class EmbeddingHandler(BaseHandler):
    def initialize(self, context) -> None:
        props = context.system_properties
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        self.embedder = Embedder.from_model_dir(Path(props["model_dir"]), device=device)
        self.embedder.backbone.feature_map_network()  # built here, not on a shopper's first whole photo
        log.info("loaded %s (dim %d) with runtime %s on %s", self.embedder.backbone_id, self.embedder.dim,
                 self.embedder.runtime, device)
        self.initialized = True

    def handle(self, data: list[dict], context) -> list[bytes]:
        log.info("batch of %d", len(data))
        maps = {idx: asked for idx, row in enumerate(data) if (asked := request_feature_map(row)) is not None}
        answers = self._embeddings([row for idx, row in enumerate(data) if idx not in maps], context,
                                   [idx for idx in range(len(data)) if idx not in maps])
        for idx, (blob, side) in maps.items():
            answers[idx] = self._feature_map(context, idx, blob, side)
        return [answers[idx] for idx in range(len(data))]

    def _feature_map(self, context, idx: int, blob: bytes, side: object) -> bytes:
        """Request ``idx``'s feature map, or its 400 answer (a bad image or side fails this request alone)."""
        context.set_response_content_type(idx, "application/json")
        try:
            fmap = self.embedder.feature_map(blob, side)  # type: ignore[arg-type] - checked there
        except (ImageError, ValueError) as exc:
            context.set_response_status(code=400, phrase="Bad request", idx=idx)
            return json.dumps({"error": str(exc), "model": self.embedder.backbone_id}).encode()
        except Exception:  # noqa: BLE001 - this request fails alone; the batch's embeddings are answered
            log.exception("feature map failed")
            context.set_response_status(code=500, phrase="Feature map failed", idx=idx)
            return json.dumps({"error": "the feature map could not be computed"}).encode()
        return encode_feature_map(fmap, self.embedder.backbone_id)

    def _embeddings(self, data: list[dict], context, indices: list[int]) -> dict[int, bytes]:
        """The answers of the embedding requests ``data`` (request numbers ``indices``), by request number."""
        blobs: list[bytes] = []
        colour: list[bool] = []  # per blob: whether its request asked for the colour histogram
        groups: list[tuple[int, int | None, str | None]] = []  # per request: first blob, images (None: one), error
        for row in data:
            try:
                asked = request_images(row)
            except ValueError as exc:
                groups.append((len(blobs), 0, str(exc)))
                continue
            images, wants_colour = asked if asked is not None else ([request_bytes(row)], False)
            groups.append((len(blobs), None if asked is None else len(images), None))
            blobs.extend(images)
            colour.extend([wants_colour] * len(images))
        results = self.embedder.embed_bytes(blobs, colour=colour)
        return {idx: self._answer(context, idx, results, group) for idx, group in zip(indices, groups, strict=True)}

    def _answer(self, context, idx: int, results: list, group: tuple[int, int | None, str | None]) -> bytes:
        """Request ``idx``'s answer (encoded here: TorchServe would json.dumps a dict with indent=2, a line per
        float): its image's, or each of its images' in order."""
        start, count, error = group
        context.set_response_content_type(idx, "application/json")
        model, runtime = self.embedder.backbone_id, self.embedder.runtime
        if count is not None and error is None:
            return encode_answers(results[start:start + count], model, runtime, compact=wants_compact(context, idx))
        res = results[start] if error is None else None
        if res is None or res.error is not None:
            context.set_response_status(code=400, phrase="Bad image" if error is None else "Bad request", idx=idx)
            return json.dumps({"error": error or res.error, "model": model}).encode()
        return encode_answer(res.vector, model, runtime, compact=wants_compact(context, idx))

"""TorchServe handler: image bytes (or base64 in JSON) → ``{"embedding", "dim", "model"}``; several images in
one request (``{"images": [base64, ...]}``) → one answer each, in order (modelio/protocol.py).

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
from modelio.protocol import COMPACT, MAX_IMAGES, encode_answer, encode_answers

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


def request_images(row: dict) -> tuple[list[bytes], bool] | None:
    """The images of a several-image request (a JSON body ``{"images": [base64, ...]}``) and whether it asks for
    each one's colour histogram (``"colour": true``), or None for a one-image request; ``ValueError`` when the
    list is not 1 to ``MAX_IMAGES`` items. An item that is not base64 text becomes bytes that fail alone as
    "not an image"."""
    payload = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(payload, bytes | bytearray) and payload[:1] == b"{":  # JSON sent without its content type
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
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
        log.info("loaded %s (dim %d) with runtime %s on %s", self.embedder.backbone_id, self.embedder.dim,
                 self.embedder.runtime, device)
        self.initialized = True

    def handle(self, data: list[dict], context) -> list[bytes]:
        log.info("batch of %d", len(data))
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
        return [self._answer(context, idx, results, group) for idx, group in enumerate(groups)]

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

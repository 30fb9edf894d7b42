"""TorchServe handler: image bytes (or base64 in JSON) → ``{"embedding", "dim", "model"}``.

Batch-aware: TorchServe hands ``handle`` up to ``batch_size`` requests; every request gets exactly
one answer, and a bad image answers 400 for its own request only. All the work is in
``handlers.embedder.Embedder`` so the same code runs in-process.
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
from modelio.protocol import COMPACT, encode_answer

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
        results = self.embedder.embed_bytes([request_bytes(row) for row in data])
        out: list[bytes] = []
        for idx, res in enumerate(results):
            # Encoded here: TorchServe would json.dumps a dict with indent=2, a line per float.
            context.set_response_content_type(idx, "application/json")
            if res.error is not None:
                context.set_response_status(code=400, phrase="Bad image", idx=idx)
                out.append(json.dumps({"error": res.error, "model": self.embedder.backbone_id}).encode())
            else:
                out.append(encode_answer(res.vector, self.embedder.backbone_id, self.embedder.runtime,
                                         compact=wants_compact(context, idx)))
        return out

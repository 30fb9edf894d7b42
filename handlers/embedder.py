"""In-process embedder: the same decode → preprocess → model path as the TorchServe handler.

The handler is a thin adapter over ``Embedder.embed_bytes``; the index build and the tests use this
class directly when no TorchServe is wanted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from handlers.backbones import LoadedBackbone, resolve_weights
from handlers.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_image
from handlers.protocol import EmbedResult

#: Written into the model archive next to the weights: which backbone the weights belong to.
BACKBONE_FILE = "backbone.json"


class Embedder:
    """Turns image bytes into L2-normalised float32 vectors, in batches, one result per input."""

    def __init__(self, backbone: LoadedBackbone, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.backbone = backbone
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    @classmethod
    def create(
        cls, name: str = "auto", weights: Path | None = None, download: bool = False, device: str = "cpu"
    ) -> Embedder:
        """Resolve weights (see ``backbones.resolve_weights``) and load the model."""
        resolved, path = resolve_weights(name, weights, download)
        return cls(LoadedBackbone(resolved, path, device))

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: str = "cpu") -> Embedder:
        """Load what ``scripts/build_mar.py`` packed: ``backbone.json`` names the weights file."""
        meta = json.loads((Path(model_dir) / BACKBONE_FILE).read_text())
        return cls(LoadedBackbone(meta["name"], Path(model_dir) / meta["weights_file"], device))

    @property
    def model_id(self) -> str:
        return self.backbone.id

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def embed_bytes(self, blobs: list[bytes]) -> list[EmbedResult]:
        """Decode and embed every blob; a bad blob gets an error result and never fails the others."""
        results: list[EmbedResult] = [EmbedResult()] * len(blobs)
        good: list[tuple[int, object]] = []
        for i, blob in enumerate(blobs):
            try:
                good.append((i, decode_image(blob, self.max_pixels)))
            except ImageError as exc:
                results[i] = EmbedResult(error=str(exc))
        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            vectors = self.backbone.embed([img for _, img in chunk]).numpy().astype(np.float32)
            for (i, _), vec in zip(chunk, vectors, strict=True):
                results[i] = EmbedResult(vector=vec)
        return results

    def embed_one(self, blob: bytes) -> np.ndarray:
        """Embed a single image; raises ``ImageError`` if it is not one."""
        result = self.embed_bytes([blob])[0]
        if result.error:
            raise ImageError(result.error)
        return result.vector

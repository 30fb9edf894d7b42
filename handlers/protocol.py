"""What every embedder returns, in-process or over HTTP: one ``EmbedResult`` per input image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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

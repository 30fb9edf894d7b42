"""Stand-in models for build tests (the build, not the model, is under test): a unit vector from the image's
bytes. Frozen dataclasses, so a Ray worker can receive one and call it to get its embedder."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelio.protocol import EmbedResult


class HashEmbedder:
    """Counts what it embeds; dies after ``die_after`` images (a driver killed mid-build) with
    KeyboardInterrupt; sleeps ``delay_s`` per batch (so a test can kill a build midway)."""

    backbone_id = "hash-16"

    def __init__(self, die_after: int | None = None, delay_s: float = 0.0, trace: Path | None = None) -> None:
        self.embedded = 0
        self.die_after = die_after
        self.delay_s = delay_s
        self.trace = trace

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        if self.die_after is not None and self.embedded + len(blobs) > self.die_after:
            raise KeyboardInterrupt("killed")
        time.sleep(self.delay_s)
        self.embedded += len(blobs)
        if self.trace is not None:  # which process embedded (a Ray test counts the nodes that did)
            self.trace.mkdir(parents=True, exist_ok=True)
            (self.trace / f"{os.getpid()}-{self.node()}").touch()
        out = []
        for blob in blobs:
            v = np.frombuffer(hashlib.sha256(blob).digest()[:16], np.uint8).astype(np.float32) + 1
            out.append(EmbedResult(vector=v / np.linalg.norm(v)))
        return out

    @staticmethod
    def node() -> str:
        try:
            import ray

            return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "driver"
        except ImportError:
            return "driver"


@dataclass(frozen=True)
class MakeHash:
    """A Ray worker's factory of ``HashEmbedder``; ``crash_once``: the first worker to embed kills its own
    process (a file marks that it happened), as a node lost mid-build would."""

    trace: str = ""
    crash_once: str = ""
    delay_s: float = 0.0

    def __call__(self) -> HashEmbedder:
        if self.crash_once:
            return CrashingEmbedder(Path(self.crash_once), self.delay_s, Path(self.trace) if self.trace else None)
        return HashEmbedder(delay_s=self.delay_s, trace=Path(self.trace) if self.trace else None)


class CrashingEmbedder(HashEmbedder):
    def __init__(self, marker: Path, delay_s: float, trace: Path | None) -> None:
        super().__init__(delay_s=delay_s, trace=trace)
        self.marker = marker

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)  # the worker process dies mid-shard, no clean-up
        return super().embed_bytes(blobs, colour)

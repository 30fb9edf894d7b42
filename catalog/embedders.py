"""Which model a build embeds with, as plain values: the build's driver makes one from it, and so does every
Ray worker (``catalog.ray_engine``), each its own (a TorchServe client or an in-process runtime)."""

from __future__ import annotations

from dataclasses import dataclass

from modelio.protocol import BatchEmbedder

#: ``kind``: through TorchServe (or SageMaker), or in this process.
KINDS = ("torchserve", "local")


@dataclass(frozen=True)
class EmbedderSpec:
    kind: str = "torchserve"
    url: str = "http://127.0.0.1:8080"  # TorchServe, or sagemaker://ENDPOINT
    model: str = "embedding"
    timeout: float = 60.0
    token: str = ""
    key_file: str = ""
    concurrency: int = 8  # concurrent TorchServe requests of one process
    backbone: str = "auto"  # local only
    weights: str = ""  # local only: an explicit weights file
    archive: str = ""  # local only: embed with a built model archive's runtime

    def __call__(self) -> BatchEmbedder:
        """What a Ray worker calls (``RayEngine``'s factory)."""
        return self.create()

    def create(self, probe: bool = True) -> BatchEmbedder:
        """The embedder; a TorchServe one is probed first (``probe``), so a build fails before any download."""
        if self.kind not in KINDS:
            raise ValueError(f"embedder kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "local":
            from pathlib import Path

            from handlers.embedder import Embedder

            if self.archive:  # the archive's runtime (e.g. OpenVINO), checked as the handler checks it
                return Embedder.from_archive(Path(self.archive))
            return Embedder.create(self.backbone, Path(self.weights) if self.weights else None)
        from modelserver.client import BUILD_ATTEMPTS, make_client

        client = make_client(self.url, self.model, self.timeout, self.token, self.key_file, attempts=BUILD_ATTEMPTS)
        client.concurrency = self.concurrency
        if probe:
            client.probe()
        return client

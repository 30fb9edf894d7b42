"""In-process embedder: the same decode → preprocess → model path as the TorchServe handler.

The handler is a thin adapter over ``Embedder.embed_bytes``; the index build and the tests use this
class directly when no TorchServe is wanted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.backbones import SPECS, FeatureMap, backbone_id, resolve_weights, sha256_file
from handlers.runtimes import MIN_COSINE, load_runtime, min_cosine, probe_images
from modelio.colour import histogram_of
from modelio.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_image
from modelio.protocol import EmbedResult

#: Written into the model archive next to the weights: which backbone the weights belong to.
BACKBONE_FILE = "backbone.json"
#: A feature map's shorter side may be asked for between these (pixels), its longer side is at most
#: ``MAP_ASPECT`` times the shorter: 640 × 1280 px is 20 × 40 cells, ~1.6 s on one core.
MAP_SIDES = (64, 640)
MAP_ASPECT = 2


class LoadedBackbone:
    """A ready model plus its transform and identity; ``embed`` maps RGB images to unit vectors.

    ``runtime`` picks what runs the network (handlers/runtimes.py); the weights file is hashed for the
    backbone id whatever the runtime, and ``model_file`` is the exported network the runtime loads."""

    def __init__(self, name: str, weights: Path, device: str = "cpu", runtime: str = "eager",
                 model_file: Path | None = None) -> None:
        self.spec = SPECS[name]
        self.name, self.weights, self.device = name, Path(weights), device
        self._feature_map: FeatureMap | None = None
        self.weights_sha256 = sha256_file(weights)
        self.backbone_id = backbone_id(name, self.weights_sha256)
        self.runtime = load_runtime(runtime, name, weights, model_file, device)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        return self.spec.preprocess.batch(images)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, each row L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        feats = np.asarray(self.runtime(self.preprocess(images)), dtype=np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    def feature_map_network(self) -> FeatureMap:
        """The eager network of ``feature_map``, built on first use (the TorchServe handler builds it when its
        worker starts, so no shopper's query pays for it)."""
        if self._feature_map is None:
            self._feature_map = FeatureMap(self.name, self.weights).to(self.device).eval()
        return self._feature_map

    def feature_map(self, image: Image.Image, side: int) -> np.ndarray:
        """(C, h, w) float32: the last feature map of ``image`` resized so its shorter side is ``side`` pixels
        (the longer at most ``MAP_ASPECT`` times that), one cell per 32 pixels. Eager PyTorch on any size (the
        exported network has the model's fixed input); built on first use."""
        import torch

        network = self.feature_map_network()
        width, height = image.size
        scale = side / min(width, height)
        size = (min(round(width * scale), MAP_ASPECT * side), min(round(height * scale), MAP_ASPECT * side))
        pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
        with torch.inference_mode():
            out = network(torch.from_numpy(pixels[None].copy()).to(self.device))
        return out[0].float().cpu().numpy()


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
        """Load what ``scripts/build_mar.py`` packed, and check it: ``backbone.json`` names the weights, the
        runtime and its model file, the backbone id and dim, and eager's vectors of the probe images."""
        model_dir = Path(model_dir)
        meta = json.loads((model_dir / BACKBONE_FILE).read_text())
        model_file = model_dir / meta["model_file"] if meta.get("model_file") else None
        backbone = LoadedBackbone(meta["name"], model_dir / meta["weights_file"], device,
                                  meta.get("runtime", "eager"), model_file)
        # The archive says what it packed; a different checksum or size means a damaged or mixed-up archive.
        promised = (meta["id"], meta["dim"], meta["weights_sha256"])
        if (backbone.backbone_id, backbone.dim, backbone.weights_sha256) != promised:
            raise ValueError(f"{BACKBONE_FILE} promises {meta['id']} (dim {meta['dim']}) but the packed weights "
                             f"give {backbone.backbone_id} (dim {backbone.dim})")
        embedder = cls(backbone)
        if meta.get("probe") is not None:  # the runtime must give eager's vectors, or the shared id would lie
            agree = min_cosine(backbone.embed(probe_images()), np.asarray(meta["probe"], np.float32))
            if agree < MIN_COSINE:
                raise ValueError(f"runtime {backbone.runtime.name} disagrees with eager PyTorch on the probe "
                                 f"images (cosine {agree:.5f} < {MIN_COSINE}); refusing to serve its vectors")
        return embedder

    @classmethod
    def from_archive(cls, mar: Path, device: str = "cpu") -> Embedder:
        """The model of a built ``.mar``, in-process (e.g. ``build_index.py --embedder local --archive``). The
        unpacked archive lives as long as the embedder (its feature map loads the weights on first use)."""
        import shutil
        import tempfile
        import weakref
        import zipfile

        tmp = tempfile.mkdtemp(prefix="mar-")
        try:
            with zipfile.ZipFile(mar) as archive:
                archive.extractall(tmp)
            embedder = cls.from_model_dir(Path(tmp), device)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        weakref.finalize(embedder, shutil.rmtree, tmp, ignore_errors=True)
        return embedder

    @property
    def runtime(self) -> str:
        """The runtime really running the network (``eager`` when an optimised one had to fall back)."""
        return self.backbone.runtime.name

    @property
    def backbone_id(self) -> str:
        return self.backbone.backbone_id

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def embed_bytes(self, blobs: list[bytes], colour: bool | list[bool] = False) -> list[EmbedResult]:
        """Decode and embed every blob; a bad blob gets an error result and never fails the others. ``colour``
        (for all blobs, or one flag each): the result also carries the colour histogram of the same decode."""
        wanted = colour if isinstance(colour, list) else [colour] * len(blobs)
        results: list[EmbedResult] = [EmbedResult()] * len(blobs)
        good: list[tuple[int, object]] = []
        for i, blob in enumerate(blobs):
            try:
                good.append((i, decode_image(blob, self.max_pixels, draft=self.backbone.spec.preprocess.resize)))
            except ImageError as exc:
                results[i] = EmbedResult(error=str(exc))
        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            vectors = self.backbone.embed([img for _, img in chunk])
            for (i, img), vec in zip(chunk, vectors, strict=True):
                results[i] = EmbedResult(vector=vec, colour=histogram_of(img) if wanted[i] else None)
        return results

    def feature_map(self, blob: bytes, side: int) -> np.ndarray:
        """The last feature map (C, h, w) of the image ``blob``, its shorter side resized to ``side`` (in
        ``MAP_SIDES``); ``ImageError`` if it is not an image, ``ValueError`` for a side out of range."""
        if isinstance(side, bool) or not isinstance(side, int) or not MAP_SIDES[0] <= side <= MAP_SIDES[1]:
            raise ValueError(f"side must be a whole number of pixels from {MAP_SIDES[0]} to {MAP_SIDES[1]}")
        return self.backbone.feature_map(decode_image(blob, self.max_pixels, draft=side), side)

    def embed_one(self, blob: bytes) -> np.ndarray:
        """Embed a single image; raises ``ImageError`` if it is not one."""
        result = self.embed_bytes([blob])[0]
        if result.error:
            raise ImageError(result.error)
        return result.vector

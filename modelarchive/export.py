"""Archive-build time only: export the network to ONNX and choose the runtime by measurement.

The export uses the same weights and ``build_model`` as eager PyTorch; every candidate runtime must give
eager's vectors (cosine ≥ ``MIN_COSINE`` on real catalog images) before it may be packed. ``auto`` packs
the fastest runtime that is installed and passes. Nothing here downloads anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.backbones import SPECS, build_network
from handlers.runtimes import MIN_COSINE, RUNTIMES, Runtime, RuntimeUnavailable, eager, load_runtime, min_cosine

log = logging.getLogger(__name__)

AUTO = "auto"
RUNTIME_CHOICES = (AUTO, *RUNTIMES)


class ExportError(RuntimeError):
    """The asked-for runtime cannot be packed: not installed, or its vectors differ from eager's."""


@dataclass
class RuntimeChoice:
    """The runtime chosen for an archive and the figures it was chosen on."""

    runtime: str
    min_cosine: dict[str, float] = field(default_factory=dict)  # per runtime, against eager
    images_per_s: dict[str, float] = field(default_factory=dict)  # model only, one batch of the check images
    refused: dict[str, str] = field(default_factory=dict)  # runtime → why it was not packable


def export_onnx(name: str, weights: Path, dest: Path) -> Path:
    """The network (uint8 pixels in, normalisation inside) as an ONNX graph, dynamic batch, at ``dest``."""
    import torch

    crop = SPECS[name].preprocess.crop
    model = build_network(name, weights)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # torch.export-based exporter (PyTorch's supported one; needs onnxscript), one self-contained file.
    torch.onnx.export(model, (torch.zeros(2, crop, crop, 3, dtype=torch.uint8),), str(dest), input_names=["pixels"],
                      output_names=["features"], dynamic_shapes=({0: batch},), opset_version=18, dynamo=True,
                      external_data=False, verbose=False)
    return dest


def _speed(run: Runtime, batch: np.ndarray, repeats: int = 3) -> float:
    """Model-only images/s on (at most) 64 of the check images, best of ``repeats``."""
    batch = batch[:64]
    run(batch[:2])  # warm-up: first-call allocation and compilation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - started)
    return len(batch) / best


def choose_runtime(requested: str, name: str, weights: Path, model_file: Path, images: list[Image.Image],
                   reference_run: Runtime | None = None) -> RuntimeChoice:
    """Check each candidate against eager (``reference_run``, loaded here if not given) on ``images`` and pick
    ``requested``, or for ``auto`` the fastest that passes. ``ExportError`` when a requested one cannot be packed."""
    batch = SPECS[name].preprocess.batch(images)
    reference_run = reference_run or Runtime("eager", eager(name, weights))
    reference = reference_run(batch)
    choice = RuntimeChoice(runtime="eager", min_cosine={"eager": 1.0})
    candidates = RUNTIMES if requested == AUTO else (requested,)
    for runtime in candidates:
        if runtime == "eager":
            choice.images_per_s["eager"] = round(_speed(reference_run, batch), 1)
            continue
        try:
            run = load_runtime(runtime, name, weights, model_file)
            if run.name != runtime:
                raise RuntimeUnavailable(f"{runtime} is not installed")
        except RuntimeUnavailable as exc:
            choice.refused[runtime] = str(exc)
            continue
        agree = min_cosine(run(batch), reference)
        choice.min_cosine[runtime] = round(agree, 6)
        if agree < MIN_COSINE:
            choice.refused[runtime] = f"cosine to eager {agree:.5f} < {MIN_COSINE}"
            continue
        choice.images_per_s[runtime] = round(_speed(run, batch), 1)
    if requested != AUTO:
        if requested in choice.refused:
            raise ExportError(f"runtime {requested} cannot be packed: {choice.refused[requested]}")
        choice.runtime = requested
    else:
        choice.runtime = max(choice.images_per_s, key=choice.images_per_s.get)
    log.info("runtime %s (asked: %s); images/s %s; cosine to eager %s; refused %s", choice.runtime, requested,
             choice.images_per_s, choice.min_cosine, choice.refused or "none")
    return choice

"""What runs the network: eager PyTorch, ONNX Runtime or OpenVINO, behind one call.

A runtime maps a preprocessed batch (n, crop, crop, 3) uint8 to pooled features (n, dim); the
normalisation is part of the network (``handlers.backbones.Normalized``). The ONNX
file is exported from the same weights when the archive is built (modelarchive/export.py), never here.
Every runtime gets the same input array from ``Preprocess`` (handlers/backbones.py); their vectors
agree to cosine ≥ 0.999 (checked when the archive is built, and again by the handler when it loads), so
they share one backbone id: an index built with one runtime is searched with another.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

RUNTIMES = ("eager", "onnxruntime", "openvino")
#: The exported network inside a model archive.
ONNX_FILE = "model.onnx"
#: Lowest cosine between a runtime's vectors and eager PyTorch's for the same images that keeps them
#: interchangeable (one backbone id).
MIN_COSINE = 0.999

Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Runtime:
    """A loaded network: ``runtime(batch)`` → features (n, dim); ``name`` says which runtime really runs."""

    name: str
    run: Run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


class RuntimeUnavailable(RuntimeError):
    """The runtime's package is not installed, or it cannot load the model file."""


def threads() -> int:
    """Threads for one model instance: ``PHOTO_THREADS``, else TorchServe's per-worker share, else all cores."""
    for var in ("PHOTO_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return os.cpu_count() or 1


def eager(name: str, weights: Path, device: str = "cpu") -> Run:
    import torch

    from handlers.backbones import build_network

    model = build_network(name, weights).to(device)
    target = torch.device(device)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(target)).float().cpu().numpy()

    return run


def onnxruntime(model_file: Path, device: str = "cpu") -> Run:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: on a small machine the spinning threads starve TorchServe's frontend,
    # the gateway and the next request's decoding (measured: docs/PERFORMANCE.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):  # onnxruntime-gpu: TensorRT first where it is built in, then CUDA
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()] + providers
    session = ort.InferenceSession(str(model_file), options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def openvino_config(device: str, thread_count: int) -> dict[str, object]:
    """How OpenVINO compiles the network on ``device`` ("CPU" or "GPU"). f32: it would otherwise run in bf16
    on CPUs with AMX/AVX512-BF16, which moves vectors further from eager than the 0.999 cosine the shared
    backbone id promises. On the CPU, threads are not pinned: OpenVINO pins each process's threads to the
    first cores, so TorchServe's workers all ran on the same core (2 workers × 1 thread on 2 cores: 96 img/s
    pinned, 214 unpinned, model only; docs/PERFORMANCE.md)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if device == "CPU":
        config.update({"INFERENCE_NUM_THREADS": str(thread_count), "ENABLE_CPU_PINNING": False})
    return config


def openvino(model_file: Path, device: str = "cpu") -> Run:
    try:
        import openvino as ov
    except ImportError as exc:
        raise RuntimeUnavailable("openvino is not installed (pip install openvino)") from exc
    device_name = "GPU" if device.startswith("cuda") else "CPU"
    compiled = ov.Core().compile_model(str(model_file), device_name, openvino_config(device_name, threads()))
    requests = threading.local()  # an infer request runs one batch at a time: one per calling thread

    def run(batch: np.ndarray) -> np.ndarray:
        if not hasattr(requests, "request"):
            requests.request = compiled.create_infer_request()
        return np.array(requests.request.infer({0: batch})[0])  # copy: the request reuses its output buffer

    return run


def load_runtime(runtime: str, name: str, weights: Path, model_file: Path | None, device: str = "cpu") -> Runtime:
    """The runtime asked for; eager when it is ``eager``, or when the optimised one cannot be had here
    (logged: the answers' ``runtime`` field says what really runs)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "eager":
        return Runtime("eager", eager(name, weights, device))
    try:
        if model_file is None or not Path(model_file).is_file():
            raise RuntimeUnavailable(f"no exported model file for {runtime}")
        loader = onnxruntime if runtime == "onnxruntime" else openvino
        return Runtime(runtime, loader(Path(model_file), device))
    except RuntimeUnavailable as exc:
        log.warning("runtime %s unavailable (%s); falling back to eager PyTorch", runtime, exc)
        return Runtime("eager", eager(name, weights, device))


def probe_images() -> list[Image.Image]:
    """Two fixed synthetic pictures (no randomness, no files): the archive stores eager's vectors of them and
    the handler checks its runtime against those when it loads."""
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    stripes = np.stack([127 + 120 * np.sin(x / 9), 127 + 120 * np.cos(y / 13), (x + y) % 256], axis=2)
    rings = np.stack([(np.hypot(x - 160, y - 120) * 3) % 256, x * 255 / 320, 255 - y * 255 / 240], axis=2)
    return [Image.fromarray(a.astype(np.uint8), "RGB") for a in (stripes, rings)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest row-wise cosine between two (n, dim) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min()) if len(a) else 1.0

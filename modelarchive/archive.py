"""Package a backbone into a TorchServe model archive (``.mar``) with ``torch-model-archiver``.

The archive holds the weights, for an optimised runtime the ONNX export of them (modelarchive/export.py),
``backbone.json`` (which backbone, which weights file, its checksum, the
backbone id and dim, all checked when the handler loads) and the ``handlers`` package, so the handler
imports the same preprocessing as in-process code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

import handlers
import modelio
from handlers.backbones import SPECS, backbone_id, resolve_weights, sha256_file
from handlers.embedder import BACKBONE_FILE
from handlers.runtimes import ONNX_FILE, Runtime, eager, probe_images
from modelarchive.export import AUTO, RUNTIME_CHOICES, RuntimeChoice, choose_runtime, export_onnx
from modelio.imaging import decode_image

log = logging.getLogger(__name__)

#: The packages the handler runs from; they hold only what the handler imports, and all of it is packed.
HANDLERS_DIR = Path(handlers.__file__).resolve().parent
MODELIO_DIR = Path(modelio.__file__).resolve().parent
DEFAULT_MODEL_NAME = "embedding"


#: Real catalog photos the runtimes are checked on when no other folder is given (shipped with the repo).
CHECK_IMAGES = Path(__file__).resolve().parent.parent / "data" / "demo" / "images"
CHECK_COUNT = 128


@dataclass(frozen=True)
class Archive:
    """A built model archive: where it is, the backbone id it serves, and the runtime it packs."""

    path: Path
    backbone_id: str
    choice: RuntimeChoice

    @property
    def runtime(self) -> str:
        return self.choice.runtime


def check_images(folder: Path | None = None, count: int = CHECK_COUNT) -> list[Image.Image]:
    """Up to ``count`` decoded JPEGs from ``folder`` (default: the sample catalog), plus the probe images."""
    files = sorted(Path(folder or CHECK_IMAGES).glob("*.jpg"))[:count]
    if not files:
        log.warning("no check images in %s: runtimes are checked on the probe images only", folder or CHECK_IMAGES)
    return [decode_image(f.read_bytes()) for f in files] + probe_images()


def build_archive(
    backbone: str = "auto",
    weights: Path | None = None,
    output: Path = Path("model_store"),
    model_name: str = DEFAULT_MODEL_NAME,
    download: bool = False,
    runtime: str = AUTO,
    images: Path | None = None,
) -> Archive:
    """Write ``output/<model_name>.mar`` with the weights, the handlers package and, for an optimised runtime,
    the ONNX export; ``runtime`` ``auto`` packs the fastest one that passes the check against eager."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    name, weights_path = resolve_weights(backbone, weights, download)
    digest = sha256_file(weights_path)
    served_id = backbone_id(name, digest)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        # Whole package as a sub-folder: the handler does `from handlers.backbones import ...` there too.
        shutil.copytree(HANDLERS_DIR, stage / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(MODELIO_DIR, stage / "modelio", ignore=shutil.ignore_patterns("__pycache__"))
        reference = Runtime("eager", eager(name, weights_path))  # the vectors every runtime must give
        choice = RuntimeChoice("eager", {"eager": 1.0})
        if runtime != "eager":
            onnx_file = export_onnx(name, weights_path, stage / ONNX_FILE)
            choice = choose_runtime(runtime, name, weights_path, onnx_file, check_images(images), reference)
            if choice.runtime == "eager":
                onnx_file.unlink()
        probe = reference(SPECS[name].preprocess.batch(probe_images()))
        meta = {"name": name, "weights_file": weights_path.name, "weights_sha256": digest, "id": served_id,
                "dim": SPECS[name].dim, "runtime": choice.runtime,
                "model_file": ONNX_FILE if choice.runtime != "eager" else None,
                "probe": [[float(v) for v in row] for row in probe]}
        (stage / BACKBONE_FILE).write_text(json.dumps(meta))
        _run_archiver(model_name, weights_path, stage, output)
    path = output / f"{model_name}.mar"
    log.info("wrote %s serving %s with runtime %s", path, served_id, choice.runtime)
    return Archive(path, served_id, choice)


def _run_archiver(model_name: str, weights: Path, stage: Path, output: Path) -> None:
    cmd = [
        str(Path(sys.executable).with_name("torch-model-archiver")),
        "--model-name", model_name,
        "--version", "1.0",
        "--serialized-file", str(weights),
        "--handler", str(HANDLERS_DIR / "embedding_handler.py"),
        "--extra-files", str(stage),
        "--export-path", str(output),
        "--force",
    ]
    log.info("running %s", " ".join(cmd))
    # torch-model-archiver stages files in $TMPDIR/<model name>: two builds on one machine (a CI run beside a
    # developer's tests) would share /tmp/embedding and break each other. A temp dir of its own per build.
    with tempfile.TemporaryDirectory(prefix="archiver-") as own_tmp:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TMPDIR": own_tmp, "TEMP": own_tmp, "TMP": own_tmp})
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout.strip()}")

"""Package a backbone into a TorchServe model archive (``.mar``) with ``torch-model-archiver``.

The archive holds the weights, ``backbone.json`` (which backbone, which weights file, its checksum)
and the whole ``handlers`` package, so the handler imports the same preprocessing as in-process code.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from handlers.backbones import SPECS, backbone_id, resolve_weights, sha256_file
from handlers.embedder import BACKBONE_FILE

log = logging.getLogger(__name__)

HANDLERS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "embedding"


def build_archive(
    backbone: str = "auto",
    weights: Path | None = None,
    output: Path = Path("model_store"),
    model_name: str = DEFAULT_MODEL_NAME,
    download: bool = False,
) -> tuple[Path, str]:
    """Write ``output/<model_name>.mar``; return its path and the backbone id it serves."""
    name, weights_path = resolve_weights(backbone, weights, download)
    digest = sha256_file(weights_path)
    model_id = backbone_id(name, digest)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        # Whole package as a sub-folder: the handler does `from handlers.backbones import ...` there too.
        shutil.copytree(HANDLERS_DIR, stage / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
        meta = {"name": name, "weights_file": weights_path.name, "weights_sha256": digest, "id": model_id,
                "dim": SPECS[name].dim}
        (stage / BACKBONE_FILE).write_text(json.dumps(meta, indent=2))
        cmd = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", model_name,
            "--version", "1.0",
            "--serialized-file", str(weights_path),
            "--handler", str(HANDLERS_DIR / "embedding_handler.py"),
            "--extra-files", str(stage),
            "--export-path", str(output),
            "--force",
        ]
        log.info("running %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout.strip()}")
    path = output / f"{model_name}.mar"
    log.info("wrote %s serving %s", path, model_id)
    return path, model_id

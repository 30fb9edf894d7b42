"""The model archive (modelarchive/archive.py): what it packs, and that the handler can trust it."""

from __future__ import annotations

import ast
import json
import zipfile

import numpy as np
import pytest

from handlers.embedder import BACKBONE_FILE, Embedder
from handlers.runtimes import RUNTIMES
from modelarchive.archive import HANDLERS_DIR, MODELIO_DIR

#: The packages the archive packs, and where each lives here.
PACKED = {"handlers": HANDLERS_DIR, "modelio": MODELIO_DIR}


def handler_imports(module: str = "handlers.embedding_handler", seen: set[str] | None = None) -> set[str]:
    """Modules of the packed packages the handler imports, directly or through each other ("pkg.module")."""
    seen = set() if seen is None else seen
    seen.add(module)
    package, name = module.split(".")
    tree = ast.parse((PACKED[package] / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKED:
            if node.module not in seen:
                handler_imports(node.module, seen)
    return seen


def test_archive_packs_exactly_what_the_handler_imports(model_store):
    names = set(zipfile.ZipFile(model_store / "embedding.mar").namelist())
    assert {"embedding_handler.py", BACKBONE_FILE} <= names
    packed = {n[:-3].replace("/", ".") for n in names if n.split("/")[0] in PACKED and n.endswith(".py")}
    packed -= {f"{package}.__init__" for package in PACKED}
    assert packed == handler_imports()  # nothing the handler does not need (no client, no process manager)


def test_backbone_json_is_checked_when_the_handler_loads(model_store, tmp_path):
    with zipfile.ZipFile(model_store / "embedding.mar") as mar:
        mar.extractall(tmp_path)
    meta = json.loads((tmp_path / BACKBONE_FILE).read_text())
    assert set(meta) == {"name", "weights_file", "weights_sha256", "id", "dim", "runtime", "model_file", "probe"}
    assert meta["runtime"] in RUNTIMES and (tmp_path / meta["model_file"]).is_file()
    loaded = Embedder.from_model_dir(tmp_path)
    assert loaded.backbone_id == meta["id"] and loaded.runtime == meta["runtime"]
    (tmp_path / BACKBONE_FILE).write_text(json.dumps({**meta, "id": meta["id"] + "-other"}))
    with pytest.raises(ValueError, match="promises"):
        Embedder.from_model_dir(tmp_path)
    # A runtime that does not give eager's vectors on the probe images is refused, not served under the id.
    probe = np.asarray(meta["probe"])
    probe[:, : probe.shape[1] // 2] *= -1
    (tmp_path / BACKBONE_FILE).write_text(json.dumps({**meta, "probe": probe.tolist()}))
    with pytest.raises(ValueError, match="disagrees with eager"):
        Embedder.from_model_dir(tmp_path)


def test_each_archiver_run_stages_in_a_temp_dir_of_its_own(tmp_path, monkeypatch):
    """torch-model-archiver stages in $TMPDIR/<model name>: two builds at once (CI beside a developer's tests)
    once broke each other in /tmp/embedding. Each run gets its own TMPDIR, removed afterwards."""
    import subprocess
    import tempfile
    from pathlib import Path

    from modelarchive import archive

    seen = []

    def run(cmd, **kwargs):
        seen.append(kwargs["env"]["TMPDIR"])
        assert Path(kwargs["env"]["TMPDIR"]).is_dir() and kwargs["env"]["TEMP"] == kwargs["env"]["TMPDIR"]
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(archive.subprocess, "run", run)
    for _ in range(2):
        archive._run_archiver("embedding", tmp_path / "w.pth", tmp_path, tmp_path)
    assert len(set(seen)) == 2 and all(Path(t).parent == Path(tempfile.gettempdir()) for t in seen)
    assert not any(Path(t).exists() for t in seen)

"""Vectors already computed, keyed by backbone id and image sha256, kept on local disk.

Written after every embedded chunk, so a build that is killed and re-run does not embed again what
it had finished. Each file is written atomically; a half-written one is never read.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from modelio.colour import DESCRIPTOR, HIST_SIZE


class VectorCache:
    def __init__(self, root: Path, backbone: str) -> None:
        self.dir = Path(root) / hashlib.sha256(backbone.encode()).hexdigest()[:16]

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        return self._load(self._path(digest))

    def _colour_path(self, digest: str) -> Path:
        """Named by the colour descriptor: a histogram another descriptor wrote is never read as this one."""
        return self._path(digest).with_suffix(f".{DESCRIPTOR}.npy")

    def get_colour(self, digest: str) -> np.ndarray | None:
        """The image's colour descriptor, when it was kept with its vector (and has the descriptor's size)."""
        colour = self._load(self._colour_path(digest))
        return colour if colour is not None and colour.shape == (HIST_SIZE,) else None

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, digest: str, vector: np.ndarray, colour: np.ndarray | None = None) -> None:
        """Keep the vector (and the colour histogram, when given: written first, so a vector never comes back
        with another image's colour)."""
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if colour is not None:
            self._write(self._colour_path(digest), colour)
        self._write(path, vector)

    @staticmethod
    def _write(path: Path, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)

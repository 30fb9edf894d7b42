"""Catalog prototypes: what the catalog's products look like, as a few hundred centres of its model vectors.

They find the item of a whole photo without knowing which product it is (gateway/outline.py): a cell of the
photo's feature map close to some prototype looks like *a* product, while walls, floors, patterns and other
clutter look like none. Fitted at build on a seeded sample of rows (spherical k-means: unit centres, cosine),
like the whitening, and stored in the version as ``prototypes.npz``; docs/QUALITY.md has what was measured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrototypeSettings:
    """How many centres and how long they are fitted (chosen on the shopper-photo protocol's tune halves)."""

    count: int = 256
    iterations: int = 15
    seed: int = 0
    sample: int = 20_000  # rows fitted on, at most (a seeded sample of a bigger catalog): the fit's time is bounded


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_prototypes(vectors: np.ndarray, settings: PrototypeSettings = PrototypeSettings()) -> np.ndarray:  # noqa: B008
    """(k, dim) unit float32 centres of ``vectors`` (model vectors, rows), k = min(count, rows): spherical
    k-means from a seeded choice of rows, at most ``iterations`` rounds; a centre that loses every row keeps its
    place. It stops once a round gives every row the centre it had: the same rows would give the same centres
    in every later round, so the result is the one all the rounds give."""
    points = _unit(np.atleast_2d(vectors))
    if not len(points):
        raise ValueError("no vectors to fit prototypes on")
    rng = np.random.default_rng(settings.seed)
    centres = points[np.sort(rng.choice(len(points), min(settings.count, len(points)), replace=False))].copy()
    previous = None
    for _ in range(settings.iterations):
        nearest = nearest_centres(points, centres)
        if previous is not None and np.array_equal(nearest, previous):
            break
        previous = nearest
        order = np.argsort(nearest, kind="stable")
        won, starts = np.unique(nearest[order], return_index=True)  # the centres that won rows, and where
        centres[won] = _unit(np.add.reduceat(points[order], starts, axis=0))
    return centres


def nearest_centres(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's closest centre (cosine: both are unit rows)."""
    return np.argmax(points @ centres.T, axis=1)


def to_bytes(prototypes: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, prototypes=np.asarray(prototypes, dtype=np.float32))
    return buf.getvalue()


def from_bytes(data: bytes, dim: int) -> np.ndarray:
    """The stored prototypes, checked: ``ValueError`` unless they are finite float32 rows of ``dim`` (the index
    store is untrusted)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            prototypes = npz["prototypes"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same refusal
        raise ValueError(f"unreadable prototypes file: {exc}") from None
    if (prototypes.dtype != np.float32 or prototypes.ndim != 2 or prototypes.shape[1] != dim
            or not len(prototypes) or not np.isfinite(prototypes).all()):
        raise ValueError("malformed prototypes file")
    return prototypes

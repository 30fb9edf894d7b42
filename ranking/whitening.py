"""Catalog-fitted PCA-whitening: learnt (unsupervised) at index build, applied to both sides.

Centring on the catalog mean and flattening its dominant directions stops a few features that every
product photo shares (white studio background, centred object) from dominating cosine similarity.
The gateway applies the very same transform to query vectors and to the stored vectors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray  # (d,)
    projection: np.ndarray  # (d, k): eigenvectors scaled by eigenvalue^(-power/2)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Transform row vectors (or one vector) and L2-normalise the result."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        y = (x - self.mean) @ self.projection
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float32) if np.ndim(vectors) == 2 else y[0].astype(np.float32)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean.astype(np.float32), projection=self.projection.astype(np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(npz["mean"], npz["projection"])


#: Rows per float64 block of the covariance (4,096 × 1,280 × 8 bytes is 42 MB).
COV_BLOCK = 4096


def _mean_and_covariance(vectors: np.ndarray, block: int = COV_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the (n - 1)-normalised covariance of the rows, in float64, a block of rows at a time: the
    memory is the d × d sums, not a float64 copy of the matrix."""
    n, d = np.shape(vectors)
    total = np.zeros(d, np.float64)
    for start in range(0, n, block):
        total += np.asarray(vectors[start:start + block], dtype=np.float64).sum(axis=0)
    mean = total / n
    cov = np.zeros((d, d), np.float64)
    for start in range(0, n, block):
        part = np.asarray(vectors[start:start + block], dtype=np.float64) - mean
        cov += part.T @ part
    return mean, cov / (n - 1)


def fit_whitening(vectors: np.ndarray, dims: int = 512, power: float = 0.5, shrink: float = 0.1) -> Whitening:
    """PCA on the catalog vectors keeping ``dims`` components, each scaled by
    (eigenvalue + shrink·mean eigenvalue)^(-power/2); shrinkage keeps tiny components from exploding."""
    n, d = np.shape(vectors)
    if n < 2:  # one vector has no covariance: every number would be NaN
        raise ValueError(f"whitening needs at least 2 vectors, got {n}")
    mean, cov = _mean_and_covariance(vectors)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][: max(1, min(dims, n - 1, d))]
    eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
    scale = (eigval + shrink * eigval.mean()) ** (-power / 2)
    return Whitening(mean.astype(np.float32), (eigvec * scale).astype(np.float32))


class Transformed:
    """Rows of ``embeddings`` in the search space, computed per slice (``whitening`` None: as stored)."""

    def __init__(self, embeddings: np.ndarray, whitening: Whitening | None) -> None:
        self._embeddings, self._whitening = embeddings, whitening
        dim = whitening.projection.shape[1] if whitening else embeddings.shape[1]
        self.shape = (len(embeddings), int(dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = np.asarray(self._embeddings[rows], dtype=np.float32)
        return self._whitening.apply(block) if self._whitening else block

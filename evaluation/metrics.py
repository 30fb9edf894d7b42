"""Retrieval quality of an index: leave-one-out precision, mAP and score distributions by label.

Every product queries all the others; a neighbour is relevant when it has the query's label
(e.g. the same category). Computed in blocks so a 10k-product catalog fits in little memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.reader import read_catalog
from evaluation.ranked import gallery_view, ranked_rows
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import Grouping
from ranking.neighbours import hist_summary, neighbours


@dataclass
class Evaluation:
    metrics: dict
    per_label: dict[str, dict]
    same_hist: np.ndarray  # counts of same-label pair scores per BINS bucket
    diff_hist: np.ndarray

    def as_dict(self) -> dict:
        return {"metrics": self.metrics, "per_label": self.per_label,
                "scores": {"same_label": hist_summary(self.same_hist), "different_label": hist_summary(self.diff_hist)}}


def labelled_rows(catalog: Path, column: str, min_per_label: int) -> list[dict]:
    """Catalog rows whose label has at least ``min_per_label`` rows."""
    rows, _ = read_catalog(catalog)
    counts = Counter(r.get(column, "") for r in rows)
    return [r for r in rows if r.get(column) and counts[r[column]] >= min_per_label]


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: mean of precision@i over the ranks i ≤ k that hit, divided by min(k, R)."""
    rel = relevant[:, :k].astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, k + 1)
    denom = np.minimum(k, n_relevant).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (precision * rel).sum(axis=1) / denom, np.nan)


def evaluate(embeddings: np.ndarray, labels: list[str] | np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
             grouping: Grouping | None = None, calibration: Calibration | None = None) -> Evaluation:
    """Leave-one-out retrieval metrics for L2-normalised ``embeddings`` labelled by ``labels``.

    ``grouping`` (built over the same rows) ranks category-first through the gateway's ranking (each row
    left out of its own ranking); without it, rows rank by similarity alone.
    """
    labels = np.asarray(labels)
    kmax = max(ks)
    vectors = np.asarray(embeddings, dtype=np.float32)
    idx, _, same_hist, diff_hist = neighbours(vectors, kmax, labels=labels)
    if grouping is not None:
        view = gallery_view(vectors, grouping, calibration or Calibration(UNCALIBRATED))
        idx = ranked_rows(view, vectors, min(kmax, len(vectors) - 1), True, excluded=np.eye(len(vectors), dtype=bool))
    relevant = labels[idx] == labels[:, None]
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_relevant = counts[inverse] - 1
    metrics = {f"precision@{k}": float(relevant[:, :k].mean()) for k in ks}
    ap = average_precision_at_k(relevant, n_relevant, kmax)
    metrics[f"mAP@{kmax}"] = float(np.nanmean(ap))
    metrics["queries"] = int(len(labels))
    metrics["labels"] = int(len(names))
    per_label = {}
    for j, name in enumerate(names):
        mask = inverse == j
        per_label[str(name)] = {"count": int(counts[j]), f"precision@{kmax}": float(relevant[mask, :kmax].mean()),
                                "precision@1": float(relevant[mask, 0].mean())}
    return Evaluation(metrics, per_label, same_hist, diff_hist)

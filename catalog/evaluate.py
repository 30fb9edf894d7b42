"""Retrieval quality of an index: leave-one-out precision, mAP and score distributions by label.

Every product queries all the others; a neighbour is relevant when it has the query's label
(e.g. the same category). Computed in blocks so a 10k-product catalog fits in little memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.category_first import Grouping
from catalog.reader import read_catalog

BINS = np.linspace(-1.0, 1.0, 401)  # 0.005-wide histogram bins over the cosine range


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


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile of the scores counted in ``hist``, to bin resolution."""
    cum = np.cumsum(hist)
    if cum[-1] == 0:
        return float("nan")
    i = int(np.searchsorted(cum, q * cum[-1]))
    return float((BINS[i] + BINS[i + 1]) / 2)


def hist_summary(hist: np.ndarray) -> dict:
    return {"pairs": int(hist.sum()), **{f"p{int(q * 100)}": round(hist_quantile(hist, q), 3)
                                           for q in (0.05, 0.25, 0.5, 0.75, 0.95)}}


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: mean of precision@i over the ranks i ≤ k that hit, divided by min(k, R)."""
    rel = relevant[:, :k].astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, k + 1)
    denom = np.minimum(k, n_relevant).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (precision * rel).sum(axis=1) / denom, np.nan)


def neighbours(embeddings: np.ndarray, k: int, block: int = 1024, labels: np.ndarray | None = None,
               grouping: Grouping | None = None):
    """Top-k neighbours of every row (itself excluded) and, if labels are given, pair-score histograms.

    With ``grouping``, each row's neighbours are ranked category-first, as the gateway ranks them: the
    category guessed from the row's nearest other products comes first (the row's own label is not used).
    """
    n = len(embeddings)
    k = min(k, n - 1)
    idx = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    same_hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    diff_hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sim = embeddings[start:stop] @ embeddings.T
        rows = np.arange(stop - start)
        if labels is not None:
            same = labels[start:stop, None] == labels[None, :]
            upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]  # each pair once
            same_hist += np.histogram(np.clip(sim[same & upper], -1, 1), BINS)[0]
            diff_hist += np.histogram(np.clip(sim[~same & upper], -1, 1), BINS)[0]
        sim[rows, rows + start] = -np.inf
        key = sim if grouping is None else grouping.guessed_first(sim)
        part = np.argpartition(-key, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(key, part, axis=1), axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        scores[start:stop] = np.take_along_axis(sim, idx[start:stop], axis=1)
    return idx, scores, same_hist, diff_hist


def evaluate(embeddings: np.ndarray, labels: list[str] | np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
             grouping: Grouping | None = None) -> Evaluation:
    """Leave-one-out retrieval metrics for L2-normalised ``embeddings`` labelled by ``labels``.

    ``grouping`` (built over the same rows) ranks category-first, as the gateway does by default.
    """
    labels = np.asarray(labels)
    kmax = max(ks)
    idx, _, same_hist, diff_hist = neighbours(np.asarray(embeddings, dtype=np.float32), kmax, labels=labels,
                                              grouping=grouping)
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


def fit_threshold(same_hist: np.ndarray, diff_hist: np.ndarray) -> dict:
    """The cosine that best separates same-label from different-label pairs (max TPR − FPR)."""
    same_kept = 1.0 - np.cumsum(same_hist) / max(same_hist.sum(), 1)  # kept if score ≥ upper bin edge
    diff_kept = 1.0 - np.cumsum(diff_hist) / max(diff_hist.sum(), 1)
    best = int(np.argmax(same_kept - diff_kept))
    return {"cosine": round(float(BINS[best + 1]), 3), "same_label_kept": round(float(same_kept[best]), 3),
            "different_label_dropped": round(float(1 - diff_kept[best]), 3)}

"""Nearest neighbours of every catalog row and the score histograms they give, in bounded memory.

Used at index build (the similarity calibration) and by the offline evaluation; NumPy only, so the
gateway, which loads the calibration, never pulls in pandas or torch.
"""

from __future__ import annotations

import numpy as np

BINS = np.linspace(-1.0, 1.0, 401)  # 0.005-wide histogram bins over the cosine range


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


def neighbours(embeddings: np.ndarray, k: int, block: int = 1024, labels: np.ndarray | None = None):
    """Top-k neighbours of every row by similarity (itself excluded) and, if labels are given, pair-score
    histograms. (Category-first rankings come from ranking/, never from here.)"""
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
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        scores[start:stop] = np.take_along_axis(sim, idx[start:stop], axis=1)
    return idx, scores, same_hist, diff_hist


def fit_threshold(same_hist: np.ndarray, diff_hist: np.ndarray) -> dict:
    """The cosine that best separates same-label from different-label pairs (max TPR − FPR)."""
    same_kept = 1.0 - np.cumsum(same_hist) / max(same_hist.sum(), 1)  # kept if score ≥ upper bin edge
    diff_kept = 1.0 - np.cumsum(diff_hist) / max(diff_hist.sum(), 1)
    best = int(np.argmax(same_kept - diff_kept))
    return {"cosine": round(float(BINS[best + 1]), 3), "same_label_kept": round(float(same_kept[best]), 3),
            "different_label_dropped": round(float(1 - diff_kept[best]), 3)}

"""What "70% similar" means: a monotone map from cosine scores to a calibrated similarity percent.

Fitted at index build from the catalog's own labels (its ``category`` column). *Matches* are the
same-category products among each product's nearest ``MATCH_K`` neighbours (what a shopper is shown);
*unrelated* are all pairs of different categories. The cosine that best separates the two (largest
share of matches kept minus share of unrelated kept) becomes 70%, the median unrelated pair 40%, an
identical image 100%. Without enough labels the map stays ``percent = 100·cosine``.
Stored in the index manifest; the gateway converts scores and thresholds with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ranking.neighbours import BINS, fit_threshold, hist_quantile, neighbours
from safeio.rowfile import RowFile, take

UNCALIBRATED = [[0.0, 0.0], [1.0, 100.0]]
MATCH_K = 20


@dataclass(frozen=True)
class Calibration:
    points: list[list[float]]  # [[cosine, percent], ...], both strictly increasing

    @classmethod
    def from_manifest(cls, manifest: dict) -> Calibration:
        return cls((manifest.get("calibration") or {}).get("points") or UNCALIBRATED)

    def percent(self, cosine: float | np.ndarray) -> float | np.ndarray:
        xs, ys = zip(*self.points, strict=True)
        return np.interp(cosine, xs, ys)

    def cosine(self, percent: float) -> float:
        """Smallest cosine shown as ≥ ``percent``; 0% admits everything."""
        if percent <= 0:
            return -1.0
        xs, ys = zip(*self.points, strict=True)
        return float(np.interp(percent, ys, xs))


def fit_calibration(vectors: np.ndarray | RowFile, labels: list[str], max_items: int = 4000, seed: int = 0) -> dict:
    """Calibration for the manifest, fitted on (a sample of) the catalog's labelled vectors."""
    counts = Counter(labels)
    keep = [i for i, label in enumerate(labels) if label and counts[label] >= 5]
    n_labels = len({labels[i] for i in keep})
    if len(keep) < 50 or n_labels < 2:
        return {"points": UNCALIBRATED, "source": f"uncalibrated: {len(keep)} products in {n_labels} categories "
                                                   "with ≥ 5 products (need 50 and 2)"}
    if len(keep) > max_items:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_items, replace=False).tolist())
    lab = np.asarray(labels)[keep]
    idx, scores, _, diff = neighbours(take(vectors, np.asarray(keep, dtype=np.int64)), MATCH_K, labels=lab)
    matches = np.histogram(np.clip(scores[lab[idx] == lab[:, None]], -1, 1), BINS)[0]
    best = fit_threshold(matches, diff)
    low, mid = hist_quantile(diff, 0.01), hist_quantile(diff, 0.5)
    if not low < mid < best["cosine"] < 1.0:
        return {"points": UNCALIBRATED, "source": f"uncalibrated: labels do not separate ({best})"}
    return {"points": [[low, 0.0], [mid, 40.0], [best["cosine"], 70.0], [1.0, 100.0]],
            "threshold_cosine": best["cosine"], "matches_kept": best["same_label_kept"],
            "different_label_dropped": best["different_label_dropped"],
            "unrelated_median_cosine": mid,
            "source": f"fitted on {len(keep)} products in {n_labels} categories; matches = same category "
                      f"among the {MATCH_K} nearest"}

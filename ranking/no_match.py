"""When to say "we don't seem to carry this": a rule fitted at index build from the catalog itself.

A photo of something the shop does not sell still has nearest products, and without a rule the page
presents them (and a category vote) as if they matched. The signal is the best calibrated similarity:
catalog-category photos score high, photos of other things low (docs/QUALITY.md).

Fitted like the calibration, from the catalog's own rows only:
- *carried*: each sampled product as a query against the rest of the catalog (itself and identical
  pictures, cosine ≥ ``TWIN``, left out) — the best similarity of a photo of something the shop sells;
- *not carried*: the same query against the catalog without its whole category — the best similarity of
  a photo of a kind the shop lacks.
The threshold is the ``MAX_FALSE_NO_MATCH`` quantile of the carried scores (at most 5% of them fall
below it); the share of not-carried scores below it is stored beside it, measured on the same sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from safeio.rowfile import BLOCK_ROWS, RowFile, blocks, take

#: At most this share of photos of carried products may be told "no close match".
MAX_FALSE_NO_MATCH = 0.05
#: A neighbour this close is the same picture (a duplicate listing), not a match to learn from.
TWIN = 0.999


def best_scores(vectors: np.ndarray | RowFile, labels: np.ndarray, rows: np.ndarray, block: int = BLOCK_ROWS
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per query row (``rows``, sorted): best cosine to another row (twins left out), and to a row of another
    label. One pass over the matrix, ``block`` rows at a time (an array, or a file bigger than memory)."""
    queries = take(vectors, rows)
    carried, lacking = np.full(len(rows), -np.inf, np.float32), np.full(len(rows), -np.inf, np.float32)
    for start, part in blocks(vectors, block):
        sim = queries @ part.T
        inside = np.nonzero((rows >= start) & (rows < start + len(part)))[0]
        sim[inside, rows[inside] - start] = -np.inf
        sim[sim >= TWIN] = -np.inf
        np.maximum(carried, sim.max(axis=1), out=carried)
        sim[labels[rows][:, None] == labels[None, start:start + len(part)]] = -np.inf
        np.maximum(lacking, sim.max(axis=1), out=lacking)
    return carried, lacking


def fit_no_match(vectors: np.ndarray | RowFile, labels: list[str], percent: Callable[[np.ndarray], np.ndarray],
                 max_items: int = 2000, seed: int = 0) -> dict | None:
    """The manifest's rule ``{"percent": threshold, ...}``, or None when the catalog is too small or has
    fewer than two categories of 5+ products (then the gateway never says "no close match")."""
    counts = Counter(labels)
    keep = np.array([i for i, label in enumerate(labels) if label and counts[label] >= 5], dtype=np.int64)
    if len(keep) < 50 or len({labels[i] for i in keep}) < 2:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(keep, min(max_items, len(keep)), replace=False))
    carried, lacking = best_scores(vectors, np.asarray(labels), rows)
    carried_pct = np.asarray(percent(carried[np.isfinite(carried)]), dtype=np.float64)
    lacking_pct = np.asarray(percent(lacking[np.isfinite(lacking)]), dtype=np.float64)
    if len(carried_pct) < 50 or len(lacking_pct) == 0:
        return None
    threshold = float(np.quantile(carried_pct, MAX_FALSE_NO_MATCH))
    return {"percent": round(threshold, 2), "signal": "best calibrated similarity",
            "false_no_match": round(float(np.mean(carried_pct < threshold)), 3),
            "not_carried_caught": round(float(np.mean(lacking_pct < threshold)), 3),
            "fitted_on": int(len(rows)),
            "source": "leave-one-out (carried) and leave-one-category-out (not carried) over the catalog"}

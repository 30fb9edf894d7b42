"""Measure the "no close match" rule on held-out photos: ``python scripts/evaluate_no_match.py INDEX_DIR``.

INDEX_DIR is an index of a labelled catalog (e.g. Myntra's, built by ``make bench-search``). Per seed:
a share of the categories is taken out entirely (photos of things the shop does not carry); of the rest,
a share of each category's products is held out (photos of carried things that are not in the index).
The gallery alone is then finished as the build finishes a version — whitening, calibration, the rule —
and the held-out photos are queried against it. Nothing held out reaches any fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.ranked import best_matches  # noqa: E402
from indexstore.store import open_store, read_current  # noqa: E402
from ranking import RankingView  # noqa: E402
from ranking.calibration import Calibration, fit_calibration  # noqa: E402
from ranking.category_first import Grouping  # noqa: E402
from ranking.no_match import TWIN, fit_no_match  # noqa: E402
from ranking.whitening import fit_whitening  # noqa: E402
from search import ExactSearch  # noqa: E402


def split(labels: np.ndarray, seed: int, lacking_share: float, held_share: float):
    """(gallery rows, held-out carried rows, not-carried rows), by category, seeded."""
    rng = np.random.default_rng(seed)
    kinds = np.unique(labels)
    lacking = set(rng.choice(kinds, max(1, int(len(kinds) * lacking_share)), replace=False).tolist())
    gallery, held, out = [], [], []
    for kind in kinds:
        rows = rng.permutation(np.flatnonzero(labels == kind))
        if kind in lacking:
            out.extend(rows)
            continue
        cut = int(round(len(rows) * held_share))
        held.extend(rows[:cut])
        gallery.extend(rows[cut:])
    return np.array(sorted(gallery)), np.array(held), np.array(out)


def best_matches_of(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, cal: Calibration,
                    rule: float) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best percent and the gateway's "no close match" answer, through the production ranking; a
    byte-identical listing under another id (cosine ≥ ``TWIN``) is not a photo of the product: left out."""
    grouping = Grouping.from_labels(labels.tolist(), cal.percent)
    view = RankingView(ExactSearch(gallery, grouping.codes), grouping, cal, no_match_percent=rule)
    return best_matches(view, queries, excluded=(queries @ gallery.T) >= TWIN)


def evaluate(raw: np.ndarray, labels: np.ndarray, seed: int, lacking_share: float, held_share: float) -> dict:
    gallery, held, out = split(labels, seed, lacking_share, held_share)
    whitening = fit_whitening(raw[gallery], dims=512, power=0.5, shrink=0.1)
    space = whitening.apply(raw)
    cal = Calibration(fit_calibration(space[gallery], labels[gallery].tolist())["points"])
    rule = fit_no_match(space[gallery], labels[gallery].tolist(), cal.percent)
    carried, carried_lost = best_matches_of(space[held], space[gallery], labels[gallery], cal, rule["percent"])
    lacking, lacking_lost = best_matches_of(space[out], space[gallery], labels[gallery], cal, rule["percent"])
    return {"seed": seed, "gallery": len(gallery), "held_out_carried": len(held), "not_carried": len(out),
            "rule_percent": rule["percent"], "fit_false_no_match": rule["false_no_match"],
            "fit_caught": rule["not_carried_caught"],
            "false_no_match": round(float(np.mean(carried_lost)), 3),
            "not_carried_caught": round(float(np.mean(lacking_lost)), 3),
            "carried_best_p10_p50": [round(float(np.nanpercentile(carried, q)), 1) for q in (10, 50)],
            "not_carried_best_p50_p90": [round(float(np.nanpercentile(lacking, q)), 1) for q in (50, 90)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--not-carried", type=float, default=0.2, help="share of categories taken out")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of each carried category held out")
    parser.add_argument("--label-column", default="category")
    args = parser.parse_args(argv)
    data = read_current(open_store(args.index))
    labels = np.array([str(p.get(args.label_column, "")) for p in data.products])
    counts = {k: int((labels == k).sum()) for k in np.unique(labels)}
    keep = np.array([i for i, k in enumerate(labels) if k and counts[k] >= 10])
    results = [evaluate(np.asarray(data.embeddings)[keep], labels[keep], s, args.not_carried, args.held_out)
               for s in args.seeds]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The exact product confirmed by its details: among the CNN's first candidates, the one whose local features
(localfeatures/sift.py) fit the query's far better than any other's is the photographed product itself,
and it comes first, whatever its category or colour. Short of that, the details still weigh: each inlier is
worth ``weight`` points of similarity, and the candidate that comes out ahead is *lifted* first (without the
claim that it is the very product). Settings chosen on the shopper-photo protocol's tune halves
(docs/QUALITY.md "The exact product confirmed by its details").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VerifySettings:
    candidates: int = 100  # the CNN's first candidates whose details are compared
    min_inliers: int = 6  # the least evidence for "the same object"
    lead: float = 2.0  # ... and it must be this many times the next candidate's (at least 1)
    weight: float = 2.0  # points of similarity each inlier is worth when none is confirmed (0: no lift)
    rival_lead: float = 0.0  # points by which another search of the photo must outweigh the first (``strongest``)
    place_least: float = 0.25  # a box placed by the details, centred in the box searched, is at least this share
    # of its area (else the transform went astray: a fragment of the item, or a lookalike detail)


def confirmed(counts: Sequence[int], settings: VerifySettings = VerifySettings()) -> int | None:
    """Which candidate (an index into ``counts``, the inliers of each, best CNN first) is confirmed as the very
    product, or None: at least ``min_inliers`` and ``lead`` times the next best count (or 1)."""
    if not counts:
        return None
    best = max(range(len(counts)), key=lambda i: (counts[i], -i))
    runner_up = max((c for i, c in enumerate(counts) if i != best), default=0)
    if counts[best] >= settings.min_inliers and counts[best] >= settings.lead * max(runner_up, 1):
        return best
    return None


def lifted(similarities: Sequence[float], counts: Sequence[int],
           settings: VerifySettings = VerifySettings()) -> int | None:
    """Which candidate the details lift above the CNN's first (an index into both lists, best CNN first), or
    None: the highest ``similarity + weight · inliers`` (calibrated points), when it is not the first; a tie
    keeps the CNN's order."""
    scores = _scores(similarities, counts, settings)
    if not scores:
        return None
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return best if best > 0 else None


def weight(similarities: Sequence[float], counts: Sequence[int], settings: VerifySettings = VerifySettings()) -> float:
    """How strongly one search's candidates hold a product by its details: the highest ``similarity + weight ·
    inliers`` among them (the score ``lifted`` ranks by); -inf for none."""
    return max(_scores(similarities, counts, settings), default=float("-inf"))


def _scores(similarities: Sequence[float], counts: Sequence[int], settings: VerifySettings) -> list[float]:
    """Each candidate's ``similarity + weight · inliers`` (calibrated points)."""
    return [s + settings.weight * c for s, c in zip(similarities, counts, strict=True)]


def strongest(checks: Sequence[tuple[Sequence[float], Sequence[int]]],
              settings: VerifySettings = VerifySettings()) -> int:
    """Which of several searches of one photo (each its candidates' similarities and inliers, e.g. boxes around
    its item) the details hold most strongly (``weight``); the first unless another leads it by ``rival_lead``
    points, and the first of equals."""
    weights = [weight(similarities, counts, settings) - (settings.rival_lead if i else 0.0)
               for i, (similarities, counts) in enumerate(checks)]
    return max(range(len(weights)), key=lambda i: (weights[i], -i))

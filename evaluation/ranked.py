"""Offline rankings made by the gateway's own ranking (ranking/), one query at a time, over an exact backend.

The evaluation never ranks by code of its own: a gallery becomes a ``RankingView`` (an ``ExactSearch`` over
its search-space vectors, its category grouping, calibration and appearance) and each query goes through
``rank_query`` exactly as a shopper's photo does, so the figures measure what ships.
"""

from __future__ import annotations

import numpy as np

from ranking import MatchSettings, RankingView, RankOptions, rank_query
from ranking.appearance import Appearance
from ranking.calibration import Calibration
from ranking.category_first import Grouping
from search import ExactSearch


def gallery_view(space: np.ndarray, grouping: Grouping, calibration: Calibration,
                 appearance: Appearance | None = None, looks: np.ndarray | None = None,
                 match: MatchSettings | None = None) -> RankingView:
    """A gallery (search-space rows) as the ranking sees an index version; no "no close match" rule."""
    return RankingView(ExactSearch(space, grouping.codes), grouping, calibration, appearance,
                       None if appearance is None else np.asarray(looks, np.float32), settings=match or MatchSettings())


def ranked_rows(view: RankingView, queries: np.ndarray, k: int, category_first: bool,
                looks: np.ndarray | None = None, excluded: np.ndarray | None = None) -> np.ndarray:
    """The top ``k`` gallery rows of each query (search-space rows of ``queries``), ranked by ``rank_query`` at
    threshold 0; -1 pads a row with fewer. ``looks``: each query's appearance vector; ``excluded`` (queries ×
    gallery, bool): rows that may not answer that query (itself, its twins)."""
    options = RankOptions(threshold=0.0, top_k=k, category_first=category_first)
    top = np.full((len(queries), k), -1, np.int64)
    for i, query in enumerate(np.asarray(queries, np.float32)):
        exclude = frozenset(np.flatnonzero(excluded[i]).tolist()) if excluded is not None else frozenset()
        look = None if looks is None else looks[i]
        rows = rank_query(view, query, options, look, exclude).rows
        top[i, :len(rows)] = rows
    return top


def best_matches(view: RankingView, queries: np.ndarray, excluded: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its best match's calibrated percent (NaN when nothing may answer) and whether the ranking
    says "no close match" (the view's fitted rule), both as ``rank_query`` finds them for a shopper."""
    options = RankOptions(threshold=0.0, top_k=1, category_first=False)
    best = np.full(len(queries), np.nan)
    lost = np.zeros(len(queries), bool)
    for i, query in enumerate(np.asarray(queries, np.float32)):
        exclude = frozenset(np.flatnonzero(excluded[i]).tolist()) if excluded is not None else frozenset()
        ranked = rank_query(view, query, options, exclude=exclude)
        best[i] = ranked.similarities[0] if ranked.similarities else np.nan
        lost[i] = ranked.no_close_match
    return best, lost

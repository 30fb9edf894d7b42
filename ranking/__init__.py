"""The ranking: a query vector (or a catalog product) and a shopper's options in, ranked rows out.

One implementation, pure (no Flask, no I/O of its own: it only asks the index's search backend for
candidates), run by the gateway for every search and by the offline evaluation over its gallery, so the
figures in docs/QUALITY.md measure the code that ships. See ranking/rank.py.
"""

from ranking.rank import (
    THRESHOLD_SLACK,
    Guess,
    MatchSettings,
    Ranked,
    RankingView,
    RankOptions,
    rank_product,
    rank_query,
)

__all__ = ["THRESHOLD_SLACK", "Guess", "MatchSettings", "RankOptions", "Ranked", "RankingView", "rank_product",
           "rank_query"]

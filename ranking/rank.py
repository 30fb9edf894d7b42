"""Category-first ranking with the threshold, the "no close match" rule and the colour tie-breaker.

A search asks the backend for candidates (search/) above the threshold (a calibrated similarity, percent:
is it the same kind of thing at all) and guesses the query's category by a vote of its nearest products
(ranking/category_first.py). Every result then gets one number, its **match** (percent), and the list is
sorted by it, so the order and the number a shopper sees always agree, down a page and across pages:

    match = similarity · ((1 + a) / (1 + a_best)) ^ power    inside the category ranked first
    match = similarity                                        for the category's CNN-closest product
    match = min(similarity, the category's last match)        for products of other categories, after it

The similarity is the CNN's (ranking/calibration.py); ``a`` is a product's appearance cosine to the query
(ranking/appearance.py) and ``a_best`` the highest of the category's other candidates, so the products of
the colour nearest the query's keep their similarity and the others keep a share of it that falls with their
colour. The colour never moves the CNN's closest, so the exact product of a shopper's photo is never pushed
below a lookalike colour, and no match is above the similarity. Without a category ranked first (similarity
alone) the match is the similarity. Every step works on what the backend returns, so every backend ranks
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ranking.appearance import RERANK_DEPTH, Appearance
from ranking.calibration import Calibration
from ranking.category_first import Grouping
from search import Candidates, Filter, SearchBackend

#: Vectors are float32, so a cosine exactly at the threshold can come out a few 1e-8 below it: a product the
#: page shows at 85 % must not be dropped by a threshold of 85 %. Far below any difference a shopper can set.
THRESHOLD_SLACK = 1e-6


@dataclass(frozen=True)
class MatchSettings:
    """How far the colour moves a product's match inside one category; chosen on the tuning halves of the
    held-out and shopper-photo protocols (docs/QUALITY.md)."""

    colour_power: float = 2.0  # the exponent of the colour's share: 0 = the match is the similarity


@dataclass(frozen=True)
class RankOptions:
    """What a shopper can set on one search (checked by the HTTP layer)."""

    threshold: float  # minimum calibrated similarity, percent
    top_k: int
    category: str | None = None  # only this category (case-insensitive)
    category_first: bool = True  # rank the guessed (or the anchor's) category first
    offset: int = 0  # leave out this many leading results ("Show more": the next page of the same ranking)
    min_price: float | None = None  # only products with a known price in [min_price, max_price]
    max_price: float | None = None


@dataclass(frozen=True)
class Guess:
    """The category ranked first: guessed by a vote of the nearest products, or the anchor product's own."""

    category: str
    confidence: float  # the winner's share of the vote weight (1.0 for a product's own category)
    source: str  # "vote" or "product"
    code: int  # the category's code in the index's grouping


@dataclass(frozen=True)
class Ranked:
    """Rows of the index, best first, with their cosine and calibrated percent."""

    rows: list[int]
    scores: list[float]  # cosine in the index's search space
    similarities: list[float]  # calibrated percent (ranking/calibration.py)
    guess: Guess | None  # None: ranked by similarity alone
    matches: list[float]  # the ranking score (percent) that orders the list: never increases down it
    first_group: int = 0  # how many leading rows are in the guessed category
    no_close_match: bool = False  # the best match is below the catalog's fitted rule: we don't carry this
    closer_outside_filter: bool = False  # nothing in the filter (category, price) is close, but the catalog has it


@dataclass(frozen=True)
class RankingView:
    """The narrow view of an index version that ranking needs, and nothing else of it."""

    backend: SearchBackend
    grouping: Grouping
    calibration: Calibration
    appearance: Appearance | None = None  # the version's appearance space ...
    appearance_rows: np.ndarray | None = None  # ... and each row's appearance vector
    no_match_percent: float | None = None  # the fitted "no close match" rule (ranking/no_match.py); None: never
    prices: np.ndarray | None = None  # price per row, NaN where unknown; None: no prices
    settings: MatchSettings = MatchSettings()  # how far the colour moves the match

    @cached_property
    def _codes_by_name(self) -> dict[str, frozenset[int]]:
        """Category codes by case-folded name, made once per version (not on every search)."""
        codes: dict[str, frozenset[int]] = {}
        for code, name in enumerate(self.grouping.names):
            codes[name.casefold()] = codes.get(name.casefold(), frozenset()) | {code}
        return codes

    def category_codes(self, category: str | None) -> frozenset[int] | None:
        """Codes of the categories named ``category`` (case-insensitive); None: no category filter."""
        if not category:
            return None
        return self._codes_by_name.get(category.strip().casefold(), frozenset())

    def price_rows(self, low: float | None, high: float | None) -> np.ndarray | None:
        """Bool per row: the price is known and within [low, high] (either end open); None: no price range."""
        if low is None and high is None:
            return None
        prices = self.prices if self.prices is not None else np.full(len(self.grouping.codes), np.nan)
        keep = np.isfinite(prices)
        if low is not None:
            keep &= prices >= low
        if high is not None:
            keep &= prices <= high
        return keep

    def where(self, options: RankOptions, exclude: frozenset[int] = frozenset()) -> Filter:
        """The filter of ``options`` (category, price range), ``exclude`` rows left out."""
        priced = options.min_price is not None or options.max_price is not None
        return Filter(categories=self.category_codes(options.category), exclude_rows=exclude,
                      rows=self.price_rows(options.min_price, options.max_price),
                      price=(options.min_price, options.max_price) if priced else None)


def rank_query(view: RankingView, query: np.ndarray, options: RankOptions, look: np.ndarray | None = None,
               exclude: frozenset[int] = frozenset(), pinned: int | None = None) -> Ranked:
    """Rows close to a query's search-space vector; with ``category_first`` (and no category filter) its
    guessed category first, ordered inside by the query's appearance vector ``look`` when given. The "no
    close match" rule applies. ``exclude``: rows that may not answer (e.g. the query's own twins).
    ``pinned``: the row its details confirm as the very product (ranking/verify.py): it comes first, its
    category is the one ranked first, and its match is raised to the list's first (when the filter and the
    threshold let it answer at all)."""
    vote = options.category_first and not options.category
    where = view.where(options, exclude)
    if pinned is not None and _admitted(view, query, where, options, pinned):
        # ranked without it, then put first: its numbers come one way on every page (_first)
        code = int(view.grouping.codes[pinned]) if vote else -1
        return _rank(view, query, replace(where, exclude_rows=where.exclude_rows | {pinned}), options,
                     guess_code=code, look=look, pinned=pinned)
    return _rank(view, query, where, options, guess_code=None, vote=vote, look=look)


def _admitted(view: RankingView, query: np.ndarray, where: Filter, options: RankOptions, row: int) -> bool:
    """Whether ``row`` may answer this search: in range, let through by the filter, at or above the threshold."""
    if not 0 <= row < len(view.grouping.codes) or not where.admits(row, int(view.grouping.codes[row])):
        return False
    return _score(view, query, row) >= view.calibration.cosine(options.threshold) - THRESHOLD_SLACK


def _score(view: RankingView, query: np.ndarray, row: int) -> float:
    return float(np.dot(np.asarray(view.backend.vector(row), dtype=np.float32), np.asarray(query, np.float32)))


def rank_product(view: RankingView, row: int, options: RankOptions) -> Ranked:
    """More like this: rows close to row ``row``'s stored vector, the row itself left out; with
    ``category_first`` (and no category filter) its own category first. No "no close match" rule."""
    code = int(view.grouping.codes[row]) if options.category_first and not options.category else -1
    look = None if view.appearance_rows is None else np.asarray(view.appearance_rows[row])
    return _rank(view, view.backend.vector(row), view.where(options, frozenset({row})), options, guess_code=code,
                 look=look)


def _rank(view: RankingView, query: np.ndarray, where: Filter, options: RankOptions, guess_code: int | None,
          vote: bool = True, look: np.ndarray | None = None, pinned: int | None = None) -> Ranked:
    """Candidates → ranked rows. ``guess_code``: None for a query (no-match rule applies; the category is
    voted for when ``vote``), -1 for no category first, else that code. ``look``: the query's appearance
    vector, the colour tie-breaker inside one category (the first group, or a filter's)."""
    min_score = view.calibration.cosine(options.threshold) - THRESHOLD_SLACK
    top_k = options.top_k + options.offset  # rank through the page asked for, answer only that page
    cands = view.backend.search(query, max(top_k, view.grouping.vote.k), where)
    lost = guess_code is None and _no_close_match(view, cands)
    # a filter that hides every close product is not "we don't carry this": the catalog's own best decides
    elsewhere = lost and _filtered(options) and not _no_close_match(
        view, view.backend.search(query, 1, Filter(exclude_rows=where.exclude_rows)))
    # no category claim when nothing is close, or when the shopper did not ask for one
    guess = None if lost or (guess_code is None and not vote) else _guess(view.grouping, cands, guess_code)
    if guess is None:
        found = _in_category(view, query, cands, where, top_k, min_score, look if options.category else None)
    else:
        group = frozenset({guess.code})
        found = _in_category(view, query, cands, where.narrowed(categories=group), top_k, min_score, look)
        found = sorted(found, key=lambda f: -f[2])  # stable: equal matches keep the CNN's order
        others = _best(view, query, cands, where.narrowed(exclude_categories=group), top_k - len(found), min_score)
        below = found[-1][2] if found else 100.0  # the guessed category ranks first: the rest match no more
        found += [(row, score, min(match, below)) for row, score, match in _matched(view, others)]
    found = sorted(found, key=lambda f: -f[2])[:top_k]  # stable: equal matches keep the order above
    if pinned is not None:
        found = _first(view, query, found, pinned)[:top_k]
    codes = view.grouping.codes
    first_group = 0 if guess is None else next(
        (i for i, (row, _, _) in enumerate(found) if int(codes[row]) != guess.code), len(found))
    found = found[options.offset:]
    return Ranked([row for row, _, _ in found], [score for _, score, _ in found],
                  _percents(view, [score for _, score, _ in found]), guess, [m for _, _, m in found],
                  max(0, first_group - options.offset), lost and not elsewhere, elsewhere)


def _first(view: RankingView, query: np.ndarray, found: list[tuple[int, float, float]], row: int
           ) -> list[tuple[int, float, float]]:
    """``row`` (not in ``found``) before ``found``, its match raised to the first's when lower (the number shown
    never rises down the list)."""
    (_, score, match), = _matched(view, [(row, _score(view, query, row))])
    return [(row, score, max(match, found[0][2] if found else match))] + found


def _filtered(options: RankOptions) -> bool:
    """Whether the shopper narrowed the search (a category, a price range)."""
    return bool(options.category) or options.min_price is not None or options.max_price is not None


def _percents(view: RankingView, scores: list[float]) -> list[float]:
    return [float(p) for p in view.calibration.percent(np.array(scores, dtype=np.float64))]


def _matched(view: RankingView, found: list[tuple[int, float]], share: float | np.ndarray = 1.0
             ) -> list[tuple[int, float, float]]:
    """(row, cosine, match): the match is the calibrated similarity times ``share`` (per row or one, in [0, 1])."""
    percents = np.asarray(_percents(view, [score for _, score in found]), dtype=np.float64) * share
    return [(row, score, float(match)) for (row, score), match in zip(found, percents, strict=True)]


def _guess(grouping: Grouping, cands: Candidates, code: int | None) -> Guess | None:
    if code is None:
        code, share = grouping.guess_candidates(cands.rows, cands.scores)
        return Guess(grouping.names[code], round(share, 3), "vote", code) if code >= 0 else None
    return Guess(grouping.names[code], 1.0, "product", code) if code >= 0 else None


def _no_close_match(view: RankingView, cands: Candidates) -> bool:
    """Whether a query's best candidate is below the catalog's "no close match" rule."""
    if view.no_match_percent is None:
        return False
    return not len(cands) or float(view.calibration.percent(cands.scores[0])) < view.no_match_percent


def _in_category(view: RankingView, query: np.ndarray, cands: Candidates, where: Filter, k: int,
                 min_score: float, look: np.ndarray | None) -> list[tuple[int, float, float]]:
    """``_best`` rows of one category with their match; with ``look`` and a version with appearance vectors,
    its best ``RERANK_DEPTH`` (by the CNN, over the threshold) get the colour tie-breaker (ranking/appearance.py)."""
    if look is None or view.appearance_rows is None:
        return _matched(view, _best(view, query, cands, where, k, min_score))
    deep = _best(view, query, cands, where, max(k, RERANK_DEPTH), min_score)
    if not deep:
        return []
    rows = np.array([row for row, _ in deep])
    # a cosine, whatever a stored row's length (the index store is untrusted): -1 (opposite) to 1 (the same)
    alike = np.clip(np.asarray(view.appearance_rows[rows] @ look), -1.0, 1.0)
    return _matched(view, deep, colour_shares(alike, view.settings.colour_power))


def colour_shares(alike: np.ndarray, power: float) -> np.ndarray:
    """The share of its similarity each candidate keeps for its colour, from its appearance cosines ``alike``
    (the CNN's order, best first): 1 for the first (the CNN's closest: the exact product stays on top) and for
    the rest's colour nearest the query's, ``((1 + a) / (1 + a_best)) ** power`` for the others."""
    shares = np.ones(len(alike))
    near = 1.0 + np.asarray(alike[1:])  # 0 (the opposite colour) to 2 (the same): only ratios of it count
    if len(near) and near.max() > 0:
        shares[1:] = (near / near.max()) ** power
    return shares


def _best(view: RankingView, query: np.ndarray, cands: Candidates, where: Filter, k: int,
          min_score: float) -> list[tuple[int, float]]:
    """The best ``k`` rows admitted by ``where`` (a narrowing of the filter ``cands`` came from) with score
    ≥ ``min_score``: taken from ``cands`` when they settle it, else from one more backend search.

    ``cands`` settle it when they hold ``k`` such rows, or when every row they left out scores below
    ``min_score`` (their last score is below it) or none was left out (exhausted)."""
    if k <= 0:
        return []
    codes = view.grouping.codes
    admitted = [(row, score) for row, score in cands.pairs()
                if score >= min_score and where.admits(row, int(codes[row]))]
    if len(admitted) >= k or cands.exhausted or (len(cands) and cands.scores[-1] < min_score):
        return admitted[:k]
    return view.backend.search(query, k, where, min_score).pairs()

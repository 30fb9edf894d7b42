"""Category-first ranking: guess the query's category from its nearest catalog products, rank it first.

A shopper who photographs a sneaker wants sneakers, but the visually nearest products are often
lookalikes from a neighbouring category (a casual shoe, a sandal). Large visual product search
systems therefore predict the query's category and search inside it first (Alibaba's Pailitao,
Pinterest's visual search). Here the guess is a vote of the query's ``k`` nearest catalog products,
each weighted by ``exp((percent - best percent) / temperature)`` on the calibrated similarity scale
(see ranking/calibration.py), so the weights mean the same for every backbone and transform; an
identical picture outweighs everything else. Only the catalog's own labels vote, never the query's.
The ranking itself (each group in its order, scores unchanged) is ranking/rank.py's.
See docs/QUALITY.md for how ``k`` and ``temperature`` were chosen and what it measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CategoryVote:
    k: int = 10  # nearest catalog products that vote
    temperature: float = 2.0  # in calibrated percent points: 2 points lower similarity = e^-1 the weight

    def vote(self, codes: np.ndarray, percents: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query row: the winning label code (-1 when no neighbour is labelled) and its share of the votes.

        ``codes`` (queries × neighbours) are label codes in ``[0, n_labels)``, -1 for unlabelled products;
        ``percents`` are the neighbours' calibrated similarities. Neighbour order does not matter.
        """
        codes = np.atleast_2d(codes)
        percents = np.atleast_2d(np.asarray(percents, dtype=np.float64))
        weights = np.exp((percents - percents.max(axis=1, keepdims=True)) / self.temperature)
        labelled = codes >= 0
        votes = np.zeros((len(codes), n_labels + 1))
        np.add.at(votes, (np.arange(len(codes))[:, None], np.where(labelled, codes, n_labels)),
                  np.where(labelled, weights, 0.0))
        votes = votes[:, :n_labels]
        total = votes.sum(axis=1)
        winner = np.where(total > 0, votes.argmax(axis=1) if n_labels else -1, -1)
        share = np.where(total > 0, votes.max(axis=1, initial=0.0) / np.maximum(total, 1e-300), 0.0)
        return winner, share


@dataclass(frozen=True)
class Grouping:
    """Category-first ranking over one catalog: its label codes, the vote, and the similarity scale."""

    codes: np.ndarray  # label code per catalog row, -1 for unlabelled
    names: list[str]  # the label of each code, sorted
    percent: Callable[[np.ndarray], np.ndarray]  # cosine → calibrated percent
    vote: CategoryVote = CategoryVote()

    @classmethod
    def from_labels(cls, labels: Sequence[str], percent: Callable[[np.ndarray], np.ndarray],
                    vote: CategoryVote = CategoryVote()) -> Grouping:
        """The grouping for these row labels ("" = unlabelled)."""
        names = sorted({str(label) for label in labels} - {""})
        code_of = {name: i for i, name in enumerate(names)}
        codes = np.array([code_of.get(str(label), -1) for label in labels], dtype=np.int64)
        return cls(codes, names, percent, vote)

    def guess(self, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Guessed label code and vote share per query row of ``sim`` (queries × catalog; excluded rows -inf)."""
        sim = np.atleast_2d(sim)
        k = min(self.vote.k, sim.shape[1])
        if k == 0:
            return np.full(len(sim), -1), np.zeros(len(sim))
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(sim, top, axis=1)
        codes = np.where(np.isfinite(top_scores), self.codes[top], -1)
        percents = np.where(np.isfinite(top_scores), self.percent(np.nan_to_num(top_scores, neginf=-1.0)), 0.0)
        return self.vote.vote(codes, percents, len(self.names))

    def guess_candidates(self, rows: np.ndarray, scores: np.ndarray) -> tuple[int, float]:
        """Guessed label code (-1: none) and vote share for one query, from its candidates (best first)."""
        rows, scores = np.asarray(rows)[: self.vote.k], np.asarray(scores)[: self.vote.k]
        if len(rows) == 0:
            return -1, 0.0
        winner, share = self.vote.vote(self.codes[rows][None, :], self.percent(scores)[None, :], len(self.names))
        return int(winner[0]), float(share[0])

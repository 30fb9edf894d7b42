"""Held-out retrieval quality: queries are photos whose products are not in the index.

Leave-one-out (evaluation/metrics.py) lets every catalog product query the others, but everything fitted
on the catalog (whitening, calibration, the category vote) has then seen the query. Here each label's
products are split, seeded, into a gallery (the index) and held-out queries; the fitted parts are fitted
on gallery rows only (``fit_gallery`` never receives a query row), and a query's byte-identical twins in
the gallery (the same picture under another id) are removed from its ranking, so a twin never answers
for it.

Relevance can be finer than the category the gateway groups by: e.g. the same article type *and* the
same base colour. Precision@k is then also reported normalised by the best possible,
``hits / min(k, relevant products in the gallery)``, per query, averaged over queries that have any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog.appearance import RERANK_DEPTH, Appearance, AppearanceSettings, fit_appearance, reorder
from catalog.calibration import Calibration, fit_calibration
from catalog.category_first import Grouping
from catalog.whitening import Whitening, fit_whitening


@dataclass(frozen=True)
class Split:
    """Row numbers of the gallery (indexed) and of the held-out queries."""

    gallery: np.ndarray
    queries: np.ndarray


def held_out_split(labels: np.ndarray, fraction: float, seed: int, per_label: int = 0, max_labels: int = 0,
                   min_per_label: int = 5) -> Split:
    """Per label with at least ``min_per_label`` rows (optionally ``max_labels`` of them, and ``per_label``
    rows of each, seeded): ``fraction`` of its rows, at least one, become queries; the rest the gallery."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    names = names[counts >= max(min_per_label, per_label, 2)]
    if max_labels and len(names) > max_labels:
        names = np.sort(rng.choice(names, max_labels, replace=False))
    gallery: list[int] = []
    queries: list[int] = []
    for name in names:
        rows = rng.permutation(np.flatnonzero(labels == name))
        if per_label:
            rows = rows[:per_label]
        n_queries = min(len(rows) - 1, max(1, int(round(len(rows) * fraction))))
        queries += rows[:n_queries].tolist()
        gallery += rows[n_queries:].tolist()
    return Split(np.array(sorted(gallery), np.int64), np.array(sorted(queries), np.int64))


@dataclass(frozen=True)
class Fitted:
    """What a build fits on its catalog, fitted here on the gallery alone."""

    whitening: Whitening | None
    grouping: Grouping

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Model vectors → the search space (as the gateway's ``CatalogIndex.prepare``)."""
        return self.whitening.apply(vectors) if self.whitening else np.asarray(vectors, np.float32)


def fit_gallery(vectors: np.ndarray, categories: np.ndarray, whitening: dict | None) -> Fitted:
    """Whitening (with the build's settings, or none), calibration and category vote, from gallery rows only."""
    white = fit_whitening(vectors, **whitening) if whitening else None
    space = white.apply(vectors) if white else np.asarray(vectors, np.float32)
    calibration = fit_calibration(space, [str(c) for c in categories])
    return Fitted(white, Grouping.from_labels([str(c) for c in categories], Calibration(calibration["points"]).percent))


def twins_of(query_keys: np.ndarray, gallery_keys: np.ndarray) -> np.ndarray:
    """Queries × gallery: True where the two rows are the same picture (equal non-empty image digests)."""
    query_keys, gallery_keys = np.asarray(query_keys), np.asarray(gallery_keys)
    return (query_keys[:, None] == gallery_keys[None, :]) & (query_keys[:, None] != "")


def rank(sim: np.ndarray, grouping: Grouping | None, k: int, appearance: Appearance | None = None,
         look_sim: np.ndarray | None = None) -> np.ndarray:
    """The top ``k`` gallery rows per query (``sim``: queries × gallery, excluded rows -inf), category-first
    with ``grouping`` (the vote of the query's nearest gallery products, as the gateway ranks); with
    ``appearance``, the guessed category's best ``RERANK_DEPTH`` re-ordered by the fused score
    (``look_sim``: appearance cosines), by the same ``reorder`` as the gateway."""
    winner = grouping.guess(sim)[0] if grouping is not None else None
    key = sim if grouping is None else grouping.keys(sim, winner)
    key = np.where(np.isfinite(sim), key, -np.inf)
    depth = min(max(k, RERANK_DEPTH) if appearance is not None else k, sim.shape[1])
    top = np.argpartition(-key, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    if appearance is not None and grouping is not None:
        for i, code in enumerate(winner):
            members = np.flatnonzero((grouping.codes[top[i]] == code) & np.isfinite(sim[i, top[i]]))
            if code >= 0 and len(members) > 1:  # the group's members lead the row: re-order them in place
                picked = top[i, members]
                top[i, members] = picked[reorder(sim[i, picked], look_sim[i, picked], appearance)]
    return top[:, :min(k, sim.shape[1])]


def precision_report(top: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     excluded: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Precision@k, and precision@k normalised by the best possible, of ranked gallery rows ``top``.

    ``excluded`` (queries × gallery) marks rows that may not answer (twins): they are neither ranked nor
    counted as relevant. Queries without any relevant gallery row count in precision, not in the
    normalised figure (its best possible is 0)."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    labelled = (query_labels != "")[:, None]  # an unlabelled query has nothing relevant
    hit = (gallery_labels[top] == query_labels[:, None]) & labelled & ~np.take_along_axis(excluded, top, axis=1)
    relevant = ((gallery_labels[None, :] == query_labels[:, None]) & labelled & ~excluded).sum(axis=1)
    has = relevant > 0
    report: dict = {"queries": int(len(top)), "queries_without_relevant": int((~has).sum())}
    for k in ks:
        report[f"precision@{k}"] = float(hit[:, :k].mean()) if len(top) else float("nan")
        best = np.minimum(k, relevant[has])
        report[f"normalised_precision@{k}"] = float((hit[has, :k].sum(axis=1) / best).mean()) if has.any() \
            else float("nan")
    return report


def evaluate_held_out(vectors: np.ndarray, categories: np.ndarray, labels: np.ndarray, image_keys: np.ndarray,
                      split: Split, whitening: dict | None, ks: tuple[int, ...] = (1, 5, 10),
                      hists: np.ndarray | None = None, colours: np.ndarray | None = None,
                      settings: AppearanceSettings | None = None) -> dict:
    """Held-out figures for both rankings (category-first, similarity alone), for the category and for
    ``labels`` (e.g. type + colour). ``vectors`` are model vectors of every row; only gallery rows are fitted.
    With ``hists`` (colour histograms) the category-first ranking orders inside the category by appearance,
    fitted on the gallery's ``colours``; similarity alone stays the CNN's, as in the gateway."""
    gallery, queries = split.gallery, split.queries
    fitted = fit_gallery(vectors[gallery], categories[gallery], whitening)
    excluded = twins_of(image_keys[queries], image_keys[gallery])
    space_g, space_q = fitted.space(vectors[gallery]), fitted.space(vectors[queries])
    sim = space_q @ space_g.T
    sim[excluded] = -np.inf
    appearance, look_sim, info = None, None, None
    if hists is not None:
        gallery_colours = [str(c) for c in (colours[gallery] if colours is not None else [""] * len(gallery))]
        appearance, info = fit_appearance(hists[gallery], space_g, gallery_colours,
                                          settings or AppearanceSettings())
        look_sim = appearance.vectors(hists[queries], space_q) @ appearance.vectors(hists[gallery], space_g).T
    report: dict = {"gallery": int(len(gallery)), "queries": int(len(queries)),
                    "twin_pairs_excluded": int(excluded.sum()), "appearance": info}
    for name, grouping in (("category_first", fitted.grouping), ("similarity_alone", None)):
        top = rank(sim, grouping, max(ks), appearance if grouping is not None else None, look_sim)
        report[name] = {"category": precision_report(top, categories[queries], categories[gallery], excluded, ks),
                        "label": precision_report(top, labels[queries], labels[gallery], excluded, ks)}
    return report


def joined_labels(products: list[dict], columns: list[str]) -> np.ndarray:
    """One label per product from several columns (``"Tshirts+Blue"``); "" when any of them is empty."""
    values = [[str(p.get(c) or "").strip() for c in columns] for p in products]
    return np.array(["+".join(v) if all(v) else "" for v in values])

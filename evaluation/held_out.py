"""Held-out retrieval quality: queries are photos whose products are not in the index.

Leave-one-out (evaluation/metrics.py) lets every catalog product query the others, but everything fitted
on the catalog (whitening, calibration, the category vote) has then seen the query. Here each label's
products are split, seeded, into a gallery (the index) and held-out queries; the fitted parts are fitted
on gallery rows only (``fit_gallery`` never receives a query row), and a query's byte-identical twins in
the gallery (the same picture under another id) are removed from its ranking, so a twin never answers
for it. Every ranking is the gateway's own (ranking/, through evaluation/ranked.py).

Relevance can be finer than the category the gateway groups by: e.g. the same article type *and* the
same base colour. Precision@k is then also reported normalised by the best possible,
``hits / min(k, relevant products in the gallery)``, per query, averaged over queries that have any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.ranked import gallery_view, ranked_rows
from ranking import MatchSettings
from ranking.appearance import AppearanceSettings, fit_appearance
from ranking.calibration import Calibration, fit_calibration
from ranking.category_first import Grouping
from ranking.whitening import Whitening, fit_whitening


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
    calibration: Calibration

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Model vectors → the search space (as the gateway's ``CatalogIndex.prepare``)."""
        return self.whitening.apply(vectors) if self.whitening else np.asarray(vectors, np.float32)


def fit_gallery(vectors: np.ndarray, categories: np.ndarray, whitening: dict | None) -> Fitted:
    """Whitening (with the build's settings, or none), calibration and category vote, from gallery rows only."""
    white = fit_whitening(vectors, **whitening) if whitening else None
    space = white.apply(vectors) if white else np.asarray(vectors, np.float32)
    calibration = Calibration(fit_calibration(space, [str(c) for c in categories])["points"])
    return Fitted(white, Grouping.from_labels([str(c) for c in categories], calibration.percent), calibration)


def twins_of(query_keys: np.ndarray, gallery_keys: np.ndarray) -> np.ndarray:
    """Queries × gallery: True where the two rows are the same picture (equal non-empty image digests)."""
    query_keys, gallery_keys = np.asarray(query_keys), np.asarray(gallery_keys)
    return (query_keys[:, None] == gallery_keys[None, :]) & (query_keys[:, None] != "")


def precision_report(top: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     excluded: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Precision@k, and precision@k normalised by the best possible, of ranked gallery rows ``top``.

    ``excluded`` (queries × gallery) marks rows that may not answer (twins): they are neither ranked nor
    counted as relevant. Queries without any relevant gallery row count in precision, not in the
    normalised figure (its best possible is 0)."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    labelled = (query_labels != "")[:, None]  # an unlabelled query has nothing relevant
    ranked = top >= 0  # -1 pads a query with fewer ranked rows
    hit = ((gallery_labels[top] == query_labels[:, None]) & labelled & ranked
           & ~np.take_along_axis(excluded, np.maximum(top, 0), axis=1))
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
                      settings: AppearanceSettings | None = None, match: MatchSettings | None = None) -> dict:
    """Held-out figures for both rankings (category-first, similarity alone), for the category and for
    ``labels`` (e.g. type + colour). ``vectors`` are model vectors of every row; only gallery rows are fitted.
    With ``hists`` (colour histograms) the category-first ranking orders inside the category by appearance,
    fitted on the gallery's ``colours``; similarity alone stays the CNN's, as in the gateway."""
    gallery, queries = split.gallery, split.queries
    fitted = fit_gallery(vectors[gallery], categories[gallery], whitening)
    excluded = twins_of(image_keys[queries], image_keys[gallery])
    space_g, space_q = fitted.space(vectors[gallery]), fitted.space(vectors[queries])
    appearance, looks_q, looks_g, info = None, None, None, None
    if hists is not None:
        gallery_colours = [str(c) for c in (colours[gallery] if colours is not None else [""] * len(gallery))]
        appearance, info = fit_appearance(hists[gallery], space_g, gallery_colours,
                                          settings or AppearanceSettings())
        looks_q = appearance.vectors(hists[queries], space_q)  # a query's colour is always guessed
        looks_g = appearance.catalog_vectors(hists[gallery], space_g, gallery_colours)
    report: dict = {"gallery": int(len(gallery)), "queries": int(len(queries)),
                    "twin_pairs_excluded": int(excluded.sum()), "appearance": info}
    view = gallery_view(space_g, fitted.grouping, fitted.calibration, appearance, looks_g, match or MatchSettings())
    for name, grouped in (("category_first", True), ("similarity_alone", False)):
        top = ranked_rows(view, space_q, max(ks), grouped, looks_q, excluded)
        report[name] = {"category": precision_report(top, categories[queries], categories[gallery], excluded, ks),
                        "label": precision_report(top, labels[queries], labels[gallery], excluded, ks)}
    return report


def joined_labels(products: list[dict], columns: list[str]) -> np.ndarray:
    """One label per product from several columns (``"Tshirts+Blue"``); "" when any of them is empty."""
    values = [[str(p.get(c) or "").strip() for c in columns] for p in products]
    return np.array(["+".join(v) if all(v) else "" for v in values])

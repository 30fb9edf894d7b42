"""Appearance: the colours of a product photo, and the order they give inside a category.

The CNN vector says *what* a photo shows (a dress, a watch) far better than its colour: its last layer
pools colour away. So inside one category (the guessed one, the anchor's, or a category filter) the
appearance cosine sets the share of its similarity each candidate keeps as its match (``MatchSettings``), the
CNN's closest excepted (ranking/rank.py), while the category vote, the threshold and the "no close match" rule stay the
CNN's. (The stored ``weight`` is kept in the file for older readers; the ranking no longer uses it.)
A photo's colour descriptor (modelio/colour.py) holds histograms (hue × saturation × value, plus greys) of
its foreground (the background is the colour of the border) and of its centre without skin; without a colour
column the appearance vector is the foreground's coarse histogram. When the catalog has a colour column
(e.g. ``base_colour``) the build fits a small ridge projection from [histograms, CNN vector] to those
colours, on catalog rows only, like the whitening, and a catalog product whose colour is one of them is
described by that colour itself (the label says it better than a guess from its photo); the query's colour is
always the projection's guess. docs/QUALITY.md has every variant tried and its numbers.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import numpy as np

from modelio.colour import (  # noqa: F401 - HIST_SIZE and DESCRIPTOR re-exported
    COARSE_SIZE,
    DESCRIPTOR,
    FINE_SIZE,
    HIST_SIZE,
    SIDE,
    centre_of,
    coarse_of,
    histogram_of,
)
from modelio.imaging import ImageError, decode_image

#: How many of the best candidates of a category are re-ordered (by the CNN first, so deep enough).
RERANK_DEPTH = 200
#: Catalog columns read as a product's colour (fits the projection); the first one present wins.
COLOUR_COLUMNS = ("colour", "color", "base_colour")


def colour_histogram(data: bytes, max_pixels: int) -> np.ndarray:
    """The appearance histogram of an encoded image (``ImageError`` for one that is not)."""
    return histogram_of(decode_image(data, max_pixels, draft=SIDE * 2))


def colour_histogram_or_none(data: bytes, max_pixels: int) -> np.ndarray | None:
    """``colour_histogram``, or None for an image only the model reads (the CNN alone then orders it)."""
    try:
        return colour_histogram(data, max_pixels)
    except ImageError:
        return None


#: What the projection reads of a colour descriptor: its three histograms (coarse, fine, the centre's).
FEATURE_SIZE = COARSE_SIZE + FINE_SIZE + COARSE_SIZE


def _root(hists: np.ndarray) -> np.ndarray:
    """Unit √histograms (rows): the Hellinger form, where a cosine compares two histograms."""
    return _unit(np.sqrt(np.maximum(hists, 0)))


def _features(hists: np.ndarray, search_vectors: np.ndarray) -> np.ndarray:
    """What the projection reads: the colour descriptor's three histograms, each a unit √histogram (the whole
    foreground's coarse and fine, the centre's without skin), beside the search-space (whitened CNN) vector."""
    d = np.atleast_2d(hists)
    return np.hstack([_root(coarse_of(d)), _root(d[:, :FINE_SIZE]), _root(centre_of(d)), np.atleast_2d(search_vectors)])


def colour_column(products: list[dict]) -> str | None:
    """The catalog column read as a product's colour: the first of ``COLOUR_COLUMNS`` any product fills."""
    return next((c for c in COLOUR_COLUMNS if any(p.get(c) for p in products)), None)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class AppearanceSettings:
    """How the build fits the appearance space (chosen on one held-out split, reported on another)."""

    weight: float = 0.85  # of the appearance cosine in the fused score, with a colour column
    unsupervised_weight: float = 0.85  # the same for the plain histogram (no colour column)
    ridge: float = 5.0  # ridge regularisation of the projection (it guesses the query's colour)
    min_labelled: int = 50  # colour-labelled products needed to fit the projection ...
    min_colours: int = 2  # ... in at least this many colours with 2+ products each


@dataclass(frozen=True)
class Appearance:
    """A fitted appearance space: what a photo's histogram (and search vector) map to, and its weight."""

    weight: float
    mean: np.ndarray | None = None  # centring of ``_features``; None: the histogram alone
    projection: np.ndarray | None = None  # (FEATURE_SIZE + search dim) × colours
    colours: tuple[str, ...] = ()  # the projection's colours, in its column order (() in files before them)

    def vectors(self, hists: np.ndarray, search_vectors: np.ndarray) -> np.ndarray:
        """Unit appearance vectors of photos (rows) from their histograms and search-space vectors."""
        if self.projection is None:
            return _root(coarse_of(np.atleast_2d(hists)))
        return _unit((_features(hists, search_vectors) - self.mean) @ self.projection)

    def catalog_vectors(self, hists: np.ndarray, search_vectors: np.ndarray, colours: list[str]) -> np.ndarray:
        """Unit appearance vectors of catalog products: their own colour (one-hot) where it is one the projection
        knows, else ``vectors`` (the guess from the photo)."""
        out = self.vectors(hists, search_vectors)
        column = {name: i for i, name in enumerate(self.colours)}
        known = [(row, column[c]) for row, c in enumerate(colours) if c in column]
        if known:
            rows, cols = np.array(known).T
            out[rows] = 0.0
            out[rows, cols] = 1.0
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"weight": np.float32(self.weight)}
        if self.projection is not None:
            arrays |= {"mean": self.mean.astype(np.float32), "projection": self.projection.astype(np.float32),
                       "colours": np.array(self.colours)}
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Appearance:
        """The stored space; ``ValueError`` when the file is not one (the index store is untrusted)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                weight = float(npz["weight"])
                mean = npz["mean"] if "mean" in npz else None
                projection = npz["projection"] if "projection" in npz else None
                colours = tuple(str(c) for c in npz["colours"]) if "colours" in npz else ()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same refusal
            raise ValueError(f"unreadable appearance file: {exc}") from None
        if not 0 <= weight <= 1 or (projection is not None and (mean is None or projection.ndim != 2
                                                                  or mean.shape != (projection.shape[0],))):
            raise ValueError("malformed appearance file")
        if colours and (projection is None or len(colours) != projection.shape[1]):
            raise ValueError("malformed appearance file: its colours do not name the projection's columns")
        return cls(weight, mean, projection, colours)


def _ridge(hists: np.ndarray, search_vectors: np.ndarray, rows: np.ndarray, labels: np.ndarray, classes: int,
           ridge: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(feature mean, ridge projection) of the given rows onto one-hot ``labels``, summed a block of rows at a
    time in float64 (the memory is the d × d sums, not a float64 copy of the features)."""

    def features(part: np.ndarray) -> np.ndarray:
        return _features(hists[part], search_vectors[part]).astype(np.float64)

    parts = [rows[start:start + block] for start in range(0, len(rows), block)]
    mean = sum(features(part).sum(axis=0) for part in parts) / len(rows)
    target_mean = np.bincount(labels, minlength=classes) / len(rows)
    gram, cross = np.zeros((len(mean), len(mean))), np.zeros((len(mean), classes))
    for start, part in zip(range(0, len(rows), block), parts, strict=True):
        centred = features(part) - mean
        gram += centred.T @ centred
        cross += centred.T @ (np.eye(classes)[labels[start:start + block]] - target_mean)
    return mean, np.linalg.solve(gram + ridge * np.eye(len(mean)), cross)


def fit_appearance(hists: np.ndarray, search_vectors: np.ndarray, colours: list[str],
                   settings: AppearanceSettings = AppearanceSettings()) -> tuple[Appearance, dict]:
    """The appearance space of a catalog, and what the manifest says of it. With enough colour labels: a
    ridge projection of ``_features`` (three √histograms, search vector) onto the catalog's colours (one-hot);
    else the histogram."""
    counts = Counter(c for c in colours if c)
    named = sorted(c for c, n in counts.items() if n >= 2)
    code = {c: i for i, c in enumerate(named)}
    rows = np.array([i for i, c in enumerate(colours) if c in code])  # ints (an empty one returns below)
    info: dict = {"descriptor": DESCRIPTOR, "depth": RERANK_DEPTH}
    if len(rows) < settings.min_labelled or len(named) < settings.min_colours:
        info |= {"weight": settings.unsupervised_weight, "projection": None,
                 "source": f"colour histogram: {len(rows)} products in {len(named)} colours with 2+ products "
                           f"(a projection needs {settings.min_labelled} in {settings.min_colours})"}
        return Appearance(settings.unsupervised_weight), info
    labels = np.array([code[colours[i]] for i in rows])
    mean, projection = _ridge(hists, np.asarray(search_vectors), rows, labels, len(named), settings.ridge)
    info |= {"weight": settings.weight, "projection": {"colours": len(named), "fitted_on": len(rows),
                                                         "ridge": settings.ridge},
             "source": "ridge projection onto the catalog's colours"}
    return Appearance(settings.weight, mean.astype(np.float32), projection.astype(np.float32), tuple(named)), info


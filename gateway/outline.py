"""Outlining the item of a whole photo: where in it do the backbone's features look like the product found?

The windows (gateway/locate.py) find *which* product a whole photo shows; they are squares, so their box is
loose. The backbone's last feature map, before pooling, says *where*: each cell (32 pixels of the photo) is a
vector in the same space as the catalog's (the pooled vector is their mean), and the cells whose cosine to
that product is high are the item's. The outline is the connected region of high cells around the best one,
and its bounding box is searched as a drawn box is (gateway/images.py). The product's own catalog vector is
the guide: the photo's vector would light up its background as much as the item (docs/QUALITY.md has both).
The found product may be a lookalike of the item, and its map then lights the lookalike's shape: each of the
catalog's few closest products outlines once, and the box the catalog sees best is searched. The windows may
have found another product of the photo first (a smaller thing lying beside the item, seen more exactly): the
products every window found outline too, and where most of them agree (``agreed``) is one more box to search.
No other model and no other weights: the same backbone, asked for its map (modelio/protocol.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.images import Crop
from gateway.locate import iou


@dataclass(frozen=True)
class OutlineSettings:
    """How the item is outlined: the photo's shorter side for the feature map (pixels; 448 is 14 cells), and
    the share of the way from the map's lowest to its highest cosine above which a point is the item's.
    Chosen on the shopper-photo protocol's tuning halves (docs/QUALITY.md)."""

    side: int = 448
    level: float = 0.55
    least_cells: int = 2  # an outline of fewer cells each way is no outline (the whole photo is searched)
    refine: int = 4  # the map is interpolated to this many points a cell each way: edges finer than a cell
    guides: int = 5  # the catalog's closest products to the found item that each outline it (one map for all)
    slack: float = 2.0  # the best box is searched unless its closest product is more points below the search's
    anywhere_level: float = 0.6  # ``level`` of the map of any product's likeness (``likeness``)
    agree_overlap: float = 0.7  # ``agreed``: two outlines agree when they overlap this much (IoU) ...
    agree_base: float = 60.0  # ... and each weighs its product's similarity (percent) above this

    def keeps(self, before: float, outlined: float) -> bool:
        """Whether a box whose closest product is ``outlined`` percent close replaces a search whose closest
        was ``before``: a studio photo of another product is searched best as it is (docs/QUALITY.md)."""
        return outlined >= before - self.slack


def heat(fmap: np.ndarray, to_space: Callable[[np.ndarray], np.ndarray], product: np.ndarray) -> np.ndarray:
    """(h, w): each cell's cosine to ``product`` (a unit vector of the index's search space); ``fmap`` is
    (C, h, w) and ``to_space`` takes (n, C) model vectors into the search space (the index's whitening)."""
    return (_cells(fmap, to_space) @ np.asarray(product, dtype=np.float32)).reshape(fmap.shape[1:])


def likeness(fmap: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """(h, w): how much each cell looks like *any* product, its best cosine to the catalog's prototypes (unit
    model vectors, ranking/prototypes.py): no product need be known, and a room's patterns look like none."""
    return (_cells(fmap, lambda cells: cells) @ np.asarray(prototypes, dtype=np.float32).T).max(axis=1).reshape(
        fmap.shape[1:])


def _cells(fmap: np.ndarray, to_space: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(h·w, d): the map's cells as unit rows, taken into a space by ``to_space``."""
    cells = np.asarray(to_space(fmap.reshape(fmap.shape[0], -1).T), dtype=np.float32)
    return cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)


def outline(cosines: np.ndarray, settings: OutlineSettings = OutlineSettings()) -> Crop | None:  # noqa: B008
    """The bounding box (fractions of the photo) of the 4-connected cells around the best one whose cosine is
    at least ``settings.level`` of the way from the lowest to the highest; None when the map is flat (no
    cell stands out) or the region is under ``settings.least_cells`` cells either way."""
    low, high = float(cosines.min()), float(cosines.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return None
    fine = _interpolated(cosines, settings.refine)
    height, width = fine.shape
    hot = fine >= low + settings.level * (high - low)
    region = _region(hot, divmod(int(np.argmax(fine)), width))
    rows, cols = np.nonzero(region)
    least = settings.least_cells * settings.refine
    if rows.max() - rows.min() + 1 < least or cols.max() - cols.min() + 1 < least:
        return None
    return Crop(cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height)


def agreed(outlines: list[tuple[float, Crop]], settings: OutlineSettings = OutlineSettings()  # noqa: B008
           ) -> Crop | None:
    """Of ``outlines`` (each the outline of one product, with that product's similarity in percent), the one
    that most agree with: the greatest sum of ``similarity - settings.agree_base`` over the outlines that overlap
    it by ``settings.agree_overlap`` (itself included), the closer product's on a tie; None for none. The photo's
    subject is where the products the windows found outline alike, not where the single closest one lies."""
    def support(box: Crop) -> float:
        near = settings.agree_overlap
        return sum(score - settings.agree_base for score, other in outlines if iou(box, other) >= near)
    return max(outlines, key=lambda pair: (support(pair[1]), pair[0]), default=(0.0, None))[1]


def _interpolated(cells: np.ndarray, points: int) -> np.ndarray:
    """``cells`` bilinearly interpolated at ``points`` × ``points`` evenly spread points of each cell (the
    cell's value at its centre; beyond the outer centres, the edge's)."""
    if points <= 1:
        return cells
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = np.clip((np.arange(n * points) + 0.5) / points - 0.5, 0, n - 1)
        below = np.floor(at).astype(int)
        return below, np.minimum(below + 1, n - 1), at - below
    r0, r1, fr = axis(cells.shape[0])
    c0, c1, fc = axis(cells.shape[1])
    top = cells[r0][:, c0] * (1 - fc) + cells[r0][:, c1] * fc
    bottom = cells[r1][:, c0] * (1 - fc) + cells[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def _region(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected cells of ``mask`` reachable from ``seed`` (which is in it): OpenCV's connected components
    (the gateway's image has it for the keypoints): an outline takes 0.37 ms instead of 1.19 with the Python
    flood fill it replaced (tests/test_outline.py compares the two)."""
    import cv2

    _, labels = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=4)
    return labels == labels[seed]

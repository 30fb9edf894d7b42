"""Finding the item in a whole photo: where in it does the catalog see a product best?

A shopper's photo shows the item among other things (a sofa, a shelf, other products). When no box is
drawn, the gateway searches windows of the photo too: squares of a few sizes slid across it, each searched
as a crop is (on the studio background, gateway/images.py), and keeps the one whose closest catalog
product is closest of all, when it beats the whole photo's. The model itself is the detector, so it is
class-agnostic and needs no other weights; a photo that already matches a product almost exactly (a
catalog-like shot) is searched whole, with no extra model call. docs/QUALITY.md has what was measured.

The same windows show the photo's other items: windows that do not overlap the searched part and whose closest
product is close and another one (``other_items``). The page puts a dot on each; picking one searches its
window's vector, carried in the query token, with no upload and no model call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.images import MIN_CROP_PX, Crop


@dataclass(frozen=True)
class LocateSettings:
    """The windows tried (sides as shares of the photo's shorter side, steps as shares of a side) and when
    the whole photo is good enough to skip them (its closest product's calibrated similarity, percent)."""

    sides: tuple[float, ...] = (0.55, 0.75, 0.95)
    step: float = 0.5
    good_enough: float = 95.0
    agree: int = 3  # the best windows whose common part is tried (they all hold the item: it is in all)
    slack: float = 0.0  # the common part is searched when it scores at least the best window's minus this
    items: int = 4  # at most this many items in one photo (the searched one and others the shopper can pick)
    overlap: float = 0.5  # a window overlapping an item by this much (IoU) shows that item, not another ...
    inside: float = 0.7  # ... and so does one this much inside it, or around it (share of the smaller's area)
    item_least: float = 60.0  # a window is another item when its closest product is at least this close (%)


def windows(width: int, height: int, settings: LocateSettings = LocateSettings()) -> list[Crop]:  # noqa: B008
    """Square windows of each size, ``step`` apart and reaching every edge, as fractions of the photo; none
    for a photo too small to cut (a side under four times the smallest crop)."""
    if min(width, height) < 4 * MIN_CROP_PX:
        return []
    out: list[Crop] = []
    for share in settings.sides:
        side = share * min(width, height)
        for left in _starts(width, side, settings.step):
            for top in _starts(height, side, settings.step):
                out.append(Crop(left / width, top / height, (left + side) / width, (top + side) / height))
    return out


def _starts(length: int, side: float, step: float) -> list[float]:
    """Where windows of ``side`` start along ``length``: evenly, at most ``step`` × side apart, first at 0 and
    last at the far edge."""
    room = max(0.0, length - side)
    count = int(np.ceil(room / (step * side))) + 1
    return [float(v) for v in np.linspace(0.0, room, count)]


def best_window(whole: float, scores: list[float | None]) -> int | None:
    """The window to search: the one whose closest product scores highest (None scores: windows that could
    not be embedded), if it beats the whole photo's ``whole``; else None (search the whole photo)."""
    valid = [(score, i) for i, score in enumerate(scores) if score is not None]
    if not valid:
        return None
    score, i = max(valid, key=lambda pair: (pair[0], -pair[1]))
    return i if score > whole else None


def common_part(crops: list[Crop], scores: list[float | None], agree: int, width: int, height: int) -> Crop | None:
    """Where the ``agree`` best-scoring windows overlap (each holds the item, so the item is in all of them),
    or None when fewer than ``agree`` (at least 2) scored or their overlap is under four smallest crops a side
    of a ``width`` × ``height`` photo."""
    ranked = sorted((i for i, score in enumerate(scores) if score is not None), key=lambda i: -scores[i])[:agree]
    if len(ranked) < max(agree, 2):
        return None
    left, top = max(crops[i].left for i in ranked), max(crops[i].top for i in ranked)
    right, bottom = min(crops[i].right for i in ranked), min(crops[i].bottom for i in ranked)
    # in pixels as ``Crop.box`` rounds them
    big = (round(right * width) - round(left * width) >= 4 * MIN_CROP_PX
           and round(bottom * height) - round(top * height) >= 4 * MIN_CROP_PX)
    return Crop(left, top, right, bottom) if big else None


def area(box: Crop) -> float:
    """A box's area, as a share of the photo's (``box`` a box: left < right, top < bottom)."""
    return (box.right - box.left) * (box.bottom - box.top)


def _inter(a: Crop, b: Crop) -> float:
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    return width * height if width > 0 and height > 0 else 0.0


def iou(a: Crop, b: Crop) -> float:
    """Intersection over union of two boxes (fractions of one photo)."""
    inter = _inter(a, b)
    return inter / (area(a) + area(b) - inter) if inter else 0.0


def same_item(a: Crop, b: Crop, settings: LocateSettings = LocateSettings()) -> bool:  # noqa: B008
    """Whether two windows show one item: they overlap by ``settings.overlap`` (IoU), or the smaller lies
    ``settings.inside`` within the larger (a big window around a small item)."""
    inter = _inter(a, b)
    return iou(a, b) >= settings.overlap or inter >= settings.inside * min(area(a), area(b))


def other_items(crops: list[Crop], scores: list[float | None], products: list[int | None], searched: Crop,
                searched_product: int | None, least: float, settings: LocateSettings = LocateSettings()  # noqa: B008
                ) -> list[int]:
    """The windows that show other items than the searched one, best first: each scores at least ``least``
    (its closest product is that close), its closest product is no other item's, and it is not where another item
    is (``same_item``); at most ``settings.items - 1``. ``products``: each window's closest product."""
    chosen: list[int] = []
    boxes, taken = [searched], {searched_product}
    for i in sorted((i for i, score in enumerate(scores) if score is not None), key=lambda i: -scores[i]):
        if len(chosen) >= settings.items - 1 or scores[i] < least:
            break
        if products[i] in taken or any(same_item(crops[i], box, settings) for box in boxes):
            continue
        chosen.append(i)
        boxes.append(crops[i])
        taken.add(products[i])
    return chosen

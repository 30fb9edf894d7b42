"""The shopper-photo protocol: is the exact product first when a shopper photographs it somewhere else?

The catalog's products are split, seeded, into two halves: settings are tuned on scenes of the ``tune`` half
and reported on scenes of the ``report`` half (the index always holds the whole catalog, as a shop's does).
Each scene (evaluation/scenes.py) is searched twice through the gateway's own ``SearchService``, exactly as
an upload is: the whole photo (the gateway finds the item itself) and the photo cropped to the pasted item
(a shopper's box). A query's only relevant answer is its own product: recall@1 is "the exact product came
first", recall@10 "it is on the first page". The scene photo itself is never in the index.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from evaluation.scenes import Scene, SceneSettings, box_iou, make_scene
from gateway.images import Crop
from gateway.service import SearchOptions, SearchQuery, SearchService
from modelio.imaging import ImageError

#: The ranking settings reported (the gateway's default first).
RANKINGS = {"default": {"category_first": True}, "similarity_alone": {"category_first": False}}
QUERIES = ("cropped", "whole")


@dataclass(frozen=True)
class ProtocolSettings:
    seed: int = 0  # which products fall in which half, and every scene's random choices
    scenes: int = 200  # scenes per run (one per product, drawn from the half)
    part: str = "report"  # "tune" or "report"
    clutter_per_scene: tuple[int, int] = (2, 4)
    scene: SceneSettings = field(default_factory=SceneSettings)


def split_rows(n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """The catalog's rows in two seeded halves, ``tune`` and ``report``."""
    order = np.random.default_rng(seed).permutation(n_rows)
    return {"tune": np.sort(order[: n_rows // 2]), "report": np.sort(order[n_rows // 2:])}


def make_scenes(photo: Callable[[int], Image.Image | None], n_rows: int, settings: ProtocolSettings) -> list[Scene]:
    """``settings.scenes`` scenes of products of one half (``photo(row)``: a row's studio photo, None when it
    cannot be read); the clutter comes from any row. Deterministic for a seed."""
    rng = np.random.default_rng([settings.seed, 1 if settings.part == "tune" else 2])
    rows = rng.permutation(split_rows(n_rows, settings.seed)[settings.part])
    out: list[Scene] = []
    for row in rows:
        if len(out) == settings.scenes:
            break
        image = photo(int(row))
        if image is None:
            continue
        others = [photo(int(r)) for r in rng.integers(0, n_rows, int(rng.integers(*settings.clutter_per_scene)))]
        out.append(make_scene(image, int(row), rng, [o for o in others if o is not None], settings.scene))
    return out


@dataclass(frozen=True)
class Outcome:
    """One scene searched one way: where its product came (0 = first; -1 = not in the first ``top_k``)."""

    rank: int
    box: tuple[float, float, float, float] | None = None  # the box the gateway searched, when it chose one
    items: int = 1  # the items the gateway found in the photo
    on_an_item: int = -1  # the best place its product came on any item's search (the shopper picks that dot)


def search_scene(service: SearchService, scene: Scene, query: str, options: SearchOptions) -> Outcome:
    """Search one scene as an upload, whole or cropped to its item; where its own product came, searched first
    and on the best of the photo's items (each other item searched from the token, as the page's dots do)."""
    crop = Crop(*scene.box) if query == "cropped" else None
    answer = service.search(SearchQuery(upload=scene.jpeg, crop=crop), options)
    own = str(service.require_index().products[scene.row]["id"])
    rank = _place(answer.found, own)
    places = [rank] + [_place(service.search(SearchQuery(token=answer.token, item=k), options).found, own)
                       for k in range(1, len(answer.found.items))]
    found = [p for p in places if p >= 0]
    box = answer.found.box
    return Outcome(rank, None if box is None else box.fractions(), len(answer.found.items),
                   min(found) if found else -1)


def _place(found, product_id: str) -> int:
    ids = [str(hit.product["id"]) for hit in found.hits]
    return ids.index(product_id) if product_id in ids else -1


def evaluate_scenes(service: SearchService, scenes: list[Scene], top_k: int = 10) -> dict:
    """Recall@1 and recall@10 of every query kind × ranking setting, and the auto-found boxes' IoU."""
    report: dict = {"scenes": len(scenes)}
    for query in QUERIES:
        for name, setting in RANKINGS.items():
            options = SearchOptions(threshold=0.0, top_k=top_k, **setting)
            outcomes = [search_scene(service, scene, query, options) for scene in scenes]
            ranks = np.array([o.rank for o in outcomes])
            entry = {"recall@1": float((ranks == 0).mean()), "recall@10": float(((ranks >= 0) & (ranks < 10)).mean())}
            boxes = [(o.box, s.box) for o, s in zip(outcomes, scenes, strict=True) if o.box is not None]
            if query == "whole":
                ious = np.array([box_iou(found, truth) for found, truth in boxes])
                picked = np.array([o.on_an_item for o in outcomes])
                entry |= {"boxes": len(boxes), "iou_median": float(np.median(ious)) if boxes else 0.0,
                          "iou_at_least_0.5": float((ious >= 0.5).sum() / len(scenes)),
                          "items_mean": float(np.mean([o.items for o in outcomes])),
                          "first_on_an_item": float((picked == 0).mean())}
            report[f"{query}/{name}"] = entry
    return report


def load_photo(data: bytes) -> Image.Image | None:
    """A studio photo from its bytes, or None when it is not an image."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError):
        return None


class EmbedderClient:
    """The gateway's model client over an in-process embedder (the archive's own model), for offline runs."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def embed(self, blob: bytes) -> tuple[np.ndarray, str]:
        return self.embedder.embed_one(blob), self.embedder.backbone_id

    def probe(self) -> str:
        return self.embedder.backbone_id

    def feature_map(self, blob: bytes, side: int) -> tuple[np.ndarray, str]:
        """As the handler answers it: a refusal (not an image, a side out of range) is an ``ImageError``."""
        try:
            return self.embedder.feature_map(blob, side), self.embedder.backbone_id
        except ValueError as exc:
            raise ImageError(str(exc)) from None

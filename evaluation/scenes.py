"""Shopper-style scenes: a catalog product photographed "in the wild", made reproducibly from its studio photo.

A shopper photographs the very thing they saw: on a sofa, on a shelf, smaller, turned, under other light. A
scene here is that photo, made from the catalog: the product is cut out of its studio background (the
border's colour, flood-filled from the edges), scaled to a share of a cluttered 640 × 480 room-like
background, turned, re-lit, blurred and JPEG-compressed, and pasted where it fits. Other catalog products,
smaller, lie around it as clutter. Everything is drawn from one ``numpy`` generator, so a seed gives the same
scenes (and boxes) on every machine. ``Scene.box`` is the pasted item's bounding box in fractions of the scene.

The backgrounds are made here, not photographed (none ship with the project): a wall and a floor in random
colours, textured with noise, stripes or checks, and shapes (cushions, frames, books) in front.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from gateway.images import Crop
from gateway.locate import iou

#: Scene size (width, height): a phone photo shrunk as the page shrinks it, landscape.
SIZE = (640, 480)
#: A pixel is background when no channel differs from the border's median colour by more than this.
BACKGROUND_TOLERANCE = 24


@dataclass(frozen=True)
class SceneSettings:
    """How far a scene strays from the studio photo (each drawn uniformly between its bounds)."""

    scale: tuple[float, float] = (0.35, 0.55)  # the item's longer side, as a share of the scene's width
    rotation: float = 12.0  # degrees either way
    light: tuple[float, float] = (0.7, 1.3)  # brightness factor
    contrast: tuple[float, float] = (0.75, 1.2)
    tint: float = 0.12  # largest per-channel colour cast (warm or cool light)
    blur: tuple[float, float] = (0.0, 1.5)  # Gaussian radius, pixels
    quality: tuple[int, int] = (60, 80)  # JPEG quality
    clutter_products: tuple[int, int] = (2, 4)  # other catalog products lying around
    shapes: tuple[int, int] = (8, 16)


@dataclass(frozen=True)
class Scene:
    """One scene: its JPEG, the pasted item's box (left, top, right, bottom as fractions) and its catalog row."""

    jpeg: bytes
    box: tuple[float, float, float, float]
    row: int


def cut_out(photo: Image.Image) -> Image.Image:
    """The product of a studio photo as RGBA: the background (pixels near the border's colour that connect to
    the border) transparent. A photo without such a background keeps every pixel."""
    rgb = photo.convert("RGB")
    x = np.asarray(rgb, dtype=np.int16)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    near = np.abs(x - np.median(border, axis=0)).max(axis=-1) <= BACKGROUND_TOLERANCE
    mask = Image.fromarray(np.where(near, 0, 255).astype(np.uint8), "L").copy()  # a copy: writable
    for corner in ((0, 0), (mask.width - 1, 0), (0, mask.height - 1), (mask.width - 1, mask.height - 1)):
        if mask.getpixel(corner) == 0:
            ImageDraw.floodfill(mask, corner, 128)  # the background: near the border colour, reached from it
    alpha = np.where(np.asarray(mask) == 128, 0, 255).astype(np.uint8)
    if alpha.mean() < 255 * 0.05:  # nothing left: not a studio photo, keep it whole
        alpha[:] = 255
    soft = Image.fromarray(alpha, "L").filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(0.8))
    out = rgb.copy()
    out.putalpha(soft)
    return out


def _colour(rng: np.random.Generator, low: int = 20, high: int = 235) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _texture(rng: np.random.Generator, size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A patch of ``colour`` with noise, stripes or checks."""
    w, h = size
    kind = rng.integers(0, 3)
    base = np.ones((h, w, 3), np.float32) * np.array(colour, np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        base += rng.normal(0, rng.uniform(6, 22), (h, w, 1)).astype(np.float32)
    elif kind == 1:
        period, angle = rng.uniform(6, 40), rng.uniform(0, np.pi)
        wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
        base += (wave * rng.uniform(10, 40))[..., None]
    else:
        cell = int(rng.integers(8, 48))
        checks = ((x // cell + y // cell) % 2) * 2 - 1
        base += (checks * rng.uniform(8, 35))[..., None]
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def background(rng: np.random.Generator, size: tuple[int, int] = SIZE,
               shapes: tuple[int, int] = (8, 16)) -> Image.Image:
    """A room-like backdrop: a wall and a floor (textured), and shapes in front of them."""
    w, h = size
    scene = Image.new("RGB", size)
    horizon = int(h * rng.uniform(0.45, 0.75))
    scene.paste(_texture(rng, (w, horizon), _colour(rng)), (0, 0))
    scene.paste(_texture(rng, (w, h - horizon), _colour(rng)), (0, horizon))
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(*shapes))):
        sw, sh = int(rng.uniform(0.05, 0.35) * w), int(rng.uniform(0.05, 0.35) * h)
        left, top = int(rng.integers(-sw // 2, w)), int(rng.integers(-sh // 2, h))
        box = (left, top, left + sw, top + sh)
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle(box, fill=_colour(rng), outline=_colour(rng), width=int(rng.integers(0, 6)))
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        elif kind == 2:
            patch = _texture(rng, (sw, sh), _colour(rng))
            scene.paste(patch, (left, top))
        else:
            draw.line([(left, top), (left + sw, top + sh)], fill=_colour(rng), width=int(rng.integers(2, 12)))
    return scene


def _relit(item: Image.Image, rng: np.random.Generator, settings: SceneSettings) -> Image.Image:
    """The item under other light: brightness, contrast and a colour cast; alpha kept."""
    alpha = item.getchannel("A")
    rgb = ImageEnhance.Brightness(item.convert("RGB")).enhance(rng.uniform(*settings.light))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(*settings.contrast))
    cast = 1 + rng.uniform(-settings.tint, settings.tint) * np.array([1.0, 0.2, -1.0])
    x = np.clip(np.asarray(rgb, np.float32) * cast, 0, 255).astype(np.uint8)
    out = Image.fromarray(x, "RGB")
    out.putalpha(alpha)
    return out


def _placed(item: Image.Image, rng: np.random.Generator, long_side: float) -> Image.Image:
    """The item scaled so its longer side is ``long_side`` pixels."""
    factor = long_side / max(item.size)
    return item.resize((max(1, round(item.width * factor)), max(1, round(item.height * factor))),
                       Image.Resampling.BICUBIC)


def _paste(scene: Image.Image, item: Image.Image, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Paste an RGBA ``item`` at a random place fully inside ``scene``; its alpha's bounding box in pixels."""
    left = int(rng.integers(0, max(1, scene.width - item.width + 1)))
    top = int(rng.integers(0, max(1, scene.height - item.height + 1)))
    scene.paste(item, (left, top), item)
    bbox = item.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox() or (0, 0, item.width, item.height)
    return left + bbox[0], top + bbox[1], left + bbox[2], top + bbox[3]


def make_scene(photo: Image.Image, row: int, rng: np.random.Generator, clutter: list[Image.Image] = (),
               settings: SceneSettings = SceneSettings()) -> Scene:
    """A scene of the product in ``photo`` (catalog row ``row``) with ``clutter`` (other products' photos)
    lying around it, every random choice drawn from ``rng``."""
    scene = background(rng, SIZE, settings.shapes)
    w, h = scene.size
    for other in clutter:  # smaller, behind the item
        small = _placed(cut_out(other), rng, rng.uniform(0.12, 0.25) * w)
        _paste(scene, small.rotate(rng.uniform(-30, 30), Image.Resampling.BICUBIC, expand=True), rng)
    item = _relit(cut_out(photo), rng, settings)
    item = _placed(item, rng, min(rng.uniform(*settings.scale) * w, h * 0.95))
    item = item.rotate(rng.uniform(-settings.rotation, settings.rotation), Image.Resampling.BICUBIC, expand=True)
    if max(item.width / w, item.height / h) > 1:  # turned past the frame: shrink to fit
        item.thumbnail((w, h))
    left, top, right, bottom = _paste(scene, item, rng)
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(*settings.blur)))
    out = io.BytesIO()
    scene.save(out, "JPEG", quality=int(rng.integers(settings.quality[0], settings.quality[1] + 1)))
    return Scene(out.getvalue(), (left / w, top / h, right / w, bottom / h), row)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes: the gateway's own ``iou``."""
    return iou(Crop(*a), Crop(*b))

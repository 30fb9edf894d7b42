"""The shopper-photo protocol's scenes (evaluation/scenes.py) and split (evaluation/shopper_photo.py): the same
seed gives the same scenes, a scene's box is where the item was pasted, the halves never share a product."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from evaluation.scenes import SIZE, SceneSettings, box_iou, cut_out, make_scene
from evaluation.shopper_photo import ProtocolSettings, make_scenes, split_rows

MAGENTA = (255, 0, 255)  # never drawn by the backgrounds (their colours stay within 20–234)
PLAIN = SceneSettings(rotation=0.0, light=(1.0, 1.0), contrast=(1.0, 1.0), tint=0.0, blur=(0.0, 0.0),
                      quality=(95, 95), clutter_products=(0, 1))


def studio(colour=MAGENTA, size=(120, 160), item=(30, 40, 90, 120)) -> Image.Image:
    """A studio photo: a plain item on white."""
    photo = Image.new("RGB", size, (255, 255, 255))
    photo.paste(colour, item)
    return photo


def test_cut_out_clears_the_studio_background_and_keeps_the_item():
    alpha = np.asarray(cut_out(studio()).getchannel("A"))
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0 and alpha[80, 60] == 255
    whole = np.asarray(cut_out(Image.new("RGB", (50, 50), (10, 200, 30))).getchannel("A"))
    assert (whole > 128).all()  # no background to clear: the photo is kept whole


def test_the_same_seed_makes_the_same_scene_and_another_seed_another():
    clutter = [studio((0, 120, 0)), studio((0, 0, 120))]
    a = make_scene(studio(), 7, np.random.default_rng(3), clutter)
    b = make_scene(studio(), 7, np.random.default_rng(3), clutter)
    c = make_scene(studio(), 7, np.random.default_rng(4), clutter)
    assert a == b and a.row == 7 and a.jpeg != c.jpeg
    assert Image.open(io.BytesIO(a.jpeg)).size == SIZE


@pytest.mark.parametrize("seed", range(12))
def test_the_box_is_where_the_item_was_pasted(seed):
    scene = make_scene(studio(), 0, np.random.default_rng(seed), [], PLAIN)
    x = np.asarray(Image.open(io.BytesIO(scene.jpeg)).convert("RGB"), np.int16)
    item = (x[..., 0] > 240) & (x[..., 1] < 25) & (x[..., 2] > 240)
    ys, xs = np.nonzero(item)
    w, h = SIZE
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    box_px = np.array(scene.box) * [w, h, w, h]
    assert np.abs(found - box_px).max() <= 4  # pixels: the item's soft, JPEG-compressed edge
    left, top, right, bottom = scene.box
    assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
    long_side = max((right - left) * w, (bottom - top) * h)  # the item is 60 of the photo's 160 px
    assert 0.35 * w * 80 / 160 * 0.95 <= long_side <= 0.55 * w * 80 / 160 * 1.05


def test_box_iou_on_both_sides_of_its_edges():
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0  # touching: no overlap
    assert box_iou((0, 0, 0.5, 1), (0.25, 0, 0.75, 1)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_the_halves_share_no_product_and_scenes_come_from_theirs():
    halves = split_rows(50, seed=1)
    assert not set(halves["tune"]) & set(halves["report"])
    assert sorted(set(halves["tune"]) | set(halves["report"])) == list(range(50))
    photos = {row: studio((row * 5 % 200, 60, 120)) for row in range(50)}
    settings = ProtocolSettings(seed=1, scenes=4, part="tune", clutter_per_scene=(1, 2))
    scenes = make_scenes(lambda row: None if row == 3 else photos[row], 50, settings)
    assert len(scenes) == 4 and all(s.row in set(halves["tune"]) and s.row != 3 for s in scenes)
    assert scenes == make_scenes(lambda row: None if row == 3 else photos[row], 50, settings)
    report = make_scenes(photos.get, 50, ProtocolSettings(seed=1, scenes=4, part="report"))
    assert all(s.row in set(halves["report"]) for s in report)

"""Finding the item in a whole photo (gateway/locate.py and SearchService.locate): the windows, the choice, the
common part, and the service searching the window only when it beats the whole photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gateway.images import MIN_CROP_PX, Crop
from gateway.locate import LocateSettings, _starts, best_window, common_part, iou, other_items, same_item, windows
from gateway.service import OUTLINE, SearchOptions, SearchQuery
from tests.conftest import demo_image


def test_windows_are_squares_of_each_size_reaching_every_edge():
    found = windows(640, 480)
    assert len(found) == 12 + 6 + 4  # 0.55, 0.75 and 0.95 of 480 px, half a side apart
    for crop in found:
        w, h = (crop.right - crop.left) * 640, (crop.bottom - crop.top) * 480
        assert w == pytest.approx(h) and round(w) in (264, 360, 456)
        assert 0 <= crop.left < crop.right <= 1 + 1e-9 and 0 <= crop.top < crop.bottom <= 1 + 1e-9
    assert any(c.right == pytest.approx(1) for c in found) and any(c.bottom == pytest.approx(1) for c in found)
    assert any(c.left == 0 and c.top == 0 for c in found)
    assert len(windows(480, 640)) == 22  # portrait: the same windows, turned
    assert windows(640, 480, LocateSettings(sides=(1.0,))) == [Crop(0, 0, 480 / 640, 1), Crop(160 / 640, 0, 1, 1)]


def test_windows_need_a_photo_four_smallest_crops_a_side():
    assert windows(4 * MIN_CROP_PX - 1, 500) == [] and windows(500, 4 * MIN_CROP_PX - 1) == []
    assert windows(4 * MIN_CROP_PX, 4 * MIN_CROP_PX)


def test_window_starts_are_at_most_a_step_apart_first_at_zero_last_at_the_edge():
    starts = _starts(1000, 200, 0.5)
    assert starts[0] == 0 and starts[-1] == 800 and max(np.diff(starts)) <= 100
    assert _starts(200, 200, 0.5) == [0.0]  # fits exactly: one window
    assert _starts(201, 200, 0.5) == [0.0, 1.0]


def test_the_best_window_must_beat_the_whole_photo():
    assert best_window(80.0, [70.0, 85.0, None, 85.0]) == 1  # the first of equals
    assert best_window(85.0, [70.0, 85.0]) is None  # equal to the whole photo: search the whole
    assert best_window(84.9, [70.0, 85.0]) == 1
    assert best_window(50.0, [None, None]) is None and best_window(50.0, []) is None


def test_the_common_part_of_the_best_windows():
    crops = [Crop(0, 0, 0.6, 0.6), Crop(0.2, 0.1, 0.8, 0.7), Crop(0.1, 0.2, 0.7, 0.8), Crop(0.5, 0.5, 1, 1)]
    assert common_part(crops, [90.0, 89.0, 88.0, 10.0], 3, 1000, 1000) == Crop(0.2, 0.2, 0.6, 0.6)
    assert common_part(crops, [90.0, 89.0, None, None], 3, 1000, 1000) is None  # too few scored
    assert common_part(crops, [90.0, None, None, 89.0], 2, 1000, 1000) == Crop(0.5, 0.5, 0.6, 0.6)
    assert common_part(crops, [90.0, 89.0, None, None], 1, 1000, 1000) is None  # one window has no common part
    side = 4 * MIN_CROP_PX  # the overlap of the last pair is 0.1 of the photo each way
    assert common_part(crops, [90.0, None, None, 89.0], 2, side * 10, side * 10) is not None
    assert common_part(crops, [90.0, None, None, 89.0], 2, side * 10 - 1, side * 10) is None
    assert common_part([Crop(0, 0, 0.4, 0.4), Crop(0.5, 0.5, 1, 1)], [9.0, 8.0], 2, 1000, 1000) is None
    wide = [Crop(0, 0, 1, 0.6), Crop(0, 0.5, 1, 1)]  # an overlap as wide as the photo, a tenth of it high
    assert common_part(wide, [9.0, 8.0], 2, 1000, 640) == Crop(0, 0.5, 1, 0.6)  # 64 px high: enough
    assert common_part(wide, [9.0, 8.0], 2, 1000, 639) is None  # 383 - 320 = 63 px


def busy_scene(pid: str, seed: int = 11) -> tuple[bytes, tuple[float, float, float, float]]:
    from evaluation.scenes import make_scene

    scene = make_scene(Image.open(io.BytesIO(demo_image(pid))), 0, np.random.default_rng(seed))
    return scene.jpeg, scene.box


def test_a_whole_photo_is_searched_where_the_catalog_sees_the_item(client, stub):
    """One item on a busy background, no box drawn: the gateway searches the item, says where, and finds the
    product; the model is asked for the whole photo, every window, their common part and the item's outline."""
    from evaluation.scenes import box_iou

    photo, truth = busy_scene("10109")
    stub.calls = 0
    body = client.post("/api/search", data={"file": (io.BytesIO(photo), "q.jpg"), "threshold": "0"}).get_json()
    assert body["results"][0]["id"] == "10109"
    # the box overlaps the item and holds its centre (the outline of the item, tests/test_outline.py)
    box = body["box"]
    assert box is not None and box_iou(tuple(box), truth) >= 0.5
    assert box[0] <= (truth[0] + truth[2]) / 2 <= box[2] and box[1] <= (truth[1] + truth[3]) / 2 <= box[3]
    # ... and each distinct outline of the item (one per guide at most, and where it looks like any product:
    # gateway/outline.py), from one map
    assert 1 + len(windows(640, 480)) + 1 + 1 <= stub.calls <= 1 + len(windows(640, 480)) + 1 + OUTLINE.guides + 1
    assert stub.maps == 1
    stub.calls = 0  # a refine from the token: no model call, the same box (the page keeps its outline)
    again = client.post("/api/search", json={"query_token": body["query_token"], "threshold": 0, "top_k": 3})
    assert again.get_json()["box"] == box and stub.calls == 0


def test_a_catalog_like_photo_and_a_drawn_box_make_no_extra_model_call(client, stub):
    stub.calls = 0
    body = client.post("/api/search", data={"file": (io.BytesIO(demo_image(10109)), "q.jpg")}).get_json()
    assert body["box"] is None and body["results"][0]["id"] == "10109" and stub.calls == 1  # 100 %: whole
    photo, truth = busy_scene("10109")
    stub.calls = 0
    crop = ",".join(f"{v:.4f}" for v in truth)
    drawn = client.post("/api/search", data={"file": (io.BytesIO(photo), "q.jpg"), "crop": crop}).get_json()
    assert drawn["box"] == [round(v, 4) for v in truth] and stub.calls == 1  # the drawn box, said of the photo
    assert [item["box"] for item in drawn["items"]] == [drawn["box"]]  # one item: the box


def test_locating_can_be_switched_off(small_index, stub, tmp_path):
    from gateway.config import Config
    from gateway.service import SearchService

    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c"),
                               locate_item=False), stub)
    svc.indexes.load()
    photo, _ = busy_scene("10109")
    stub.calls = 0
    found = svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found
    assert found.box is None and stub.calls == 1


def test_a_window_the_model_refuses_is_left_out(small_index, stub, tmp_path):
    from gateway.config import Config
    from gateway.service import SearchService
    from modelio.imaging import ImageError

    class Refusing:
        """Refuses every window (any image but the first it is sent)."""

        def __init__(self) -> None:
            self.seen = 0

        def embed(self, blob: bytes):
            self.seen += 1
            if self.seen > 1:
                raise ImageError("not an image")
            return stub.embed(blob)

        def probe(self) -> str:
            return stub.probe()

    svc = SearchService(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c")),
                        Refusing())
    svc.indexes.load()
    photo, _ = busy_scene("10109")
    found = svc.search(SearchQuery(upload=photo), SearchOptions(threshold=0, top_k=3)).found
    assert found.box is None and found.hits  # the whole photo is searched


# --------------------------------------------------------------------------- the photo's other items


def test_iou_and_same_item_on_both_sides_of_their_limits():
    a = Crop(0, 0, 0.4, 0.4)
    assert iou(a, a) == 1.0 and iou(a, Crop(0.4, 0, 0.8, 0.4)) == 0.0  # edge to edge: nothing shared
    assert iou(a, Crop(0.2, 0, 0.6, 0.4)) == pytest.approx(1 / 3)
    settings = LocateSettings(overlap=0.5, inside=0.7)
    assert same_item(a, Crop(0.1, 0, 0.5, 0.4), settings)  # IoU 0.6
    assert not same_item(a, Crop(0.2, 0, 0.6, 0.4), settings)  # IoU 1/3, half of each inside the other
    assert same_item(Crop(0, 0, 1, 1), Crop(0.3, 0.3, 0.5, 0.5), settings)  # a small one inside a big one
    exact = Crop(0.0, 0.0, 0.5, 0.5)  # inside by exactly 0.7 of its area, and by just under
    assert same_item(Crop(0.15, 0, 1, 1), exact, settings) and not same_item(Crop(0.1501, 0, 1, 1), exact, settings)


def test_other_items_are_close_elsewhere_and_of_other_products_best_first():
    crops = [Crop(0, 0, 0.4, 0.4), Crop(0.6, 0, 1, 0.4), Crop(0, 0.6, 0.4, 1), Crop(0.6, 0.6, 1, 1),
             Crop(0.05, 0.05, 0.45, 0.45), Crop(0.3, 0.3, 0.7, 0.7)]
    searched, settings = crops[0], LocateSettings(items=4)
    scores = [90.0, 70.0, 80.0, 60.0, 95.0, None]
    products = [1, 2, 3, 4, 5, 6]
    # 4 overlaps the searched one; 5 is not scored; the rest best first, down to exactly ``least``
    assert other_items(crops, scores, products, searched, 1, 60.0, settings) == [2, 1, 3]
    assert other_items(crops, scores, products, searched, 1, 60.01, settings) == [2, 1]  # 60 is under
    assert other_items(crops, scores, products, searched, 1, 60.0, LocateSettings(items=3)) == [2, 1]  # the cap
    assert other_items(crops, scores, products, searched, 1, 60.0, LocateSettings(items=1)) == []
    # a window whose closest product is the searched one's, or an item's already, is that item seen again
    assert other_items(crops, scores, [1, 2, 1, 2, 5, 6], searched, 1, 60.0, settings) == [1]
    assert other_items(crops, [None] * 6, products, searched, 1, 0.0, settings) == []


def two_item_scene() -> bytes:
    """A watch (10109) on the left and a handbag (10229) on the right of a made-up room."""
    from evaluation.scenes import background, cut_out

    canvas = background(np.random.default_rng(3), (640, 480)).convert("RGB")
    for pid, left in (("10109", 40), ("10229", 370)):
        item = cut_out(Image.open(io.BytesIO(demo_image(pid))).convert("RGB")).resize((230, 230))
        canvas.paste(item, (left, 120), item if item.mode == "RGBA" else None)
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_every_item_of_a_photo_and_picking_one_from_the_token_with_no_model_call(client, stub):
    stub.calls = 0
    body = client.post("/api/search", data={"file": (io.BytesIO(two_item_scene()), "q.jpg"), "top_k": "3",
                                            "threshold": "0"}).get_json()
    assert body["results"][0]["id"] == "10109"
    # (+ a common part, + the item's outlines)
    assert 1 + len(windows(640, 480)) <= stub.calls <= 1 + len(windows(640, 480)) + 1 + OUTLINE.guides
    items = body["items"]
    assert [item["category"] for item in items] == ["Watches", "Handbags"] and items[0]["box"] == body["box"]
    assert items[0]["box"][2] <= 0.5 <= items[1]["box"][0]  # the watch on the left, the bag on the right
    stub.calls = 0
    bag = client.post("/api/search", json={"query_token": body["query_token"], "item": 1, "top_k": 3,
                                           "threshold": 0}).get_json()
    assert stub.calls == 0 and bag["results"][0]["id"] == "10229" and bag["box"] == items[1]["box"]
    assert bag["items"] == [items[1], items[0]]  # the picked one first; the watch is now the other item
    back = client.post("/api/search", json={"query_token": bag["query_token"], "item": 1, "top_k": 3,
                                            "threshold": 0}).get_json()
    assert stub.calls == 0 and back["results"][0]["id"] == "10109" and back["items"] == items
    same = client.post("/api/search", json={"query_token": body["query_token"], "item": 0, "top_k": 3,
                                            "threshold": 0}).get_json()
    assert same["results"] == body["results"] and same["items"] == items  # item 0: the searched one again


@pytest.mark.parametrize(("item", "status", "error"), [
    (2, 400, "that item is not in this search any more: choose it on the photo again"),  # two items: 0 and 1
    (4, 400, "item must be between 0 and 3, got 4"),
    (-1, 400, "item must be between 0 and 3, got -1"),
    ("x", 400, "item must be a whole number between 0 and 3, got 'x'"),
])
def test_an_item_the_token_does_not_have_is_refused_in_words(client, item, status, error):
    body = client.post("/api/search", data={"file": (io.BytesIO(two_item_scene()), "q.jpg")}).get_json()
    assert len(body["items"]) == 2
    out = client.post("/api/search", json={"query_token": body["query_token"], "item": item})
    assert out.status_code == status and out.get_json()["error"] == error


def test_a_photo_searched_whole_is_one_item_the_whole_photo(client):
    body = client.post("/api/search", data={"file": (io.BytesIO(demo_image(10109)), "q.jpg")}).get_json()
    assert body["items"] == [{"box": [0.0, 0.0, 1.0, 1.0], "category": "Watches"}] and body["box"] is None

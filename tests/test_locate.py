"""Finding the item in a whole photo (gateway/locate.py and SearchService.locate): the windows, the choice, the
common part, and the service searching the window only when it beats the whole photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gateway.images import MIN_CROP_PX, Crop
from gateway.locate import LocateSettings, _starts, best_window, common_part, windows
from gateway.service import SearchOptions, SearchQuery
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
    """One item on a busy background, no box drawn: the gateway searches a window around it, says which, and
    finds the product; the model is asked for the whole photo, every window and their common part."""
    from evaluation.scenes import box_iou

    photo, truth = busy_scene("10109")
    stub.calls = 0
    body = client.post("/api/search", data={"file": (io.BytesIO(photo), "q.jpg"), "threshold": "0"}).get_json()
    assert body["results"][0]["id"] == "10109"
    # the box overlaps the item and holds its centre (IoU >= 0.5 is reached in 38 % of the protocol's scenes,
    # docs/QUALITY.md: the 85 % is not met by this method)
    box = body["box"]
    assert box is not None and box_iou(tuple(box), truth) >= 0.3
    assert box[0] <= (truth[0] + truth[2]) / 2 <= box[2] and box[1] <= (truth[1] + truth[3]) / 2 <= box[3]
    assert stub.calls == 1 + len(windows(640, 480)) + 1
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
    assert drawn["box"] is None and stub.calls == 1


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

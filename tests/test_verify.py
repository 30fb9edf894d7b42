"""The very product confirmed by its details: local features (localfeatures/sift.py), the rule that reads
their counts (ranking/verify.py), the pin it gives the ranking (ranking/rank.py), the version's keypoint files
(gateway/index.py, catalog/local_features.py) and the service that puts them together (gateway/service.py)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw

from catalog.fetch import ImageSource
from catalog.local_features import manifest_entry, row_features, write_local_features
from gateway.config import Config
from gateway.images import Crop
from gateway.index import KeypointRows
from gateway.query_token import MAX_PINNED_CHARS, ExpiredQuery, Query, QueryTokens
from gateway.service import SearchOptions, SearchQuery, SearchService
from indexstore.store import (
    LOCAL_COUNTS,
    LOCAL_DESCRIPTORS,
    LOCAL_POINTS,
    IndexData,
    open_store,
    write_and_publish,
)
from localfeatures.sift import (
    DESCRIPTOR_BYTES,
    KEYPOINTS,
    MIN_MATCHES,
    NONE,
    RANSAC_PIXELS,
    SIDE,
    LocalFeatures,
    described_size,
    extract,
    inliers,
    inliers_each,
    placement,
)
from ranking import RankingView, RankOptions, rank_query
from ranking.appearance import histogram_of
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import CategoryVote, Grouping
from ranking.verify import VerifySettings, confirmed, lifted, strongest, weight
from search import ExactSearch

# --------------------------------------------------------------------------- made-up products with details


def product(seed: int, size: int = 200) -> Image.Image:
    """A studio photo of a made-up product: a white background and a patterned item with many corners."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 20, size - 20, size - 20), fill=tuple(int(v) for v in rng.integers(60, 200, 3)))
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(25, size - 45, 2))
        w, h = (int(v) for v in rng.integers(6, 22, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x, y, x + w, y + h), fill=colour)
    return img


def shopper_photo(item: Image.Image, seed: int) -> tuple[bytes, Crop]:
    """``item`` turned, made smaller and pasted on a busy background, as a JPEG; and its box."""
    rng = np.random.default_rng(seed)
    scene = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((640, 480), Image.NEAREST)
    turned = item.rotate(10, expand=True, fillcolor=(255, 255, 255)).resize((180, 180))
    scene.paste(turned, (300, 150))
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=85)
    return buf.getvalue(), Crop(300 / 640, 150 / 480, 480 / 640, 330 / 480)


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- local features


def test_the_same_product_elsewhere_fits_and_another_does_not():
    data, box = shopper_photo(product(1), seed=5)
    scene = Image.open(io.BytesIO(data))
    query = extract(scene.crop(box.box(*scene.size)))
    same, other = inliers(query, extract(product(1))), inliers(query, extract(product(2)))
    assert same >= 20 and other < 8, (same, other)


def test_at_most_the_strongest_keypoints_are_kept_as_bytes():
    features = extract(product(3, size=400))
    assert 0 < len(features) <= KEYPOINTS
    assert features.descriptors.dtype == np.uint8 and features.descriptors.shape == (len(features), DESCRIPTOR_BYTES)
    assert features.points.dtype == np.float32 and features.points.shape == (len(features), 2)


def test_a_busy_photo_keeps_exactly_the_keypoints_allowed():
    rng = np.random.default_rng(0)
    busy = Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.NEAREST)
    assert len(extract(busy)) == KEYPOINTS


def test_a_large_photo_is_described_at_the_side_and_a_small_one_as_it_is():
    big = extract(product(3, size=4 * SIDE))
    assert big.points.max() < SIDE  # brought down to SIDE pixels first
    small = extract(product(3, size=SIDE // 2))
    assert small.points.max() < SIDE // 2 and small.points.max() > SIDE // 4  # not enlarged


def test_a_flat_photo_has_no_keypoints_and_fits_nothing():
    flat = extract(Image.new("RGB", (100, 100), (120, 120, 120)))
    assert len(flat) == 0
    assert inliers(flat, extract(product(1))) == 0 and inliers(extract(product(1)), NONE) == 0


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("counts", "expected"), [
    ([], None),
    ([0, 0, 0], None),
    ([3, 10, 5], 1),  # exactly the least evidence and exactly twice the next: confirmed
    ([3, 9, 4], None),  # one inlier short
    ([3, 10, 6], None),  # the next one too close: below twice
    ([10], 0),  # alone: twice nothing (taken as 1)
    ([12, 12], None),  # a tie is no confirmation
    ([4, 2, 31, 15], 2),
])
def test_confirmed_at_the_limits(counts, expected):
    assert confirmed(counts, VerifySettings(min_inliers=10, lead=2.0)) == expected


def test_the_lead_is_measured_against_the_best_other_candidate_not_the_next_in_order():
    settings = VerifySettings(min_inliers=10, lead=2.0)
    assert confirmed([9, 20, 1], settings) == 1  # 20 ≥ 2 × 9
    assert confirmed([11, 20, 1], settings) is None  # 20 < 2 × 11, though 11 comes before it
    assert confirmed([1, 20, 11], settings) is None  # and after it
    one = VerifySettings(min_inliers=1, lead=2.0)  # nothing else fits: the lead is over 1, not over 0
    assert confirmed([1, 0], one) is None and confirmed([2, 0], one) == 0


# --------------------------------------------------------------------------- the pin in the ranking

SCALE = Calibration(UNCALIBRATED)


def _view(labels: list[str], degrees: list[float], prices=None) -> RankingView:
    r = np.radians(degrees)
    x = np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)
    grouping = Grouping.from_labels(labels, SCALE.percent, CategoryVote(k=2, temperature=1e9))
    return RankingView(ExactSearch(x, grouping.codes), grouping, SCALE,
                       prices=None if prices is None else np.array(prices, dtype=np.float64))


QUERY = np.array([1.0, 0.0], np.float32)
LABELS = ["Shoes", "Shoes", "Shoes", "Bags", "Bags"]
DEGREES = [0, 10, 20, 40, 60]  # the Shoes are closest; the confirmed product is a Bag


def test_the_pinned_product_comes_first_with_its_category_and_the_order_of_the_numbers_holds():
    view = _view(LABELS, DEGREES)
    plain = rank_query(view, QUERY, RankOptions(0.0, 5))
    assert plain.rows[0] == 0 and plain.guess.category == "Shoes"
    pinned = rank_query(view, QUERY, RankOptions(0.0, 5), pinned=4)
    assert pinned.rows == [4, 3, 0, 1, 2]  # its category ranked first behind it
    assert pinned.guess.category == "Bags" and pinned.first_group == 2
    assert pinned.matches[0] == pytest.approx(pinned.matches[1])  # raised to the first's, never above it
    assert pinned.similarities[0] == pytest.approx(100 * np.cos(np.radians(60)), abs=1e-4)  # its own similarity
    assert all(a >= b for a, b in zip(pinned.matches, pinned.matches[1:], strict=False))


def test_a_pin_by_similarity_alone_keeps_the_rest_in_the_cnns_order():
    pinned = rank_query(_view(LABELS, DEGREES), QUERY, RankOptions(0.0, 5, category_first=False), pinned=3)
    assert pinned.rows == [3, 0, 1, 2, 4] and pinned.guess is None
    assert pinned.matches[0] == pytest.approx(100.0)


def test_later_pages_continue_the_pinned_order_without_repeating_it():
    view = _view(LABELS, DEGREES)
    whole = rank_query(view, QUERY, RankOptions(0.0, 5), pinned=4).rows
    pages = [rank_query(view, QUERY, RankOptions(0.0, 2, offset=at), pinned=4).rows for at in (0, 2, 4)]
    assert sum(pages, []) == whole


@pytest.mark.parametrize(("options", "pinned_first"), [
    (RankOptions(0.0, 5, category="Shoes"), False),  # the shopper's filter leaves it out
    (RankOptions(0.0, 5, category="Bags"), True),
    (RankOptions(0.0, 5, min_price=0.0, max_price=4.0), False),  # its price is 5
    (RankOptions(0.0, 5, min_price=0.0, max_price=5.0), True),
    (RankOptions(51.0, 5), False),  # below the threshold: cos 60° is 50 %
    (RankOptions(49.0, 5), True),
])
def test_a_pin_the_filter_or_threshold_leaves_out_is_not_shown(options, pinned_first):
    view = _view(LABELS, DEGREES, prices=[1.0, 2.0, 3.0, 4.0, 5.0])
    ranked = rank_query(view, QUERY, options, pinned=4)
    assert (ranked.rows[:1] == [4]) == pinned_first
    assert (4 in ranked.rows) == pinned_first  # each of these also leaves it out of the list


def test_a_pin_outside_the_index_is_ignored():
    view = _view(LABELS, DEGREES)
    assert rank_query(view, QUERY, RankOptions(0.0, 5), pinned=99).rows == rank_query(
        view, QUERY, RankOptions(0.0, 5)).rows


# --------------------------------------------------------------------------- the version's keypoint files


def _keypoint_arrays(features: list[LocalFeatures]) -> list[np.ndarray]:
    n = len(features)
    descriptors = np.zeros((n, KEYPOINTS, DESCRIPTOR_BYTES), np.uint8)
    points = np.zeros((n, KEYPOINTS, 2), np.float16)
    counts = np.zeros(n, np.uint16)
    for row, f in enumerate(features):
        descriptors[row, :len(f)], points[row, :len(f)], counts[row] = f.descriptors, f.points, len(f)
    return [descriptors, points, counts]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class Client:
    """The model: every photo's vector is the same, closest to product 0."""

    backbone = "fixed-4d"

    def embed(self, blob: bytes):
        return np.array([1.0, 0.05, 0.0, 0.0], np.float32), self.backbone

    def probe(self) -> str:
        return self.backbone


PRODUCTS = [{"id": f"p{i}", "name": f"p{i}", "category": "Shoes" if i < 3 else "Bags"} for i in range(6)]
VECTORS = np.array([[1, 0, 0, 0], [0.9, 0.3, 0, 0], [0.8, 0.5, 0, 0], [0.7, 0.7, 0, 0], [0.6, 0.8, 0, 0],
                    [0.5, 0.8, 0.3, 0]], np.float32)


def _publish(tmp_path, arrays: list[np.ndarray] | None, descriptor: str | None = None,
             products: list[dict] = PRODUCTS) -> Config:
    x = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    manifest = {"backbone": Client.backbone}
    extra = {}
    if arrays is not None:
        manifest["local_features"] = {**manifest_entry(), **({"descriptor": descriptor} if descriptor else {})}
        extra = {name: _npy(a) for name, a in zip((LOCAL_DESCRIPTORS, LOCAL_POINTS, LOCAL_COUNTS), arrays,
                                                   strict=True)}
    write_and_publish(open_store(tmp_path / "index"), IndexData(x, products, manifest), extra)
    return Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "c"))


def _service(config: Config) -> SearchService:
    svc = SearchService(config, Client())
    svc.indexes.load()
    return svc


def _all_features() -> list[LocalFeatures]:
    return [extract(product(10 + i)) for i in range(len(PRODUCTS))]


def test_a_cropped_photo_of_a_product_the_cnn_ranks_fourth_comes_back_first(tmp_path):
    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    data, box = shopper_photo(product(13), seed=7)  # product p3's details
    answer = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6))
    assert [h.product["id"] for h in answer.found.hits][:1] == ["p3"] and answer.found.pinned == "p3"
    matches = [h.match for h in answer.found.hits]
    assert all(a >= b for a, b in zip(matches, matches[1:], strict=False))
    # the query token keeps the pin: "Show more" continues the same order, a new threshold keeps it first
    more = svc.search(SearchQuery(token=answer.token), SearchOptions(0.0, 3, offset=3)).found
    first = svc.search(SearchQuery(token=answer.token), SearchOptions(0.0, 3)).found
    assert [h.product["id"] for h in first.hits + more.hits] == [h.product["id"] for h in answer.found.hits]
    assert answer.found.confirmed and first.confirmed  # still the very product, not only lifted


def test_without_keypoint_files_the_cnns_order_stands(tmp_path):
    svc = _service(_publish(tmp_path, None))
    data, box = shopper_photo(product(13), seed=7)
    found = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6)).found
    assert found.hits[0].product["id"] == "p0" and found.pinned == ""


def test_keypoints_of_another_descriptor_are_not_used(tmp_path):
    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features()), descriptor="orb-v0"))
    assert svc.require_index().keypoints is None
    data, box = shopper_photo(product(13), seed=7)
    assert svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6)).found.pinned == ""


def test_a_failing_check_leaves_the_cnns_answer(tmp_path, monkeypatch, caplog):
    import localfeatures.sift as lf

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))

    def broken(*args):
        raise lf.cv2.error("simulated OpenCV failure")

    monkeypatch.setattr(lf, "inliers_each", broken)
    data, box = shopper_photo(product(13), seed=7)
    found = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6)).found
    assert found.hits[0].product["id"] == "p0" and found.pinned == ""
    assert "local-feature check failed" in caplog.text


@pytest.mark.parametrize("corrupt", [
    lambda a: a.__setitem__(0, a[0][:, :, :64]),  # descriptors of another width
    lambda a: a.__setitem__(1, a[1].astype(np.float32)),  # points of another type
    lambda a: a.__setitem__(2, a[2][:-1]),  # a count short
])
def test_keypoint_files_that_do_not_fit_the_index_are_refused(tmp_path, corrupt):
    arrays = _keypoint_arrays(_all_features())
    corrupt(arrays)
    svc = _service(_publish(tmp_path, arrays))
    assert svc.indexes.current is None and "keypoint files do not match" in svc.indexes.error


def test_a_row_with_impossible_keypoints_has_none_and_the_others_still_count():
    arrays = _keypoint_arrays([extract(product(1)), extract(product(2)), extract(product(3))])
    arrays[2][0] = KEYPOINTS + 1  # more than the width
    arrays[1][1, 0, 0] = np.nan
    rows = KeypointRows(*arrays)
    assert len(rows.features(0)) == 0 and len(rows.features(1)) == 0 and len(rows.features(-1)) == 0
    assert len(rows.features(3)) == 0  # past the end
    assert len(rows.features(2)) == int(arrays[2][2]) > 0
    arrays[2][0] = KEYPOINTS  # exactly the width is fine
    assert len(KeypointRows(*arrays).features(0)) == KEYPOINTS


def test_the_pass_writes_each_row_and_a_photo_gone_since_has_none(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    for i in range(3):
        product(20 + i).save(tmp_path / "img" / f"{i}.jpg")
    rows = [{"id": str(i), "image_url": f"img/{i}.jpg"} for i in range(4)]  # the fourth photo is not there
    paths = write_local_features(rows, ImageSource(tmp_path, tmp_path / "cache"), tmp_path, workers=2)
    descriptors, points, counts = (np.load(paths[name]) for name in (LOCAL_DESCRIPTORS, LOCAL_POINTS, LOCAL_COUNTS))
    assert descriptors.shape == (4, KEYPOINTS, DESCRIPTOR_BYTES) and points.shape == (4, KEYPOINTS, 2)
    expected = extract(Image.open(tmp_path / "img" / "1.jpg"))
    assert int(counts[1]) == len(expected) and np.array_equal(descriptors[1, :len(expected)], expected.descriptors)
    assert counts[3] == 0 and "no keypoints for product 3" in caplog.text
    assert len(row_features(ImageSource(tmp_path, tmp_path / "cache"), {"id": "x", "image_url": "img/9.jpg"})) == 0


# --------------------------------------------------------------------------- the token


def test_a_token_carries_its_pin_and_refuses_a_too_long_one():
    tokens = QueryTokens("k", ttl_s=60)
    query = Query(np.ones(4, np.float32), "b", pinned="p" * MAX_PINNED_CHARS)
    assert tokens.verify(tokens.issue(query)).pinned == "p" * MAX_PINNED_CHARS
    assert tokens.verify(tokens.issue(Query(np.ones(4, np.float32), "b"))).pinned == ""
    with pytest.raises(ValueError):
        tokens.issue(Query(np.ones(4, np.float32), "b", pinned="p" * (MAX_PINNED_CHARS + 1)))


def test_the_photos_keypoints_are_extracted_while_the_model_works_and_dropped_when_it_fails(tmp_path):
    import threading

    from modelserver.client import ModelServerError

    config = _publish(tmp_path, _keypoint_arrays(_all_features()))
    started = threading.Event()

    class Waiting(Client):
        def embed(self, blob: bytes):
            self.extracted_first = started.wait(5)
            return super().embed(blob)

    svc = SearchService(config, Waiting())
    svc.indexes.load()
    real_submit = svc.side_work.submit

    def submit(fn, *args):
        if fn.__name__ == "extract":
            started.set()
        return real_submit(fn, *args)

    svc.side_work.submit = submit
    data, box = shopper_photo(product(13), seed=7)
    found = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6)).found
    assert svc.client.extracted_first and found.pinned == "p3"

    class Down(Client):
        def embed(self, blob: bytes):
            raise ModelServerError("embedding service unreachable")

    down = SearchService(config, Down())
    down.indexes.load()
    queued = []

    class QueuedOnly:
        def submit(self, fn, *args):
            from concurrent.futures import Future

            queued.append(Future())
            return queued[-1]

    down.side_work = QueuedOnly()
    with pytest.raises(ModelServerError):
        down.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6))
    assert len(queued) == 2 and all(f.cancelled() for f in queued)  # the keypoints and the histogram


def test_the_page_and_the_api_name_the_confirmed_product(tmp_path):
    from gateway import create_app

    app = create_app(_publish(tmp_path, _keypoint_arrays(_all_features())), client=Client()).test_client()
    data, box = shopper_photo(product(13), seed=7)
    crop = ",".join(f"{v:.4f}" for v in box.fractions())
    body = app.post("/api/search", data={"file": (io.BytesIO(data), "q.jpg"), "crop": crop, "threshold": "0"},
                    content_type="multipart/form-data").get_json()
    assert body["confirmed"] == "p3" and body["results"][0]["id"] == "p3"
    page = app.post("/search", data={"file": (io.BytesIO(data), "q.jpg"), "crop": crop, "threshold": "0"},
                    content_type="multipart/form-data").get_data(as_text=True)
    assert page.count("Details match") == 1 and page.index("Details match") < page.index(">p0<")
    plain = create_app(_publish(tmp_path / "plain", None), client=Client()).test_client()
    body = plain.post("/api/search", data={"file": (io.BytesIO(data), "q.jpg"), "crop": crop, "threshold": "0"},
                      content_type="multipart/form-data").get_json()
    assert body["confirmed"] is None and "Details match" not in plain.post(
        "/search", data={"file": (io.BytesIO(data), "q.jpg"), "crop": crop, "threshold": "0"},
        content_type="multipart/form-data").get_data(as_text=True)


def test_all_candidates_at_once_count_as_each_one_alone_and_short_ones_count_nothing():
    data, box = shopper_photo(product(1), seed=5)
    scene = Image.open(io.BytesIO(data))
    query = extract(scene.crop(box.box(*scene.size)))
    one = LocalFeatures(query.points[:1], query.descriptors[:1])
    candidates = [extract(product(1)), NONE, extract(product(2)), one, extract(product(1, size=150))]
    together = inliers_each(query, candidates)
    alone = [inliers_each(query, [c])[0] for c in candidates]
    assert together[1] == together[3] == 0  # no keypoints, one keypoint: nothing to fit
    assert together[0] >= 20 and together[4] >= 6 and together[2] < 6
    # RANSAC draws at random: the same evidence within a few inliers either way, never bit for bit
    assert all(abs(a - b) <= max(3, 0.2 * b) for a, b in zip(together, alone, strict=True)), (together, alone)
    assert inliers_each(one, candidates) == [0] * len(candidates) and inliers_each(query, []) == []


@pytest.mark.parametrize(("length", "carried"), [(MAX_PINNED_CHARS, True), (MAX_PINNED_CHARS + 1, False)])
def test_a_product_id_too_long_for_a_token_is_confirmed_on_the_first_page_only(tmp_path, length, carried):
    long_id = "x" * length
    products = [dict(p, id=long_id) if p["id"] == "p3" else p for p in PRODUCTS]
    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features()), products=products))
    data, box = shopper_photo(product(13), seed=7)
    answer = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6))
    assert answer.found.pinned == long_id and answer.found.hits[0].product["id"] == long_id
    again = svc.search(SearchQuery(token=answer.token), SearchOptions(0.0, 6)).found
    assert (again.hits[0].product["id"] == long_id) == carried and (again.pinned == long_id) == carried


def test_with_no_lead_asked_a_tie_goes_to_the_cnns_better_candidate():
    assert confirmed([3, 10, 10], VerifySettings(min_inliers=1, lead=1.0)) == 1


# --------------------------------------------------------------------------- details that lift without confirming


@pytest.mark.parametrize(("similarities", "counts", "expected"), [
    ([], [], None),
    ([90.0], [40], None),  # the CNN's first alone: nothing to lift it above
    ([90.0, 88.0], [0, 1], None),  # 88 + 2 · 1 = 90: a tie keeps the CNN's order
    ([90.0, 88.0], [0, 2], 1),  # 92 > 90
    ([90.0, 88.0], [1, 2], None),  # the first's own inliers count too: 92 = 92
    ([90.0, 88.0, 80.0], [0, 2, 7], 2),  # the highest score: 80 + 14 = 94 against 92
    ([90.0, 88.0, 80.0], [0, 2, 6], 1),  # 92 against 92: the CNN's better of the two
    ([90.0, 88.0, 80.0], [0, 3, 6], 1),  # 94 beats 92
])
def test_lifted_at_the_limits(similarities, counts, expected):
    assert lifted(similarities, counts, VerifySettings(weight=2.0)) == expected


def test_no_weight_lifts_nothing_and_lists_that_disagree_are_an_error():
    assert lifted([90.0, 10.0], [0, 100], VerifySettings(weight=0.0)) is None
    with pytest.raises(ValueError):
        lifted([90.0, 88.0], [0], VerifySettings(weight=2.0))


def test_a_match_counts_only_when_both_keypoints_are_each_others_nearest():
    """Each of the candidate's keypoints twice in the query at the same place, once as it is and once a little
    changed: without the mutual check both copies pass the ratio test (the candidate has no second look-alike)
    and fit; with it, only the copy that is the candidate keypoint's nearest."""
    rng = np.random.default_rng(3)
    n = 30
    candidate = LocalFeatures(rng.uniform(0, 200, (n, 2)).astype(np.float32),
                              rng.integers(0, 256, (n, DESCRIPTOR_BYTES)).astype(np.uint8))
    changed = candidate.descriptors.copy()
    changed[:, :8] = np.clip(changed[:, :8].astype(np.int16) + 9, 0, 255).astype(np.uint8)
    doubled = LocalFeatures(np.repeat(candidate.points, 2, axis=0),
                            np.stack([candidate.descriptors, changed], axis=1).reshape(2 * n, DESCRIPTOR_BYTES))
    assert inliers(candidate, candidate) == n
    assert inliers(doubled, candidate) == n


def _stub_details(monkeypatch, counts: list[int], weight: float) -> None:
    """Every candidate's inliers are ``counts`` (the CNN's order); each is worth ``weight`` points."""
    import gateway.service as service
    import localfeatures.sift as lf

    monkeypatch.setattr(lf, "inliers_each", lambda query, candidates: counts[:len(candidates)])
    monkeypatch.setattr(service, "VERIFY", VerifySettings(min_inliers=6, lead=2.0, weight=weight))


def _lift_service(tmp_path, monkeypatch, counts: list[int], weight: float) -> SearchService:
    _stub_details(monkeypatch, counts, weight)
    return _service(_publish(tmp_path, _keypoint_arrays(_all_features())))


def _gap(svc: SearchService) -> float:
    """The calibrated similarity between the CNN's first (p0) and second (p1) candidates for Client's vector."""
    from gateway.service import _nearest

    index = svc.require_index()
    ranked = _nearest(index, Client().embed(b"")[0], 2)
    assert [index.products[r]["id"] for r in ranked.rows] == ["p0", "p1"]
    return ranked.similarities[0] - ranked.similarities[1]


@pytest.mark.parametrize(("margin", "lifts"), [(1.01, True), (0.99, False)])
def test_a_candidate_lifted_by_its_details_comes_first_without_the_badge(tmp_path, monkeypatch, margin, lifts):
    probe = _lift_service(tmp_path / "probe", monkeypatch, [0] * 6, 1.0)
    weight = margin * _gap(probe) / 5  # p1's 5 inliers (short of the 6 that confirm) worth the gap, or just not
    svc = _lift_service(tmp_path, monkeypatch, [0, 5, 0, 0, 0, 0], weight)
    data, box = shopper_photo(product(11), seed=7)
    answer = svc.search(SearchQuery(upload=data, crop=box), SearchOptions(0.0, 6))
    ids = [h.product["id"] for h in answer.found.hits]
    assert (ids[0] == "p1") == lifts and (answer.found.pinned == "p1") == lifts and not answer.found.confirmed
    matches = [h.match for h in answer.found.hits]
    assert all(a >= b for a, b in zip(matches, matches[1:], strict=False))
    again = svc.search(SearchQuery(token=answer.token), SearchOptions(0.0, 6)).found
    assert [h.product["id"] for h in again.hits] == ids and not again.confirmed


def test_the_api_names_a_lifted_product_but_does_not_call_it_confirmed(tmp_path, monkeypatch):
    from gateway import create_app

    _stub_details(monkeypatch, [0, 5, 0, 0, 0, 0], 1000.0)
    app = create_app(_publish(tmp_path, _keypoint_arrays(_all_features())), client=Client()).test_client()
    data, box = shopper_photo(product(11), seed=7)
    form = {"crop": ",".join(f"{v:.4f}" for v in box.fractions()), "threshold": "0"}
    body = app.post("/api/search", data={"file": (io.BytesIO(data), "q.jpg"), **form},
                    content_type="multipart/form-data").get_json()
    assert body["results"][0]["id"] == "p1" and body["confirmed"] is None and body["first_by_details"] == "p1"
    page = app.post("/search", data={"file": (io.BytesIO(data), "q.jpg"), **form},
                    content_type="multipart/form-data").get_data(as_text=True)
    assert "Details match" not in page
    _stub_details(monkeypatch, [0, 9, 0, 0, 0, 0], 1000.0)  # 6 or more and twice any other's: confirmed
    confirmed_body = create_app(_publish(tmp_path / "c", _keypoint_arrays(_all_features())), client=Client())
    body = confirmed_body.test_client().post("/api/search", data={"file": (io.BytesIO(data), "q.jpg"), **form},
                                             content_type="multipart/form-data").get_json()
    assert body["confirmed"] == "p1" and body["first_by_details"] == "p1"


def test_a_token_says_whether_its_pin_was_confirmed_and_refuses_a_claim_without_a_pin():
    import json
    import struct

    tokens = QueryTokens("k", ttl_s=60)
    vector = np.ones(4, np.float32)
    for confirmed_ in (True, False):
        query = tokens.verify(tokens.issue(Query(vector, "b", pinned="p1", confirmed=confirmed_)))
        assert query.pinned == "p1" and query.confirmed is confirmed_
    head = {"b": "b", "u": "", "d": "", "e": 2**40, "n": 4}
    sealed = lambda extra: tokens._seal(struct.pack("<H", len(raw := json.dumps({**head, **extra}).encode()))  # noqa: E731
                                        + raw + vector.tobytes())
    assert tokens.verify(sealed({"p": "p1", "c": 1})).confirmed
    assert not tokens.verify(sealed({"p": "p1", "c": 0})).confirmed
    for bad in ({"c": 1}, {"p": "p1", "c": 2}, {"p": "p1", "c": True}, {"p": "p1", "c": "1"}):
        with pytest.raises(ExpiredQuery):
            tokens.verify(sealed(bad))


# --------------------------------------------------------------------------- other boxes of the photo as rivals


@pytest.mark.parametrize(("checks", "lead", "expected"), [
    ([([90.0], [0])], 0.0, 0),  # one search: itself
    ([([90.0, 80.0], [0, 5]), ([95.0], [0])], 0.0, 1),  # 95 against the first's best, 90 (80 + 2 · 5)
    ([([90.0], [0]), ([88.0], [1])], 0.0, 0),  # 90 = 90: a tie keeps the first (the box searched first)
    ([([90.0], [0]), ([88.0], [2])], 0.0, 1),  # 92 > 90
    ([([90.0], [0]), ([88.0], [2])], 2.0, 0),  # 92 leads by 2, the lead asked: not more
    ([([90.0], [0]), ([88.0], [3])], 2.0, 1),  # 94 leads by 4
    ([([90.0], [0]), ([88.0], [2]), ([70.0], [20])], 0.0, 2),  # the strongest of three
    ([([90.0], [0]), ([], [])], 0.0, 0),  # a search with no candidates holds nothing
])
def test_the_search_whose_details_weigh_most_is_answered(checks, lead, expected):
    assert strongest(checks, VerifySettings(weight=2.0, rival_lead=lead)) == expected


def test_a_searchs_weight_is_its_best_candidates_similarity_and_inliers():
    assert weight([90.0, 80.0, 70.0], [0, 6, 3], VerifySettings(weight=2.0)) == 92.0
    assert weight([], [], VerifySettings()) == float("-inf")
    with pytest.raises(ValueError):
        weight([90.0], [1, 2], VerifySettings())


def _rival_service(tmp_path, monkeypatch, counts_by_box: dict) -> SearchService:
    """A keypoint index whose candidates' inliers depend only on the box searched (``counts_by_box``)."""
    import gateway.service as service

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    monkeypatch.setattr(service, "VERIFY", VerifySettings(weight=100.0))  # an inlier outweighs these made-up gaps

    def details(self, index, photo, search, keys):
        from gateway.service import _nearest

        nearest = _nearest(index, search.vector, service.VERIFY.candidates)
        return nearest, counts_by_box[search.box][:len(nearest.rows)]

    monkeypatch.setattr(service.SearchService, "_details", details)
    return svc


@pytest.mark.parametrize(("rival_counts", "answered"), [([0, 0, 0, 9, 0, 0], "rival"), ([0] * 6, "found")])
def test_another_box_of_the_photo_is_answered_when_its_details_weigh_more(tmp_path, monkeypatch, rival_counts,
                                                                          answered):
    """Of the searched box and a rival box (the any-product outline), the one whose candidates the details hold
    more strongly is answered, box, pin and all; with nothing in the rival's details the searched box stands."""
    from gateway.images import QueryImage

    near, far = Crop(0.1, 0.1, 0.5, 0.5), Crop(0.4, 0.4, 0.9, 0.9)
    svc = _rival_service(tmp_path, monkeypatch, {near: [0] * 6, far: rival_counts})
    data, _ = shopper_photo(product(13), seed=7)
    options = SearchOptions(0.0, 6)
    vector, model = Client().embed(data)
    found = replace_box(svc.search_vector(vector, model, options), near)
    rival = replace_box(svc.search_vector(vector, model, options), far)
    photo = QueryImage.decode(data, 10_000_000)
    out = svc.confirmed(photo, found, options, rivals=(rival,))
    if answered == "rival":
        assert out.box == far and out.pinned == "p3" and out.confirmed and out.hits[0].product["id"] == "p3"
    else:
        assert out is found and out.pinned == ""


def replace_box(found, box):
    from dataclasses import replace

    return replace(found, box=box)


def test_rivals_are_not_checked_without_keypoints_or_when_they_search_the_same_box(tmp_path, monkeypatch):
    import gateway.service as service
    from gateway.images import QueryImage

    seen = []

    def details(self, index, photo, search, keys):
        seen.append(search.box)
        return service._nearest(index, search.vector, 6), [0] * 6

    monkeypatch.setattr(service.SearchService, "_details", details)
    data, _ = shopper_photo(product(13), seed=7)
    photo, options = QueryImage.decode(data, 10_000_000), SearchOptions(0.0, 6)
    vector, model = Client().embed(data)
    box = Crop(0.1, 0.1, 0.5, 0.5)
    for arrays in (None, _keypoint_arrays(_all_features())):
        svc = _service(_publish(tmp_path / str(arrays is None), arrays))
        found = replace_box(svc.search_vector(vector, model, options), box)
        svc.confirmed(photo, found, options, rivals=(found, replace_box(found, box)))
    assert seen == [box]  # the keypoint index checked the searched box once; the plain one nothing


# --------------------------------------------------------------------------- the item placed by its details


def _similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    turn = np.radians(degrees)
    return np.array([[scale * np.cos(turn), -scale * np.sin(turn), shift[0]],
                     [scale * np.sin(turn), scale * np.cos(turn), shift[1]]])


def _moved(features: LocalFeatures, matrix: np.ndarray, keep: int | None = None) -> LocalFeatures:
    """``features`` carried by ``matrix`` (the same descriptors), the first ``keep`` of them."""
    points = (features.points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return LocalFeatures(points[:keep], features.descriptors[:keep])


def _random_features(n: int, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(rng.uniform(10, 190, (n, 2)).astype(np.float32),
                         rng.integers(0, 256, (n, DESCRIPTOR_BYTES), dtype=np.uint8))


def test_a_placement_recovers_the_transform_and_carries_the_products_extent():
    product_features = _random_features(60)
    matrix = _similarity(0.5, 12.0, (40.0, 25.0))
    place = placement(_moved(product_features, matrix), product_features)
    assert place is not None and place.inliers == 60
    np.testing.assert_allclose(place.matrix, matrix, atol=1e-3)
    corners = np.array([[0, 0], [100, 0], [0, 50], [100, 50]], np.float32)
    expected = corners.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(place.extent(corners), [*expected.min(axis=0), *expected.max(axis=0)], atol=1e-2)


@pytest.mark.parametrize("cut", ["query", "candidate"])
@pytest.mark.parametrize(("kept", "placed"), [(MIN_MATCHES - 1, False), (MIN_MATCHES, True)])
def test_a_placement_needs_the_fewest_matches_that_fix_a_transform(kept, placed, cut):
    product_features = _random_features(60)
    matrix = _similarity(0.8, -5.0, (3.0, 9.0))
    query, candidate = _moved(product_features, matrix), product_features
    if cut == "query":
        query = _moved(product_features, matrix, keep=kept)
    else:
        candidate = LocalFeatures(product_features.points[:kept], product_features.descriptors[:kept])
    assert (placement(query, candidate) is not None) is placed
    assert placement(query, NONE) is None and placement(NONE, product_features) is None


def test_matches_that_fit_no_transform_place_nothing():
    """Every candidate keypoint at one point: no similarity transform can be fitted from them."""
    product_features = _random_features(60)
    query = _moved(product_features, _similarity(1.0, 0.0, (20.0, 10.0)))
    candidate = LocalFeatures(np.full_like(product_features.points, 50.0), product_features.descriptors)
    assert placement(query, candidate) is None


def test_a_placement_counts_matches_within_its_pixels_of_the_transform():
    """Every other match off the transform by 4 px: within ``RANSAC_PIXELS`` (5), most of them fit (53 of 60;
    37 within 3 px)."""
    product_features = _random_features(60)
    query = _moved(product_features, _similarity(1.0, 0.0, (20.0, 10.0)))
    query.points[::2, 0] += 4.0
    assert RANSAC_PIXELS == 5.0 and placement(query, product_features).inliers > 45


@pytest.mark.parametrize(("size", "described"), [
    ((SIDE, SIDE // 2), (SIDE, SIDE // 2)),  # at the side: as it is
    ((200, 100), (200, 100)),  # smaller: never enlarged
    ((SIDE + 1, 10), (SIDE, 10)),
    ((10, 2 * SIDE), (5, SIDE)),  # the longer side counts, whichever it is
    ((4 * SIDE, 1), (SIDE, 1)),  # a side never below one pixel
    ((1, 4 * SIDE), (1, SIDE)),
])
def test_a_photo_is_described_with_its_longer_side_at_most_the_side(size, described):
    assert described_size(*size) == described


def _item_box(item: Image.Image, seed: int) -> tuple[bytes, Crop]:
    """``shopper_photo`` of ``item`` and the box of the item itself (its coloured part, without the white)."""
    data, pasted = shopper_photo(item, seed)
    turned = np.asarray(item.rotate(10, expand=True, fillcolor=(255, 255, 255)).resize((180, 180)))
    ys, xs = np.nonzero((turned < 235).any(axis=2))
    return data, Crop((300 + xs.min()) / 640, (150 + ys.min()) / 480, (301 + xs.max()) / 640, (151 + ys.max()) / 480)


def _found_on(svc: SearchService, data: bytes, box: Crop, pinned: str = "p3", confirmed: bool = False):
    """The search of ``box`` of the photo ``data`` with ``pinned`` first, as the outline would answer it."""
    from gateway.images import QueryImage

    vector, model = Client().embed(data)
    found = replace_box(svc.search_vector(vector, model, SearchOptions(0.0, 6), pinned=pinned, confirmed=confirmed),
                        box)
    return QueryImage.decode(data, 10_000_000), found


def test_the_first_products_details_place_its_item_tighter_than_the_box_searched(tmp_path):
    from gateway.locate import iou

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    data, item = _item_box(product(13), seed=7)  # product p3 in the photo, which is made twice as large: the
    data = jpeg(Image.open(io.BytesIO(data)).resize((1280, 960), Image.BICUBIC))  # part searched is described
    loose = Crop(item.left - 0.12, item.top - 0.02, item.right + 0.05, item.bottom + 0.15)  # smaller than it is
    photo, found = _found_on(svc, data, loose)
    placed = svc.placed(photo, found, SearchOptions(0.0, 6))
    assert iou(loose, item) < 0.4 and placed is not None and iou(placed.box, item) > 0.7, placed
    assert placed.hits[0].product["id"] == "p3" and placed.pinned == "p3" and not placed.confirmed


def test_a_whole_photo_is_answered_with_the_placed_box_and_a_drawn_box_is_kept(tmp_path, monkeypatch):
    import gateway.service as service

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    data, item = _item_box(product(13), seed=7)
    placed_box = Crop(0.4, 0.3, 0.8, 0.7)
    monkeypatch.setattr(service, "_placed_box", lambda *args: placed_box)
    drawn = svc.search(SearchQuery(upload=data, crop=item), SearchOptions(0.0, 6)).found
    assert drawn.box == item  # the shopper's own box is never moved
    photo, found = _found_on(svc, data, item)
    located = service.Location(item, photo.cropped(item), found.vector, (), {})
    monkeypatch.setattr(service.SearchService, "locate", lambda *args: located)
    answer = svc.search(SearchQuery(upload=data), SearchOptions(0.0, 6))
    whole = answer.found
    assert whole.box == placed_box and whole.hits[0].product["id"] == "p3"
    # the token carries the placed box's search: "Show more" continues its order
    pages = [svc.search(SearchQuery(token=answer.token), SearchOptions(0.0, 3, offset=at)).found for at in (0, 3)]
    assert [h.product["id"] for page in pages for h in page.hits] == [h.product["id"] for h in whole.hits]


#: The part searched in ``_placing_service``'s tests: 400 × 300 px in the middle of the 640 × 480 photo,
#: described smaller.
REGION = (120, 90, 520, 390)


def _placing_service(tmp_path, monkeypatch, inliers: int, area: float = 0.5, shift: tuple[float, float] = (0, 0)
                     ) -> tuple[SearchService, Crop, Crop]:
    """A keypoint service whose details place p3 with ``inliers``; the box searched (``REGION``), and the box
    where the placement carries p3's keypoints' box: ``area`` times the searched box's area, centred in it, moved
    by ``shift`` of its width and height (clipped to the photo)."""
    import localfeatures.sift as lf

    points = _all_features()[3].points.astype(np.float64)
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    left, top, right, bottom = REGION
    wide, high = described_size(right - left, bottom - top)
    x_ratio, y_ratio = (right - left) / wide, (bottom - top) / high
    assert (wide, high) != (right - left, bottom - top)  # described at another size than the photo's pixels
    scale = (area * (right - left) * (bottom - top) / ((x1 - x0) * (y1 - y0) * x_ratio * y_ratio)) ** 0.5
    dx, dy = wide * (0.5 + shift[0]) - scale * (x0 + x1) / 2, high * (0.5 + shift[1]) - scale * (y0 + y1) / 2
    matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]])
    monkeypatch.setattr(lf, "placement", lambda query, candidate: lf.Placement(matrix, inliers))
    searched = Crop(left / 640, top / 480, right / 640, bottom / 480)
    x = (left + (scale * np.array([x0, x1]) + dx) * x_ratio) / 640
    y = (top + (scale * np.array([y0, y1]) + dy) * y_ratio) / 480
    expected = Crop(max(0.0, x[0]), max(0.0, y[0]), min(1.0, x[1]), min(1.0, y[1]))
    return _service(_publish(tmp_path, _keypoint_arrays(_all_features()))), searched, expected


def _placed(svc: SearchService, searched: Crop, confirmed: bool = False):
    data, _ = _item_box(product(13), seed=7)
    photo, found = _found_on(svc, data, searched, confirmed=confirmed)
    return svc.placed(photo, found, SearchOptions(0.0, 6)), photo


@pytest.mark.parametrize(("inliers", "placed"), [(VerifySettings().min_inliers - 1, False),
                                                 (VerifySettings().min_inliers, True)])
def test_the_details_place_the_item_only_with_enough_inliers(tmp_path, monkeypatch, inliers, placed):
    from gateway.locate import iou

    svc, searched, expected = _placing_service(tmp_path, monkeypatch, inliers)
    out, photo = _placed(svc, searched)
    assert (out is not None) is placed
    if placed:  # the placed box is where the transform carried the keypoints' box, in the photo's fractions,
        assert iou(out.box, expected) > 0.99, (out.box, expected)  # searched with its own colour
        np.testing.assert_allclose(out.hist, histogram_of(photo.cropped(out.box).image))


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_placed_search_keeps_the_pin_and_its_confirmation(tmp_path, monkeypatch, confirmed):
    svc, searched, _ = _placing_service(tmp_path, monkeypatch, 30)
    out, _ = _placed(svc, searched, confirmed=confirmed)
    assert out.pinned == "p3" and out.confirmed is confirmed


def test_a_placed_box_larger_than_the_photo_is_cut_to_it(tmp_path, monkeypatch):
    svc, searched, expected = _placing_service(tmp_path, monkeypatch, 30, area=5.0)
    out, _ = _placed(svc, searched)
    assert out.box.fractions() == expected.fractions() == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(("area", "placed"), [(0.26, True), (0.24, False)])
def test_a_placed_box_is_at_least_a_quarter_of_the_box_searched(tmp_path, monkeypatch, area, placed):
    svc, searched, _ = _placing_service(tmp_path, monkeypatch, 30, area=area)
    assert (_placed(svc, searched)[0] is not None) is placed


@pytest.mark.parametrize(("shift", "placed"), [((0.49, 0), True), ((0.51, 0), False), ((-0.49, 0), True),
                                               ((-0.51, 0), False), ((0, 0.49), True), ((0, 0.51), False),
                                               ((0, -0.49), True), ((0, -0.51), False)])
def test_a_placed_box_is_centred_in_the_box_searched(tmp_path, monkeypatch, shift, placed):
    svc, searched, _ = _placing_service(tmp_path, monkeypatch, 30, area=0.26, shift=shift)  # never cut to the photo
    assert (_placed(svc, searched)[0] is not None) is placed


def test_nothing_is_placed_without_keypoints(tmp_path, monkeypatch, caplog):
    import gateway.service as service

    svc = _service(_publish(tmp_path, None))
    monkeypatch.setattr(service, "_placed_box", lambda *args: Crop(0.35, 0.25, 0.85, 0.85))
    data, _ = _item_box(product(13), seed=7)
    photo, found = _found_on(svc, data, Crop(0.3, 0.2, 0.9, 0.9))
    assert svc.placed(photo, found, SearchOptions(0.0, 6)) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # not tried, so nothing failed


def test_no_placement_when_nothing_was_located_the_box_is_the_one_searched_or_its_search_puts_another_first(
        tmp_path, monkeypatch):
    import gateway.service as service

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    data, item = _item_box(product(13), seed=7)
    photo, found = _found_on(svc, data, Crop(0.3, 0.2, 0.9, 0.9))
    tried, elsewhere = [], Crop(0.35, 0.25, 0.85, 0.85)
    monkeypatch.setattr(service, "_placed_box", lambda index, photo, searched, row: tried.append(row) or elsewhere)
    assert svc.placed(photo, found, SearchOptions(0.0, 6)).box == elsewhere  # placed: the control
    assert svc.placed(photo, replace_box(found, None), SearchOptions(0.0, 6)) is None  # nothing was located ...
    assert len(tried) == 1  # ... so nothing was tried
    unpinned = __import__("dataclasses").replace(found, pinned="")  # p3 first, but its search gives p0 first
    assert svc.placed(photo, unpinned, SearchOptions(0.0, 6)) is None
    monkeypatch.setattr(service, "_placed_box", lambda *args: found.box)
    assert svc.placed(photo, found, SearchOptions(0.0, 6)) is None


def test_a_failing_placement_leaves_the_answer(tmp_path, monkeypatch, caplog):
    import gateway.service as service
    import localfeatures.sift as lf
    from modelserver.client import ModelServerError

    svc = _service(_publish(tmp_path, _keypoint_arrays(_all_features())))
    data, item = _item_box(product(13), seed=7)
    photo, found = _found_on(svc, data, Crop(0.3, 0.2, 0.9, 0.9))

    def broken(*args):
        raise lf.cv2.error("simulated OpenCV failure")

    monkeypatch.setattr(lf, "placement", broken)
    assert svc.placed(photo, found, SearchOptions(0.0, 6)) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "the details could not place the item; the answer keeps its box"]
    caplog.clear()

    def down(*args):
        raise ModelServerError("embedding service timed out")

    monkeypatch.setattr(service, "_placed_box", lambda *args: Crop(0.4, 0.3, 0.8, 0.7))
    monkeypatch.setattr(service.SearchService, "_window_vector", down)
    assert svc.placed(photo, found, SearchOptions(0.0, 6)) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "no box placed by the details: embedding service timed out"]

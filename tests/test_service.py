"""Ranking in the service (gateway/service.py): what it builds from the backend's candidates must equal
ranking the whole catalog at once (the definition of category-first ranking), on every path."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from catalog.build import fill_milvus
from gateway import service as service_module
from gateway.config import Config
from gateway.images import QueryImage
from gateway.service import SearchOptions, SearchService, SideWork
from indexstore.ann import build_ann
from indexstore.store import ANN, IndexData, open_store, publish, write_and_publish, write_version
from ranking.appearance import colour_histogram, histogram_of
from search import top_rows
from search.milvus import MilvusSettings


def _photo() -> QueryImage:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(buf, "JPEG")
    return QueryImage.decode(buf.getvalue(), 10**7)


#: The query photo of the ranking tests (the fixed client gives its vector, whatever the photo).
PHOTO = _photo()


class FixedClient:
    backbone = "fixed-8d"

    def __init__(self) -> None:
        self.vector = np.zeros(8, np.float32)

    def embed(self, blob: bytes):
        return self.vector, self.backbone

    def probe(self) -> str:
        return self.backbone


def reference(index, x, query, options, exclude=None, own_code=None):
    """The whole-catalog definition: full score vector, the vote over it, grouped sort keys."""
    scores = x @ query
    if options.category:
        scores = np.where(np.isin(index.grouping.codes, list(index.category_codes(options.category))),
                          scores, -np.inf)
    if exclude is not None:
        scores[exclude] = -np.inf
    code = -1
    if options.category_first and not options.category:
        code = own_code if own_code is not None else int(index.grouping.guess(scores)[0][0])
    keys = scores + 10.0 * (index.grouping.codes == code) if code >= 0 else None  # the group ahead of any cosine
    return [row for row, _ in top_rows(scores, options.top_k, index.calibration.cosine(options.threshold), keys)]


#: Every search backend runs the same cases; "ann-filtered" sends filtered searches through the HNSW graph
#: (a bitmap selector) instead of the brute-force path small filters take.
BACKENDS = ["exact", "ann", "ann-filtered", pytest.param("milvus", marks=pytest.mark.milvus_lite)]


@pytest.fixture(scope="module", params=BACKENDS)
def service(tmp_path_factory, request):
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 8))
    labels = rng.integers(0, 4, 300)
    x = centres[labels] + rng.normal(scale=0.9, size=(300, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cats = ["Shoes", "Bags", "Watches", ""]
    products = [{"id": str(i), "name": f"p{i}", "category": cats[c]} for i, c in enumerate(labels)]
    root = tmp_path_factory.mktemp("svc")
    extra = {ANN: build_ann(x)} if request.param.startswith("ann") else {}
    kind = request.param.split("-")[0]
    store, data = open_store(root / "index"), IndexData(x, products, {"backbone": FixedClient.backbone})
    if kind == "milvus":  # the build fills the version's collection before it publishes it
        version = write_version(store, data, extra)
        fill_milvus(MilvusSettings(str(root / "milvus.db"), index_type="FLAT"), data)
        publish(store, version)
    else:
        write_and_publish(store, data, extra)
    config = Config(index_uri=str(root / "index"), index_poll_s=0, index_cache_dir=str(root / "c"),
                    search_backend=kind, milvus_uri=str(root / "milvus.db") if kind == "milvus" else "",
                    milvus_index_type="FLAT")  # exact, so that results can be compared row for row
    svc = SearchService(config, FixedClient())
    svc.indexes.load()
    assert svc.require_index().backend.name == kind
    if request.param == "ann-filtered":
        svc.require_index().backend.SMALL_FILTER = 0
    return svc, x


@pytest.mark.parametrize("top_k", [1, 5, 12, 40])
@pytest.mark.parametrize("threshold", [0.0, 60.0, 85.0])
@pytest.mark.parametrize(("category", "category_first"), [(None, True), (None, False), ("bags", True)])
def test_candidates_rank_like_the_whole_catalog(service, top_k, threshold, category, category_first):
    svc, x = service
    index = svc.require_index()
    options = SearchOptions(threshold, top_k, category, category_first)
    rng = np.random.default_rng(top_k)
    for _ in range(25):
        q = x[rng.integers(len(x))] + rng.normal(scale=0.5, size=8)
        svc.client.vector = (q / np.linalg.norm(q)).astype(np.float32)
        got = [int(h.product["id"]) for h in svc.search_image(PHOTO, options).hits]
        assert got == reference(index, x, svc.client.vector, options)
        row = int(rng.integers(len(x)))
        got = [int(h.product["id"]) for h in svc.similar(str(row), options).hits]
        assert got == reference(index, x, x[row], options, exclude=row, own_code=int(index.grouping.codes[row]))


@pytest.mark.parametrize(("category", "category_first"), [(None, True), (None, False), ("bags", True)])
def test_offset_pages_are_slices_of_one_ranking(service, category, category_first):
    """"Show more": pages of 5 at offsets 0, 5, 10 are the first 15 of the same ranking, on every backend."""
    svc, x = service
    rng = np.random.default_rng(3)
    for _ in range(10):
        q = x[rng.integers(len(x))] + rng.normal(scale=0.5, size=8)
        svc.client.vector = (q / np.linalg.norm(q)).astype(np.float32)
        whole = svc.search_image(PHOTO, SearchOptions(0.0, 15, category, category_first))
        pages = [svc.search_image(PHOTO, SearchOptions(0.0, 5, category, category_first, offset=o)) for o in (0, 5, 10)]
        assert [h.product["id"] for p in pages for h in p.hits] == [h.product["id"] for h in whole.hits]
        assert sum(p.first_group for p in pages) == whole.first_group


# --------------------------------------------------------------------------- the query's side work


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


class WaitingClient(FixedClient):
    """Answers only once ``ready`` is set (or after 5 s), and notes whether it was set by then."""

    def __init__(self, ready: threading.Event) -> None:
        super().__init__()
        self.ready = ready
        self.histogram_was_ready: bool | None = None

    def embed(self, blob: bytes):
        self.histogram_was_ready = self.ready.wait(5)
        return super().embed(blob)


@pytest.fixture
def plain(tmp_path):
    x = np.eye(8, dtype=np.float32)
    products = [{"id": str(i), "name": f"p{i}", "category": "Shoes"} for i in range(8)]
    write_and_publish(open_store(tmp_path / "index"), IndexData(x, products, {"backbone": FixedClient.backbone}))
    return Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "c"))


def test_the_histogram_is_made_while_the_model_works(plain, monkeypatch):
    made = threading.Event()

    def histogram(img) -> np.ndarray:
        made.set()
        return histogram_of(img)

    monkeypatch.setattr(service_module, "histogram_of", histogram)
    svc = SearchService(plain, WaitingClient(made))
    svc.indexes.load()
    found = svc.search_image(QueryImage.decode(_jpeg(), 10**7), SearchOptions(0.0, 3))
    assert svc.client.histogram_was_ready  # made before the model answered, not after
    assert np.array_equal(found.hist, colour_histogram(_jpeg(), plain.max_pixels))  # small: no reduced decode


def test_a_forked_worker_gets_side_threads_of_its_own():
    # gunicorn forks workers: a pool inherited with its threads gone would take the work and never run it.
    side = SideWork(workers=1)
    assert side.submit(lambda: 7).result(5) == 7  # the parent's pool has a thread now
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)
        os._exit(0 if side.submit(lambda: 8).result() == 8 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class QueuedOnly:
    """A side pool whose work never starts: what a busy pool looks like to a new query."""

    def __init__(self) -> None:
        self.futures: list = []

    def submit(self, fn, *args):
        from concurrent.futures import Future

        self.futures.append(Future())
        return self.futures[-1]


def test_a_failed_model_call_drops_its_queued_histogram(plain):
    from modelserver.client import ModelServerError

    class Down(FixedClient):
        def embed(self, blob: bytes):
            raise ModelServerError("embedding service unreachable")

    svc = SearchService(plain, Down())
    svc.indexes.load()
    svc.side_work = QueuedOnly()
    with pytest.raises(ModelServerError):
        svc.search_image(QueryImage.decode(_jpeg(), 10**7), SearchOptions(0.0, 3))
    assert svc.side_work.futures[0].cancelled()


# --------------------------------------------------------------------------- the service's own decisions, unit by unit


@pytest.fixture
def svc(plain):
    service = SearchService(plain, FixedClient())
    service.indexes.load()
    return service


def test_another_item_of_the_photo_is_searched_with_its_own_colour(svc):
    from gateway.query_token import Query, QueryItem

    other_hist = np.full(HIST, 0.5, np.float32)
    known = Query(np.eye(8, dtype=np.float32)[0], FixedClient.backbone, hist=np.zeros(HIST, np.float32),
                  items=(QueryItem((0.1, 0.1, 0.5, 0.5), "Shoes", np.eye(8, dtype=np.float32)[3], other_hist),))
    found = svc.search_item(known, 1, SearchOptions(0.0, 3))
    assert found.hist is other_hist and found.hits[0].product["id"] == "3"
    assert found.box.fractions() == (0.1, 0.1, 0.5, 0.5)
    whole = svc.search_item(known, 0, SearchOptions(0.0, 3))
    assert whole.box is None and whole.hits[0].product["id"] == "0"  # the whole photo: no box to show


HIST = 64


def test_a_picture_not_of_the_token_is_never_shown(svc):
    from gateway.query_token import Query, picture_digest
    from gateway.service import PICTURE_PREFIX

    mine = PICTURE_PREFIX + "AAAA"
    query = Query(np.zeros(8, np.float32), "m", picture_digest=picture_digest(mine))
    assert svc.token_picture(mine, query) == mine
    assert svc.token_picture(PICTURE_PREFIX + "BBBB", query) == ""
    assert svc.token_picture("data:text/html;base64,AAAA", Query(np.zeros(8), "m", picture_digest=picture_digest(
        "data:text/html;base64,AAAA"))) == ""  # its digest matches, but it is not a picture


def test_a_window_answered_by_another_model_is_left_out(svc):
    assert svc._window_vector(_jpeg(), FixedClient.backbone) is not None
    assert svc._window_vector(_jpeg(), "another-model") is None

    class Refusing(FixedClient):
        def embed(self, blob):
            from modelio.imaging import ImageError

            raise ImageError("too small")

    svc.client = Refusing()
    assert svc._window_vector(_jpeg(), FixedClient.backbone) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_readiness_is_cached_for_its_seconds_and_checked_again_at_the_edge(plain, monkeypatch):
    from dataclasses import replace as copy

    clock = Clock()
    monkeypatch.setattr(service_module, "time", clock)
    svc = SearchService(copy(plain, ready_cache_s=2.0), FixedClient())
    svc.indexes.load()
    checks = []
    monkeypatch.setattr(svc, "_check_ready", lambda: checks.append(clock.now) or (True, "ready"))
    svc.readiness()
    clock.now = 101.9
    svc.readiness()
    assert checks == [100.0]  # cached
    clock.now = 102.0
    svc.readiness()
    assert checks == [100.0, 102.0]  # due at exactly its seconds
    clock.now = 103.0
    svc.readiness()
    assert checks == [100.0, 102.0]


def test_not_ready_says_why_and_a_cached_copy_is_ready_with_its_reason(svc, plain):
    assert svc._check_ready() == (True, "ready")
    svc.indexes.from_cache, svc.indexes.error = True, "store unreachable"
    version = svc.require_index().version
    assert svc._check_ready() == (True, f"ready, serving the cached copy of version {version} (store unreachable)")
    empty = SearchService(plain, FixedClient())  # never loaded
    assert empty._check_ready() == (False, "index not loaded")
    empty.indexes.error = "no index at s3://b/x"
    assert empty._check_ready() == (False, "no index at s3://b/x")


def test_a_crops_results_name_the_crop_as_their_one_item(svc):
    from gateway.images import Crop
    from gateway.service import Item, within

    found = svc.search_image(PHOTO, SearchOptions(0.0, 3))
    found = service_module.replace(found, items=(found.items[0], Item(Crop(0, 0, 0.5, 0.5), "Shoes")))
    crop = Crop(0.2, 0.2, 0.6, 0.6)
    inside = within(found, crop)
    assert inside.box == crop and len(inside.items) == 1 and inside.items[0].box == crop


def _index_with_rule(percent: float | None):
    from types import SimpleNamespace

    products = [{"category": "Shoes"}, {"category": ""}, {}]
    return SimpleNamespace(view=SimpleNamespace(no_match_percent=percent), products=products)


@pytest.mark.parametrize(("score", "named"), [(None, False), (49.9, False), (50.0, True), (80.0, True)])
def test_an_item_is_named_by_its_closest_product_only_when_that_is_close(score, named):
    index = _index_with_rule(50.0)
    assert service_module._category(index, (score, 0)) == ("Shoes" if named else None)
    assert service_module._category(index, (80.0, None)) is None


def test_without_a_fitted_rule_any_closest_product_names_the_item():
    index = _index_with_rule(None)
    assert service_module._category(index, (0.0, 0)) == "Shoes"
    assert service_module._category(index, (-0.1, 0)) is None
    assert service_module._category(index, (0.0, 1)) is None  # an unlabelled product names nothing
    assert service_module._category(index, (0.0, 2)) is None


# --------------------------------------------------------------------------- finding the item in a whole photo


def _quadrants() -> QueryImage:
    """A 400 × 400 photo: red, green, blue and grey quarters (left-top, right-top, left-bottom, right-bottom)."""
    img = Image.new("RGB", (400, 400), (128, 128, 128))
    for box, colour in (((0, 0, 200, 200), (220, 20, 20)), ((200, 0, 400, 200), (20, 220, 20)),
                        ((0, 200, 200, 400), (20, 20, 220))):
        img.paste(colour, box)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return QueryImage.decode(buf.getvalue(), 10**7)


class ColourModel(FixedClient):
    """Product 0's vector for a mostly red picture, 1's for green, 2's for blue, 3's for anything else."""

    def embed(self, blob: bytes):
        mean = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
        row = int(np.argmax(mean)) if mean.max() - mean.min() > 30 else 3
        return np.eye(8, dtype=np.float32)[row], self.backbone


@pytest.fixture
def located(plain, monkeypatch):
    """A service whose windows are the photo's red, green and blue quarters, whose common part of the best windows
    is the red quarter's top-left corner, and whose products score (percent) as ``scores`` says by row."""
    from gateway.images import Crop

    svc = SearchService(plain, ColourModel())
    svc.indexes.load()
    crops = [Crop(0, 0, 0.5, 0.5), Crop(0.5, 0, 1, 0.5), Crop(0, 0.5, 0.5, 1)]
    scores = {0: 90.0, 1: 70.0, 2: 65.0, 3: 50.0}
    monkeypatch.setattr(service_module, "windows", lambda w, h, settings: crops)
    monkeypatch.setattr(service_module, "common_part", lambda crops, scores, agree, w, h: Crop(0, 0, 0.25, 0.25))
    monkeypatch.setattr(service_module, "_closest", lambda index, v: (scores[int(np.argmax(v))], int(np.argmax(v))))
    return svc, scores


def test_the_common_part_of_the_best_windows_is_searched_when_it_scores_as_well(located):
    from gateway.images import Crop

    svc, _ = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    where = svc.locate(photo, vector, model)
    assert where.box == Crop(0, 0, 0.25, 0.25) and int(np.argmax(where.vector)) == 0
    assert where.part.image.size == (100, 100)
    assert where.seen == {0: 90.0, 1: 70.0, 2: 65.0}  # what each window found, for the outlines to agree on
    others = {o.box.fractions(): o for o in where.others}
    assert set(others) == {(0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1)}  # the green and blue quarters: other items
    for other in others.values():
        part = photo.cropped(other.box)
        assert np.array_equal(other.hist, histogram_of(part.image)) and other.category == "Shoes"


def test_each_product_the_windows_found_is_seen_once_with_its_closest_windows_similarity():
    from gateway.service import _seen

    closest = [(70.0, 1), (None, None), (80.0, 1), (65.0, 2), (75.0, 1), (float("-inf"), None)]
    assert _seen(closest) == {1: 80.0, 2: 65.0}
    assert _seen([(40.0, 3), (40.0, 3)]) == {3: 40.0} and _seen([]) == {}


def test_the_common_part_must_score_at_least_the_best_window_less_the_slack(located, monkeypatch):
    from gateway.images import Crop
    from gateway.locate import LocateSettings

    svc, scores = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    monkeypatch.setattr(service_module, "common_part", lambda crops, s, agree, w, h: Crop(0, 0.5, 0.25, 0.75))
    scores[2] = 89.0  # the common part (blue) scores under the best window (red, 90): the window is searched
    assert svc.locate(photo, vector, model).box == Crop(0, 0, 0.5, 0.5)
    monkeypatch.setattr(service_module, "LOCATE", LocateSettings(slack=1.0))
    assert svc.locate(photo, vector, model).box == Crop(0, 0.5, 0.25, 0.75)  # within the slack: the common part
    monkeypatch.setattr(service_module, "LOCATE", LocateSettings(slack=0.5))
    assert svc.locate(photo, vector, model).box == Crop(0, 0, 0.5, 0.5)


def test_a_common_part_the_model_refuses_leaves_the_best_window(located, monkeypatch):
    from gateway.images import Crop

    svc, _ = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    real, calls = svc._window_vector, []

    def refuse_after_the_windows(data, backbone):
        calls.append(data)
        return real(data, backbone) if len(calls) <= 3 else None  # the three windows, then the common part

    monkeypatch.setattr(svc, "_window_vector", refuse_after_the_windows)
    assert svc.locate(photo, vector, model).box == Crop(0, 0, 0.5, 0.5)


@pytest.mark.parametrize(("whole", "searched_box"), [(50.0, True), (92.0, False)])
def test_the_whole_photo_is_searched_when_no_window_beats_it(located, whole, searched_box):
    svc, scores = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    scores[3] = whole  # the whole (grey-ish) photo's closest product; the best window scores 90
    assert (svc.locate(photo, vector, model).box is not None) is searched_box


def test_a_whole_photo_good_enough_or_too_small_is_not_cut(located):
    svc, scores = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    scores[3] = 95.0  # exactly good enough
    assert svc.locate(photo, vector, model) is None
    scores[3] = 94.9
    assert svc.locate(photo, vector, model) is not None


def test_a_vector_the_index_cannot_compare_is_not_located(located):
    svc, _ = located
    photo = _quadrants()
    vector, model = svc.client.embed(photo.data)
    assert svc.locate(photo, vector, "another-model") is None
    assert svc.locate(photo, np.zeros(7, np.float32), model) is None
    svc.indexes.current = None
    assert svc.locate(photo, vector, model) is None


def test_a_tokens_other_item_is_named_without_a_category_guess(svc):
    from gateway.query_token import Query, QueryItem

    known = Query(np.eye(8, dtype=np.float32)[0], FixedClient.backbone,
                  items=(QueryItem((0.1, 0.1, 0.5, 0.5), "Shoes", np.eye(8, dtype=np.float32)[3]),))
    found = svc.search_item(known, 1, SearchOptions(0.0, 3, category_first=False))
    assert found.guess is None and found.items[0].category == "Shoes"


# --------------------------------------------------------------------------- a search request: photo, link or token


@pytest.fixture
def linked(plain, http_server):
    """A service that may fetch from the local HTTP server, and a link to a photo there."""
    from dataclasses import replace as copy

    svc = SearchService(copy(plain, allow_private_urls=True), FixedClient())
    svc.indexes.load()
    return svc, http_server.add("/photo.jpg", _jpeg()), http_server


def _query(**fields):
    from gateway.service import SearchQuery

    return SearchQuery(**fields)


def test_a_link_is_fetched_and_kept_with_the_answer_an_upload_is_not(linked):
    svc, url, server = linked
    found = svc.search(_query(image_url=url), SearchOptions(0.0, 3))
    assert found.image_url == url and found.picture == "" and len(server.requests) == 1
    assert svc.tokens.verify(found.token).image_url == url
    uploaded = svc.search(_query(upload=_jpeg(), image_url=url), SearchOptions(0.0, 3))
    assert uploaded.image_url == "" and len(server.requests) == 1  # the upload wins: nothing fetched


def test_a_token_with_its_own_link_is_refined_without_fetching_a_new_link_is_a_new_search(linked):
    svc, url, server = linked
    first = svc.search(_query(image_url=url), SearchOptions(0.0, 3))
    calls = []
    svc.client.embed = lambda blob: calls.append(blob) or (svc.client.vector, svc.client.backbone)
    again = svc.search(_query(image_url=url, token=first.token), SearchOptions(0.0, 5))
    assert len(server.requests) == 1 and calls == [] and len(again.found.hits) == 5
    other = server.add("/other.jpg", _jpeg())
    svc.search(_query(image_url=other, token=first.token), SearchOptions(0.0, 5))
    assert len(server.requests) == 2 and len(calls) == 1


def test_a_link_at_most_2048_characters_long(linked):
    from gateway.errors import BadRequest

    svc, url, server = linked
    base = url.removesuffix("/photo.jpg")
    at_limit = server.add("/" + "a" * (2048 - len(base) - 5) + ".jpg", _jpeg())
    assert len(at_limit) == 2048
    with pytest.raises(BadRequest) as caught:
        svc.search(_query(image_url=at_limit.replace("/a", "/aa", 1)), SearchOptions(0.0, 3))
    assert str(caught.value) == ("that image link is too long (over 2,048 characters): save the picture and upload "
                                 "it instead")
    assert svc.search(_query(image_url=at_limit), SearchOptions(0.0, 3)).image_url == at_limit


def test_the_picture_is_made_only_when_the_page_shows_it_and_the_token_names_it(svc):
    from gateway.query_token import picture_digest
    from gateway.service import PICTURE_PREFIX

    plain_answer = svc.search(_query(upload=_jpeg()), SearchOptions(0.0, 3))
    assert plain_answer.picture == "" and svc.tokens.verify(plain_answer.token).picture_digest == ""
    shown = svc.search(_query(upload=_jpeg(), with_picture=True), SearchOptions(0.0, 3))
    assert shown.picture.startswith(PICTURE_PREFIX)
    assert svc.tokens.verify(shown.token).picture_digest == picture_digest(shown.picture)
    again = svc.search(_query(token=shown.token, picture=shown.picture, with_picture=True), SearchOptions(0.0, 3))
    assert again.picture == shown.picture
    silent = svc.search(_query(token=shown.token, picture=shown.picture), SearchOptions(0.0, 3))
    assert silent.picture == ""


def test_a_token_cannot_be_cropped_nor_used_with_another_model(svc):
    from gateway.errors import BadRequest
    from gateway.images import Crop
    from gateway.query_token import ExpiredQuery, Query

    token = svc.search(_query(upload=_jpeg()), SearchOptions(0.0, 3)).token
    with pytest.raises(BadRequest) as caught:
        svc.search(_query(token=token, crop=Crop(0, 0, 0.5, 0.5)), SearchOptions(0.0, 3))
    assert str(caught.value) == "to search part of the photo, give the photo again with the box drawn on it"
    stale = svc.tokens.issue(Query(np.zeros(8, np.float32), "an-older-model"))
    with pytest.raises(ExpiredQuery) as caught:
        svc.search(_query(token=stale), SearchOptions(0.0, 3))
    assert str(caught.value) == "the search engine has been updated since this search: choose the photo again"


def test_the_token_carries_up_to_three_other_items_with_their_colour(svc):
    from gateway.images import Crop
    from gateway.service import WHOLE, Item

    found = svc.search_image(PHOTO, SearchOptions(0.0, 3))
    hist = np.full(64, 0.25, np.float32)
    others = [Item(Crop(0, 0, 0.1 * (i + 1), 0.5), None if i == 0 else "Shoes", np.eye(8, dtype=np.float32)[i],
                   hist) for i in range(5)]
    query = svc.tokens.verify(svc._answer(service_module.replace(found, items=(Item(WHOLE, "Shoes"), *others)),
                                          "", "").token)
    assert [item.box for item in query.items] == [(0, 0, 0.1, 0.5), (0, 0, 0.2, 0.5), (0, 0, 0.30000000000000004, 0.5)]
    assert [item.category for item in query.items] == ["", "Shoes", "Shoes"]
    assert all(np.array_equal(item.hist, hist) for item in query.items)
    others.insert(1, Item(Crop(0, 0, 0.9, 0.9), "Shoes"))  # no vector (a window the model refused): not carried
    query = svc.tokens.verify(svc._answer(service_module.replace(found, items=(Item(WHOLE, "Shoes"), *others)),
                                          "", "").token)
    assert [item.box for item in query.items] == [(0, 0, 0.1, 0.5), (0, 0, 0.2, 0.5)]


def test_a_model_server_serving_another_model_is_not_ready(svc):
    class Other(FixedClient):
        backbone = "another-model"

    svc.client = Other()
    assert svc._check_ready() == (False, "model mismatch: TorchServe serves another-model, index was built with "
                                         "fixed-8d")


def _service_over(tmp_path, x: np.ndarray, categories: list[str]) -> SearchService:
    products = [{"id": str(i), "name": f"p{i}", "category": c} for i, c in enumerate(categories)]
    write_and_publish(open_store(tmp_path / "index"), IndexData(np.asarray(x, np.float32), products,
                                                                {"backbone": FixedClient.backbone}))
    svc = SearchService(Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "c")),
                        FixedClient())
    svc.indexes.load()
    return svc


def test_the_closest_product_is_the_nearest_by_similarity_alone_whatever_its_category(tmp_path):
    n = 30
    x = np.zeros((n + 1, n + 1), np.float32)
    x[0, 0] = 1.0  # one bag exactly where the query is ...
    for i in range(1, n + 1):  # ... among thirty shoes just beside it, which win the category vote
        x[i, 0], x[i, i] = 0.99, np.sqrt(1 - 0.99**2)
    svc = _service_over(tmp_path, x, ["Bags"] + ["Shoes"] * n)
    query = np.eye(n + 1, dtype=np.float32)[0]
    voted = svc.search_vector(query, FixedClient.backbone, SearchOptions(0.0, 1))
    assert voted.guess.category == "Shoes" and voted.hits[0].product["id"] == "1"  # category-first: a shoe
    score, row = service_module._closest(svc.require_index(), query)
    assert row == 0 and score == pytest.approx(100.0)


def test_the_closest_product_however_far_and_none_in_an_empty_catalog(tmp_path):
    x = np.zeros((4, 8), np.float32)
    x[np.arange(4), np.arange(4)] = 1.0
    svc = _service_over(tmp_path / "far", x, ["Shoes"] * 4)
    far = np.zeros(8, np.float32)
    far[0], far[5] = 0.005, np.sqrt(1 - 0.005**2)
    score, row = service_module._closest(svc.require_index(), far)
    assert row == 0 and score == pytest.approx(0.5, abs=1e-3)  # 0.5 %: still the closest, no threshold applies
    empty = _service_over(tmp_path / "empty", np.zeros((0, 8)), [])
    assert service_module._closest(empty.require_index(), far) == (float("-inf"), None)


def test_the_side_pool_has_four_threads_made_in_the_process_that_uses_it():
    side = SideWork()
    assert side.workers == 4
    assert side.submit(lambda: 1).result(5) == 1 and side._pool._max_workers == 4


def test_a_service_keeps_its_index_copy_where_configured_and_accepts_tokens_of_old_keys(tmp_path, plain):
    from dataclasses import replace as copy

    from gateway.query_token import Query, QueryTokens

    old = QueryTokens("an-old-key-of-at-least-32-characters!!", 600).issue(Query(np.zeros(8, np.float32), "m"))
    svc = SearchService(copy(plain, query_token_old_keys="an-old-key-of-at-least-32-characters!!"), FixedClient())
    assert svc.indexes.cache.root == plain.index_cache
    assert svc.tokens.verify(old).backbone_id == "m"


def test_readiness_before_its_first_check(plain, monkeypatch):
    from dataclasses import replace as copy

    clock = Clock()
    monkeypatch.setattr(service_module, "time", clock)
    svc = SearchService(copy(plain, ready_cache_s=2.0), FixedClient())
    svc.indexes.load()
    clock.now = 1.0  # a clock that started under ready_cache_s ago: nothing checked yet
    assert svc.readiness() == (False, "not checked yet")
    clock.now = 2.5
    assert svc.readiness() == (True, "ready")


def test_a_vector_of_another_model_or_width_is_not_ready_and_the_log_says_why(svc):
    from gateway.errors import Unavailable
    from gateway.service import NOT_READY

    with pytest.raises(Unavailable) as caught:
        svc.search_vector(np.zeros(8, np.float32), "another-model", SearchOptions(0.0, 3))
    assert (caught.value.message, caught.value.detail) == (NOT_READY, (
        "the embedding model (another-model) does not match the index (fixed-8d); rebuild the index or deploy the "
        "matching model archive"))
    with pytest.raises(Unavailable) as caught:
        svc.search_vector(np.zeros(7, np.float32), FixedClient.backbone, SearchOptions(0.0, 3))
    assert (caught.value.message, caught.value.detail) == (NOT_READY, "the query vector has 7 numbers, the index's "
                                                                      "model 8")


def test_a_located_item_is_searched_with_its_own_colour(located):
    from gateway.images import Crop

    svc, _ = located
    photo = _quadrants()
    found = svc.search_image(photo, SearchOptions(0.0, 3), locate=True)
    assert found.box == Crop(0, 0, 0.25, 0.25)
    assert np.array_equal(found.hist, histogram_of(photo.cropped(Crop(0, 0, 0.25, 0.25)).image))


def test_the_side_pool_is_made_once_per_process_with_named_threads():
    side = SideWork(workers=2)
    name = side.submit(lambda: threading.current_thread().name).result(5)
    pool = side._pool
    assert name.startswith("photo-side") and side.submit(lambda: 2).result(5) == 2 and side._pool is pool


def test_no_index_is_not_ready_with_the_reason_for_the_log(plain, tmp_path):
    from dataclasses import replace as copy

    from gateway.errors import Unavailable
    from gateway.service import NOT_READY

    svc = SearchService(copy(plain, index_uri=str(tmp_path / "nowhere")), FixedClient())
    with pytest.raises(Unavailable) as caught:
        svc.require_index()
    assert (caught.value.message, caught.value.detail) == (NOT_READY, "index not loaded")
    svc.indexes.error = "no index at /nowhere"
    with pytest.raises(Unavailable) as caught:
        svc.require_index()
    assert caught.value.detail == "no index at /nowhere"

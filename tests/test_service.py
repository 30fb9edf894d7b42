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

"""Ranking in the service (gateway/service.py): what it builds from the backend's candidates must equal
ranking the whole catalog at once (the definition of category-first ranking), on every path."""

from __future__ import annotations

import numpy as np
import pytest

from catalog.ann import build_ann
from catalog.store import ANN, IndexData, open_store, write_and_publish
from gateway.config import Config
from gateway.search import top_rows
from gateway.service import SearchOptions, SearchService


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
    keys = index.grouping.keys(scores, [code])[0] if code >= 0 else None
    return [row for row, _ in top_rows(scores, options.top_k, index.calibration.cosine(options.threshold), keys)]


#: Every search backend runs the same cases; "ann-filtered" sends filtered searches through the HNSW graph
#: (a bitmap selector) instead of the brute-force path small filters take.
BACKENDS = ["exact", "ann", "ann-filtered", "milvus"]


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
    write_and_publish(open_store(root / "index"), IndexData(x, products, {"backbone": FixedClient.backbone}), extra)
    kind = request.param.split("-")[0]
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
        got = [int(h.product["id"]) for h in svc.search_image(b"q", options).hits]
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
        whole = svc.search_image(b"q", SearchOptions(0.0, 15, category, category_first))
        pages = [svc.search_image(b"q", SearchOptions(0.0, 5, category, category_first, offset=o)) for o in (0, 5, 10)]
        assert [h.product["id"] for p in pages for h in p.hits] == [h.product["id"] for h in whole.hits]
        assert sum(p.first_group for p in pages) == whole.first_group

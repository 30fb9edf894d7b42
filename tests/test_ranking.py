"""The one ranking (ranking/): the gateway and the offline evaluation rank a query the same way; an answer
names the version that ranked it, even while versions swap. (A backend failure's answer: tests/test_milvus.py.)"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from evaluation.held_out import fit_gallery
from evaluation.ranked import gallery_view, ranked_rows
from gateway import create_app
from gateway.config import Config
from gateway.service import SearchService
from indexstore.store import APPEARANCE, APPEARANCE_VECTORS, IndexData, open_store, publish, write_version
from ranking import RankOptions
from ranking.appearance import DESCRIPTOR, HIST_SIZE, Appearance
from ranking.calibration import fit_calibration
from tests.conftest import jpeg_bytes
from tests.test_service import FixedClient

CATEGORIES = ["Shoes", "Bags", "Watches", "Tops"]


def catalog(n: int = 240, seed: int = 5, prefix: str = ""):
    """Clustered unit vectors in 8 dimensions, a category each, and a random colour histogram each."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CATEGORIES), n)
    x = rng.normal(size=(len(CATEGORIES), 8))[labels] + rng.normal(scale=0.8, size=(n, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hists = rng.dirichlet(np.ones(HIST_SIZE) * 0.3, n).astype(np.float32)
    products = [{"id": f"{prefix}{i}", "name": f"p{i}", "category": CATEGORIES[c]} for i, c in enumerate(labels)]
    return x, hists, products


def version_data(x, hists, products) -> tuple[IndexData, dict[str, bytes]]:
    """An index version as the build writes it: calibration fitted on the catalog, histogram appearance."""
    space = Appearance(weight=0.85)
    buf = io.BytesIO()
    np.save(buf, space.vectors(hists, x).astype(np.float32))
    manifest = {"backbone": FixedClient.backbone,
                "calibration": fit_calibration(x, [p["category"] for p in products]),
                "appearance": {"descriptor": DESCRIPTOR, "weight": space.weight, "projection": None}}
    return IndexData(x, products, manifest), {APPEARANCE: space.to_bytes(), APPEARANCE_VECTORS: buf.getvalue()}


@pytest.mark.parametrize("category_first", [True, False])
def test_the_evaluation_ranks_exactly_as_the_gateway(tmp_path, category_first):
    x, hists, products = catalog()
    store = open_store(tmp_path / "index")
    publish(store, write_version(store, *version_data(x, hists, products)))
    svc = SearchService(Config(index_uri=str(tmp_path / "index"), index_poll_s=0,
                               index_cache_dir=str(tmp_path / "copy")), FixedClient())
    svc.indexes.load()
    assert svc.require_index().appearance is not None  # the colour re-ranking takes part

    # The evaluation's side: its own fit on the gallery (here the whole catalog), its own exact backend.
    fitted = fit_gallery(x, np.array([p["category"] for p in products]), None)
    space = Appearance(weight=0.85)
    view = gallery_view(fitted.space(x), fitted.grouping, fitted.calibration, space, space.vectors(hists, x))
    rng = np.random.default_rng(11)
    queries = x[rng.integers(len(x), size=40)] + rng.normal(scale=0.4, size=(40, 8))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    query_hists = rng.dirichlet(np.ones(HIST_SIZE) * 0.3, 40).astype(np.float32)
    offline = ranked_rows(view, queries, 10, category_first, space.vectors(query_hists, queries))

    options = RankOptions(threshold=0.0, top_k=10, category_first=category_first)
    for i, query in enumerate(queries):
        found = svc.search_vector(query, FixedClient.backbone, options, query_hists[i])
        assert [int(h.product["id"]) for h in found.hits] == offline[i].tolist()


# --------------------------------------------------------------------------- swaps


def test_an_answer_names_the_version_that_ranked_it_while_versions_swap(tmp_path):
    """Each version's products carry its own id prefix; a burst of searches runs while the index swaps back
    and forth: every answer's results must come from the version its ``index_version`` names."""
    store = open_store(tmp_path / "index")
    prefix_of: dict[str, str] = {}
    versions = []
    for prefix, seed in (("a", 1), ("b", 2)):
        x, hists, products = catalog(80, seed, prefix)
        version = write_version(store, version_data(x, hists, products)[0])
        prefix_of[version] = prefix
        versions.append(version)
    publish(store, versions[0])
    client = FixedClient()
    client.vector = catalog(80, 1)[0][0]
    app = create_app(Config(index_uri=str(tmp_path / "index"), index_poll_s=0,
                            index_cache_dir=str(tmp_path / "copy")), client)
    manager = app.extensions["photo"].indexes
    answers: list[dict] = []
    stop = threading.Event()

    def burst() -> None:
        http = app.test_client()
        for _ in range(400):  # bounded: stops by itself
            if stop.is_set():
                return
            body = http.get("/api/products/a1/similar").get_json()  # an id of version a only: 404 under b
            if "results" in body:
                answers.append(body)
            found = http.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg")},
                              content_type="multipart/form-data").get_json()
            answers.append(found)

    workers = [threading.Thread(target=burst) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(60):  # bounded number of swaps
        publish(store, versions[(i + 1) % 2])
        manager.refresh()
    stop.set()
    for w in workers:
        w.join(timeout=60)
    assert len(answers) > 50 and {a["index_version"] for a in answers} == set(versions)
    for answer in answers:
        assert answer["results"], answer
        assert {r["id"][0] for r in answer["results"]} == {prefix_of[answer["index_version"]]}

"""The gateway on a calibrated index (scores and thresholds in calibrated percent, on both sides of the
threshold) and on a model that does not match its index (503 and not ready, never a wrong ranking)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gateway import create_app
from gateway.config import Config
from indexstore.store import IndexData, open_store, write_and_publish
from tests.conftest import ADMIN, jpeg_bytes

#: cosine → percent: 0.2 → 0 %, 0.5 → 40 %, 0.8 → 70 %, 1.0 → 100 % (straight lines between).
POINTS = [[0.2, 0.0], [0.5, 40.0], [0.8, 70.0], [1.0, 100.0]]
#: Each product's cosine to the query (e1) and the percent the calibration makes of it.
COSINES = [1.0, 0.9, 0.8, 0.79, 0.5, 0.1]
PERCENTS = [100.0, 85.0, 70.0, 69.0, 40.0, 0.0]


class Client:
    def __init__(self, backbone: str = "fixed-4d", dim: int = 4) -> None:
        self.backbone, self.vector = backbone, np.eye(dim, dtype=np.float32)[0]

    def embed(self, blob: bytes):
        return self.vector, self.backbone

    def probe(self) -> str:
        return self.backbone


@pytest.fixture
def index_dir(tmp_path):
    rows = np.array([[c, np.sqrt(1 - c * c), 0, 0] for c in COSINES], np.float32)
    products = [{"id": str(i), "name": f"p{i}", "category": "Bags"} for i in range(len(COSINES))]
    write_and_publish(open_store(tmp_path / "index"), IndexData(rows, products, {
        "backbone": "fixed-4d", "calibration": {"points": POINTS}}))
    return tmp_path


def app_for(tmp_path, client: Client):
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    ready_cache_s=0)
    return create_app(config, client=client).test_client()


def search(web, **fields):
    return web.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), **fields})


def test_scores_are_shown_in_calibrated_percent(index_dir):
    answer = search(app_for(index_dir, Client()), threshold="0", top_k="10").get_json()
    assert [r["id"] for r in answer["results"]] == ["0", "1", "2", "3", "4", "5"]  # 0 % admits everything
    assert [r["similarity"] for r in answer["results"]] == pytest.approx(PERCENTS, abs=0.01)
    assert [r["score"] for r in answer["results"]] == pytest.approx(COSINES, abs=1e-6)


# A product exactly at the threshold is shown (its float32 cosine may be a hair below: 0.9 is 0.89999998).
@pytest.mark.parametrize(("threshold", "shown"), [("70", 3), ("70.01", 2), ("69", 4), ("40", 5), ("85", 2),
                                                  ("85.01", 1), ("100", 1)])
def test_the_threshold_is_calibrated_percent_on_both_sides(index_dir, threshold, shown):
    answer = search(app_for(index_dir, Client()), threshold=threshold).get_json()
    assert [r["id"] for r in answer["results"]] == [str(i) for i in range(shown)]


def test_the_default_threshold_is_seventy_calibrated_percent(index_dir):
    answer = search(app_for(index_dir, Client())).get_json()
    assert [r["similarity"] for r in answer["results"]] == pytest.approx([100.0, 85.0, 70.0], abs=0.01)


def test_a_model_that_does_not_match_the_index_is_refused_and_not_ready(index_dir, caplog):
    """The shopper is told search is not ready; the reason (model ids) goes to the log and the admin /readyz."""
    web = app_for(index_dir, Client(backbone="other-4d"))
    answer = search(web, threshold="0")
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "search is not ready right now: please try again in a few minutes"
    assert ("the embedding model (other-4d) does not match the index (fixed-4d); rebuild the index or deploy the "
            "matching model archive") in caplog.text and answer.headers["X-Request-Id"] in caplog.text
    ready = web.get("/readyz", environ_overrides=ADMIN)
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    assert ready.get_json()["reason"] == "model mismatch: TorchServe serves other-4d, index was built with fixed-4d"
    assert app_for(index_dir, Client()).get("/readyz").get_json()["ready"] is True


def test_a_vector_of_another_size_is_refused(index_dir, caplog):
    answer = search(app_for(index_dir, Client(dim=5)), threshold="0")
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "search is not ready right now: please try again in a few minutes"
    assert "the query vector has 5 numbers, the index's model 4" in caplog.text

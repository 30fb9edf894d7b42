"""The "no close match" rule (ranking/no_match.py): fitted from the catalog at build time, applied by the
gateway on both sides of its threshold, shown on the page and in the API without a category claim."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gateway import create_app
from gateway.config import Config
from gateway.images import QueryImage
from gateway.service import SearchOptions, SearchService
from indexstore.store import IndexData, open_store, write_and_publish
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.no_match import MAX_FALSE_NO_MATCH, best_scores, fit_no_match
from tests.conftest import jpeg_bytes

PERCENT = Calibration(UNCALIBRATED).percent


#: How far two float32 dot products of unit vectors may differ when computed in another order (a few ulps
#: of a number near 1, far below the 0.001 a stored score or percent is rounded to).
FLOAT32_SUMS = 1e-6


def clustered(per: int = 40, kinds: int = 5, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(kinds, dim))
    labels = np.repeat(np.arange(kinds), per)
    x = centres[labels] + rng.normal(scale=0.4, size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [f"k{c}" for c in labels]


def test_best_scores_leave_out_the_row_its_twins_and_its_category():
    x = np.array([[1, 0], [1, 0], [0.8, 0.6], [0, 1]], np.float32)  # rows 0 and 1 are the same picture
    carried, lacking = best_scores(x, np.array(["a", "a", "a", "b"]), np.array([0, 3]))
    assert carried.tolist() == pytest.approx([0.8, 0.6])  # row 0: not itself, not its twin → row 2
    assert lacking.tolist() == pytest.approx([0.0, 0.6])  # row 0 vs category b; row 3 vs category a


def test_the_fitted_rule_keeps_false_no_match_at_most_five_percent_and_catches_the_rest():
    x, labels = clustered()
    rule = fit_no_match(x, labels, PERCENT)
    assert rule["false_no_match"] <= MAX_FALSE_NO_MATCH and rule["not_carried_caught"] > 0.5
    assert 0 < rule["percent"] < 100 and rule["fitted_on"] == len(labels)


@pytest.mark.parametrize(("rows", "kinds"), [(49, 5), (200, 1)])
def test_no_rule_without_enough_labelled_products_or_categories(rows, kinds):
    x, labels = clustered(per=rows // kinds, kinds=kinds)
    x, labels = x[:rows], labels[:rows]
    assert fit_no_match(x, labels, PERCENT) is None


def brute_force_rule(x: np.ndarray, labels: list[str]) -> tuple[float, float, float]:
    """The rule worked out pair by pair: (threshold percent, false no-match share, not-carried share caught)."""
    sims, lab = x @ x.T, np.asarray(labels)
    carried, lacking = [], []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i and sims[i, j] < 0.999]
        carried.append(100 * max(sims[i, j] for j in others))
        lacking.append(100 * max(sims[i, j] for j in others if lab[j] != lab[i]))
    threshold = float(np.quantile(carried, 0.05))
    return threshold, float(np.mean(np.array(carried) < threshold)), float(np.mean(np.array(lacking) < threshold))


def test_the_fitted_rule_equals_its_definition_worked_out_pair_by_pair():
    x, labels = clustered(per=12, kinds=5)
    rule = fit_no_match(x, labels, PERCENT)
    threshold, false_share, caught = brute_force_rule(x, labels)
    assert rule["percent"] == round(threshold, 2)  # rounded as stored: 2 decimals, shares 3
    assert rule["false_no_match"] == round(false_share, 3) and rule["not_carried_caught"] == round(caught, 3)
    assert (rule["fitted_on"], rule["signal"]) == (60, "best calibrated similarity")
    assert rule["source"].startswith("leave-one-out (carried) and leave-one-category-out (not carried)")


def test_shares_count_scores_strictly_below_the_threshold_and_keep_three_decimals():
    # 81 carried scores: the 5% quantile is exactly the 5th lowest, so "below" (4 of 81) and "at or below"
    # (5 of 81) differ; neither share is a round number, so the stored rounding shows.
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 27)
    x = rng.normal(size=(3, 16))[labels] + rng.normal(size=(81, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rule = fit_no_match(x, [f"k{c}" for c in labels], PERCENT)
    threshold, false_share, caught = brute_force_rule(x, [f"k{c}" for c in labels])
    assert false_share == 4 / 81 and rule["false_no_match"] == 0.049
    assert rule["not_carried_caught"] == round(caught, 3) == 0.765
    assert rule["percent"] == round(threshold, 2)


def test_no_rule_when_no_photo_has_a_neighbour_outside_its_category():
    # 50 products around one point (each within the twin cosine of it, not of each other) and a category of
    # 5 copies of that point: every neighbour in another category is a twin, so nothing measures "not carried".
    dim = 51
    around = np.zeros((50, dim), np.float32)
    around[:, 0] = 0.99949
    around[np.arange(50), np.arange(1, 51)] = np.sqrt(1 - 0.99949 ** 2)
    centre = np.zeros((5, dim), np.float32)
    centre[:, 0] = 1
    assert fit_no_match(np.vstack([around, centre]), ["a"] * 50 + ["b"] * 5, PERCENT) is None


def test_two_thousand_products_are_fitted_on_by_default_with_seed_zero():
    x, labels = clustered(per=401, kinds=5)  # 2,005 products
    assert fit_no_match(x, labels, PERCENT)["fitted_on"] == 2000
    small = clustered(per=30, kinds=5)
    assert fit_no_match(*small, PERCENT, max_items=60) == fit_no_match(*small, PERCENT, max_items=60, seed=0)
    assert fit_no_match(*small, PERCENT, max_items=60) != fit_no_match(*small, PERCENT, max_items=60, seed=1)


def test_fifty_labelled_products_make_a_rule_and_small_or_unlabelled_categories_do_not_count():
    x, labels = clustered(per=10, kinds=5)
    assert fit_no_match(x, labels, PERCENT)["fitted_on"] == 50
    # 46 in categories of 5+, plus 4 in a category of 4 and unlabelled rows: 46 count, too few.
    relabelled = labels[:46] + ["four"] * 4
    assert fit_no_match(x, relabelled, PERCENT) is None
    assert fit_no_match(x, labels[:45] + [""] * 5, PERCENT) is None
    assert fit_no_match(x, labels[:45] + ["five"] * 5, PERCENT)["fitted_on"] == 50


def test_two_categories_are_enough_and_one_is_not():
    x, labels = clustered(per=25, kinds=2)
    assert fit_no_match(x, labels, PERCENT)["fitted_on"] == 50
    assert fit_no_match(x, ["one"] * 50, PERCENT) is None


def test_a_large_catalog_is_sampled_reproducibly_and_blocks_do_not_change_the_scores():
    x, labels = clustered(per=30, kinds=5)
    rule = fit_no_match(x, labels, PERCENT, max_items=80, seed=4)
    assert rule["fitted_on"] == 80 and rule == fit_no_match(x, labels, PERCENT, max_items=80, seed=4)
    sample = np.sort(np.random.default_rng(4).choice(150, 80, replace=False))  # 80 different products
    carried, _ = best_scores(x, np.asarray(labels), sample)
    assert rule["percent"] == round(float(np.quantile(PERCENT(carried), MAX_FALSE_NO_MATCH)), 2)
    assert fit_no_match(x, labels, PERCENT, max_items=150)["fitted_on"] == 150
    rows = np.arange(150)
    for a, b in zip(best_scores(x, np.asarray(labels), rows, block=7), best_scores(x, np.asarray(labels), rows),
                    strict=True):
        # Two block sizes are two matrix shapes: OpenBLAS may pick another kernel for each and round the last
        # bit differently (AMD EPYC: 0.933717 vs 0.9337171). Equal to float32 precision, not to the bit.
        np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT32_SUMS)


def test_a_neighbour_at_the_twin_cosine_is_left_out_and_one_just_below_is_not():
    def pair(cosine: float) -> np.ndarray:
        return np.array([[1, 0], [cosine, np.sqrt(1 - cosine ** 2)], [0, 1]], np.float32)

    labels = np.array(["a", "a", "b"])
    assert best_scores(pair(0.9995), labels, np.array([0]))[0][0] == pytest.approx(0.0, abs=1e-3)  # a twin
    assert best_scores(pair(0.998), labels, np.array([0]))[0][0] == pytest.approx(0.998, abs=1e-4)


class FixedClient:
    backbone = "fixed-4d"
    vector = np.zeros(4, np.float32)

    def embed(self, blob: bytes):
        return self.vector, self.backbone

    def probe(self) -> str:
        return self.backbone


def query(cosine: float) -> np.ndarray:
    """A unit vector whose best cosine to the catalog below is exactly ``cosine`` (with row 0, e1)."""
    return np.array([cosine, np.sqrt(1 - cosine * cosine), 0, 0], np.float32)


@pytest.fixture
def app_and_service(tmp_path):
    rows = np.array([[1, 0, 0, 0], [0.9, 0, np.sqrt(0.19), 0], [0, 0, 0, 1], [0, 0, 0.6, 0.8]], np.float32)
    kinds = ["Bags", "Bags", "Shoes", "Shoes"]
    products = [{"id": str(i), "name": f"p{i}", "category": c} for i, c in enumerate(kinds)]  # no price: untrusted
    write_and_publish(open_store(tmp_path / "index"), IndexData(rows, products, {
        "backbone": FixedClient.backbone, "no_match": {"percent": 50.0}}))
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"))
    client = FixedClient()
    return create_app(config, client=client), SearchService(config, client)


@pytest.mark.parametrize(("cosine", "expected"), [(0.5, False), (0.49, True)])
def test_the_rule_on_both_sides_of_its_threshold(app_and_service, cosine, expected):
    app, svc = app_and_service
    svc.indexes.load()
    svc.client.vector = query(cosine)
    found = svc.search_image(QueryImage.decode(jpeg_bytes(), 10**7), SearchOptions(threshold=0, top_k=3))
    assert found.no_close_match is expected
    assert (found.guess is None) is expected  # never a category claim when nothing is close
    app.extensions["photo"].client.vector = query(cosine)
    web = app.test_client()
    answer = web.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0"}).get_json()
    assert answer["no_close_match"] is expected and (answer["category_first"] is None) is expected
    page = web.post("/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0"})
    html = page.get_data(as_text=True)
    assert ("We don't seem to carry this" in html) is expected and ("Looks like" in html) is not expected


def test_more_like_this_never_says_no_close_match(app_and_service):
    _, svc = app_and_service
    svc.indexes.load()
    assert svc.similar("2", SearchOptions(threshold=0, top_k=3)).no_close_match is False


@pytest.mark.parametrize("rule", [{"percent": "50"}, {"percent": 150}, {"percent": -0.01}, {"percent": 100.01},
                                  {"percent": True}, {"percent": float("nan")}, {}, "50", [50]])
def test_a_malformed_rule_in_the_manifest_is_refused(rule):
    from indexstore.manifest import Manifest, ManifestError

    good = {"version": "v", "backbone": "b", "count": 0, "dim": 0}
    with pytest.raises(ManifestError, match="no_match"):
        Manifest.parse(good | {"no_match": rule})
    assert Manifest.parse(good | {"no_match": None}).no_match_percent is None  # a small catalog has no rule
    assert Manifest.parse(good).no_match_percent is None
    assert Manifest.parse(good | {"no_match": {"percent": 0}}).no_match_percent == 0.0
    assert Manifest.parse(good | {"no_match": {"percent": 100}}).no_match_percent == 100.0


def test_prices_show_only_where_the_catalog_has_them(tmp_path):
    rows = np.eye(4, dtype=np.float32)
    products = [{"id": "1", "name": "priced", "category": "A", "price": 1299.5},
                {"id": "2", "name": "unpriced", "category": "A", "price": None},
                {"id": "3", "name": "odd", "category": "A", "price": "free"}, {"id": "4", "name": "none"}]
    write_and_publish(open_store(tmp_path / "index"), IndexData(rows, products, {"backbone": FixedClient.backbone}))
    config = Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"))
    html = create_app(config, client=FixedClient()).test_client().get(
        "/products/2/similar?threshold=0&category_first=0").get_data(as_text=True)
    assert html.count('class="price"') == 1 and "1,299.50" in html and "free" not in html


@pytest.mark.parametrize(("field", "value", "words"), [("category", "Shoes", "Nothing in Shoes comes close"),
                                                        ("min_price", "1", "Nothing in this price range comes close")])
def test_a_filter_that_hides_the_close_products_is_said_so_not_we_dont_carry_this(app_and_service, field, value,
                                                                                   words):
    app, _ = app_and_service
    app.extensions["photo"].client.vector = query(0.9)  # a bag at 90 %: carried; every shoe at 0 %
    web = app.test_client()
    fields = {"threshold": "0", field: value}
    answer = web.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), **fields}).get_json()
    assert answer["no_close_match"] is False and answer["closer_outside_filter"] is True
    html = web.post("/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), **fields}).get_data(as_text=True)
    assert words in html and "We don't seem to carry this" not in html
    plain = web.post("/api/search", data={"file": (io.BytesIO(jpeg_bytes()), "q.jpg"), "threshold": "0"}).get_json()
    assert plain["closer_outside_filter"] is False and plain["results"][0]["id"] == "0"


def test_best_scores_over_a_file_are_those_over_the_array(tmp_path):
    """A catalog bigger than memory is read from its file a block at a time: the same scores (within float32
    precision: other block shapes), with query rows on both sides of each block boundary."""
    from safeio.rowfile import RowWriter

    x, labels = clustered(per=30, kinds=5)
    with RowWriter(tmp_path / "search.npy", *x.shape) as out:
        out.append(x)
    rows = np.array([0, 6, 7, 13, 14, 149])
    for a, b in zip(best_scores(out.close(), np.asarray(labels), rows, block=7),
                    best_scores(x, np.asarray(labels), rows), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT32_SUMS)

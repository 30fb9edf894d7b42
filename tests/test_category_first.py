"""Category-first ranking (ranking/category_first.py): the vote, the evaluation with it, and the gateway's
use of it on an index whose vectors are laid out by hand."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from evaluation.metrics import evaluate
from evaluation.ranked import gallery_view, ranked_rows
from gateway import create_app
from gateway.config import Config
from indexstore.store import IndexData, open_store, publish, write_version
from ranking.calibration import UNCALIBRATED, Calibration
from ranking.category_first import CategoryVote, Grouping
from tests.conftest import jpeg_bytes

UNCAL = Calibration([[0.0, 0.0], [1.0, 100.0]]).percent  # percent = 100·cosine, as in an uncalibrated index


def test_vote_weights_fall_off_with_similarity():
    vote = CategoryVote(k=3, temperature=2.0)
    # weights exp((p - 90)/2): A at 90% → 1; two B at 89% → e^-0.5 each, 1.21 together: B wins
    winner, share = vote.vote(np.array([[0, 1, 1]]), np.array([[90.0, 89, 89]]), 2)
    assert winner.tolist() == [1]
    assert share[0] == pytest.approx(2 * math.exp(-0.5) / (1 + 2 * math.exp(-0.5)))
    # two B at 88% → e^-1 each, 0.74 together: A wins
    winner, share = vote.vote(np.array([[0, 1, 1]]), np.array([[90.0, 88, 88]]), 2)
    assert winner.tolist() == [0] and share[0] == pytest.approx(1 / (1 + 2 * math.exp(-1)))


def test_identical_picture_outweighs_many_lookalikes():
    codes = np.array([[0] + [1] * 9])
    percents = np.array([[100.0] + [80.0] * 9])
    winner, share = CategoryVote().vote(codes, percents, 2)
    assert winner.tolist() == [0] and share[0] > 0.99


def test_unlabelled_neighbours_do_not_vote():
    codes = np.array([[-1, -1, 1], [-1, -1, -1]])
    winner, _ = CategoryVote(k=3).vote(codes, np.array([[99.0, 98, 90], [99, 98, 97]]), 2)
    assert winner.tolist() == [1, -1]


def test_guess_ignores_excluded_rows():
    grouping = Grouping.from_labels(["A", "B", "B", "B", ""], UNCAL, CategoryVote(k=4, temperature=1e9))
    assert grouping.names == ["A", "B"] and grouping.codes.tolist() == [0, 1, 1, 1, -1]
    # Rows 1-3 (B) are excluded (e.g. the query itself, or filtered out) but still fall among the top 4.
    # Counted, they would outvote A three to one at this temperature; excluded, only A votes.
    sim = np.array([[0.99, -np.inf, -np.inf, -np.inf, 0.98]])
    winner, share = grouping.guess(sim)
    assert winner.tolist() == [0] and share.tolist() == [1.0]


def test_unlabelled_neighbours_set_the_scale_but_get_no_share():
    # Weights are relative to the best neighbour, labelled or not: A at 98% → e^-0.5, B at 90% → e^-4.5.
    winner, share = CategoryVote(k=3).vote(np.array([[-1, 0, 1]]), np.array([[99.0, 98, 90]]), 2)
    a, b = math.exp(-0.5), math.exp(-4.5)
    assert winner.tolist() == [0] and share[0] == pytest.approx(a / (a + b))
    winner, share = CategoryVote(k=3).vote(np.array([[-1, -1]]), np.array([[99.0, 98]]), 2)
    assert winner.tolist() == [-1] and share.tolist() == [0.0]


def test_the_vote_per_row_in_any_order_at_any_temperature():
    codes, percents = np.array([[0, 1, 1], [1, 0, 0]]), np.array([[90.0, 89, 89], [70.0, 69, 60]])
    winner, share = CategoryVote(temperature=1.0).vote(codes, percents, 2)
    b = 2 * math.exp(-1)  # row 0 at temperature 1: B's two votes e^-1 each, A's 1
    assert winner.tolist() == [0, 1]
    assert share.tolist() == pytest.approx([1 / (1 + b), 1 / (1 + math.exp(-1) + math.exp(-10))])
    shuffled = CategoryVote(temperature=1.0).vote(codes[:, ::-1], percents[:, ::-1], 2)
    assert shuffled[0].tolist() == [0, 1] and shuffled[1].tolist() == pytest.approx(share.tolist())
    one_row = CategoryVote(temperature=1.0).vote(np.array([0, 1, 1]), np.array([90.0, 89, 89]), 2)
    assert one_row[0].tolist() == [0] and one_row[1].tolist() == pytest.approx([1 / (1 + b)])
    assert CategoryVote().vote(np.array([[-1]]), np.array([[50.0]]), 0)[0].tolist() == [-1]


def test_labels_become_sorted_codes_and_blank_is_unlabelled():
    grouping = Grouping.from_labels(["b", "", "a", "b", 7], UNCAL)
    assert grouping.names == ["7", "a", "b"] and grouping.codes.tolist() == [2, -1, 1, 2, 0]
    assert grouping.vote == CategoryVote()


def test_guess_with_fewer_products_than_voters_and_with_none():
    grouping = Grouping.from_labels(["A", "B", "B"], UNCAL, CategoryVote(k=10))
    winner, share = grouping.guess(np.array([[0.9, 0.5, 0.5], [0.1, 0.8, 0.7]]))
    assert winner.tolist() == [0, 1]
    b = 2 * math.exp(-20)  # row 0: A at 90%, the two B at 50%: e^-20 each
    assert share.tolist() == pytest.approx([1 / (1 + b), 1.0])
    empty = Grouping.from_labels([], UNCAL)
    winner, share = empty.guess(np.zeros((2, 0)))
    assert winner.tolist() == [-1, -1] and share.tolist() == [0.0, 0.0]


def test_only_the_first_k_candidates_vote_for_one_query():
    grouping = Grouping.from_labels(["A", "B", "B", "B"], UNCAL, CategoryVote(k=2, temperature=1e9))
    # Candidates best first: A, B, then two more B that would win three to one if they voted (equal weights).
    code, share = grouping.guess_candidates(np.array([0, 1, 2, 3]), np.array([0.9, 0.8, 0.7, 0.7]))
    assert (code, share) == (0, pytest.approx(0.5)) and isinstance(code, int) and isinstance(share, float)
    sharp = Grouping.from_labels(["A", "B", "B", "B"], UNCAL, CategoryVote(k=2))
    assert sharp.guess_candidates(np.array([0, 1, 2, 3]), np.array([0.9, 0.8, 0.7, 0.7]))[0] == 0
    assert sharp.guess_candidates(np.array([1, 0, 2, 3]), np.array([0.9, 0.8, 0.7, 0.7]))[0] == 1
    assert sharp.guess_candidates(np.array([], dtype=np.int64), np.array([])) == (-1, 0.0)


def leave_one_out(x, grouping):
    """Each row's ranking of the others, by the gateway's ranking (evaluation/ranked.py)."""
    view = gallery_view(x, grouping, Calibration(UNCALIBRATED))
    return ranked_rows(view, x, len(x) - 1, True, excluded=np.eye(len(x), dtype=bool))


def angles(*degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


# Six products on a circle; worked out by hand below.
DEGREES = (0, 3, 5, 8, 90, 95)
LABELS = ["B", "A", "B", "B", "A", "A"]


def test_evaluation_ranks_category_first_as_computed_by_hand():
    # With k = 3 and (nearly) equal weights the 3 nearest vote by majority. Neighbours by angle:
    #   p0 B: p1 A, p2 B, p3 B → B: p2 p3 | p1 p4 p5   visual top-2: p1 p2 → [0, 1]
    #   p1 A: p2 B, p0 B, p3 B → B: p2 p0 | ...        visual: p2 p0 → [0, 0]
    #   p2 B: p1 A, p3 B, p0 B → B: p3 p0 | ...        visual: p1 p3 → [0, 1]
    #   p3 B: p2 B, p1 A, p0 B → B: p2 p0 | ...        visual: p2 p1 → [1, 0]
    #   p4 A: p5 A, p3 B, p2 B → B: p3 p2 | ...        visual: p5 p3 → [1, 0]
    #   p5 A: p4 A, p3 B, p2 B → B: p3 p2 | ...        visual: p4 p3 → [1, 0]
    x = angles(*DEGREES)
    grouping = Grouping.from_labels(LABELS, UNCAL, CategoryVote(k=3, temperature=1e9))
    grouped = evaluate(x, LABELS, ks=(1, 2), grouping=grouping).metrics
    assert grouped["precision@1"] == pytest.approx(3 / 6) and grouped["precision@2"] == pytest.approx(6 / 12)
    visual = evaluate(x, LABELS, ks=(1, 2)).metrics
    assert visual["precision@1"] == pytest.approx(3 / 6) and visual["precision@2"] == pytest.approx(5 / 12)
    idx = leave_one_out(x, grouping)
    assert idx[0].tolist() == [2, 3, 1, 4, 5]  # B first, each group by similarity
    # With the shipped temperature (2 percent points) p4's and p5's close A neighbour outweighs two far B's.
    shipped = Grouping.from_labels(LABELS, UNCAL, CategoryVote(k=3))
    idx = leave_one_out(x, shipped)
    assert idx[4, :2].tolist() == [5, 1] and idx[5, :2].tolist() == [4, 1]


class VectorClient:
    """TorchServe stand-in: each query image (by its bytes) has a vector laid out by hand."""

    model = "hand-made-2d"

    def __init__(self) -> None:
        self.vectors: dict[bytes, np.ndarray] = {}

    def image_at(self, degrees: float) -> bytes:
        blob = jpeg_bytes(color=(int(degrees) % 256, 40, 40))
        self.vectors[blob] = angles(degrees)[0]
        return blob

    def embed(self, blob: bytes):
        return self.vectors[blob], self.model

    def probe(self) -> str:
        return self.model


@pytest.fixture
def hand_made(tmp_path):
    store = open_store(tmp_path / "index")
    products = [{"id": f"p{i}", "name": f"Product {i}", "category": c, "price": 10.0, "image_url": f"images/p{i}.jpg"}
                for i, c in enumerate(LABELS)]
    publish(store, write_version(store, IndexData(angles(*DEGREES), products, {"backbone": VectorClient.model})))
    stub = VectorClient()
    app = create_app(Config(index_uri=str(tmp_path / "index"), index_poll_s=0, index_cache_dir=str(tmp_path / "c")),
                     client=stub)
    return app.test_client(), stub


def ask(client, blob: bytes, path: str = "/api/search", **fields):
    return client.post(path, data={"file": (io.BytesIO(blob), "q.jpg"), "threshold": "0", **fields},
                       content_type="multipart/form-data")


def test_gateway_ranks_the_guessed_category_first(hand_made):
    client, stub = hand_made
    query = stub.image_at(1)  # nearest: p0 B (1°), p1 A (2°), p2 B (4°), p3 B (7°), p4 A, p5 A
    body = ask(client, query).get_json()
    assert [r["id"] for r in body["results"]] == ["p0", "p2", "p3", "p1", "p4", "p5"]
    guess = body["category_first"]
    assert guess["category"] == "B" and guess["source"] == "vote" and guess["results"] == 3
    # B's weights 1 + e^-0.115 + e^-0.365 against A's e^-0.023 (percent points / 2, from the best match)
    assert guess["confidence"] == pytest.approx(0.726, abs=0.002)
    scores = [r["score"] for r in body["results"]]
    assert scores[:3] == sorted(scores[:3], reverse=True) and scores[3:] == sorted(scores[3:], reverse=True)

    plain = ask(client, query, category_first="false").get_json()
    assert [r["id"] for r in plain["results"]] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert plain["category_first"] is None
    filtered = ask(client, query, category="a").get_json()
    assert [r["id"] for r in filtered["results"]] == ["p1", "p4", "p5"] and filtered["category_first"] is None


def test_threshold_applies_before_grouping(hand_made):
    client, stub = hand_made
    body = ask(client, stub.image_at(1), threshold="99.5", top_k="2").get_json()  # cos ≥ 0.995: p0, p1, p2
    assert [r["id"] for r in body["results"]] == ["p0", "p2"]
    body = ask(client, stub.image_at(1), threshold="99.5", top_k="5").get_json()
    assert [r["id"] for r in body["results"]] == ["p0", "p2", "p1"]


def test_more_like_this_puts_the_products_own_category_first(hand_made):
    client, _ = hand_made
    body = client.get("/api/products/p1/similar?threshold=0").get_json()
    assert [r["id"] for r in body["results"]] == ["p4", "p5", "p2", "p0", "p3"]
    assert body["category_first"] == {"category": "A", "confidence": 1.0, "source": "product", "results": 2}
    body = client.get("/api/products/p1/similar?threshold=0&category_first=0").get_json()
    assert [r["id"] for r in body["results"]] == ["p2", "p0", "p3", "p4", "p5"]
    html = client.get("/products/p1/similar?threshold=0").get_data(as_text=True)
    assert "<strong>A</strong>\n      come first, like the product, then other categories." in html
    assert "/products/p1/similar?category_first=0&amp;threshold=0" in html


def test_page_says_which_category_comes_first(hand_made):
    client, stub = hand_made
    html = ask(client, stub.image_at(1), path="/search").get_data(as_text=True)
    assert "Looks like <strong>B</strong>" in html and "so B come first, then other categories." in html
    assert html.index('class="divider"') > html.index("Product 3") and html.index('class="divider"') < html.index(
        "Product 1<")
    html = ask(client, stub.image_at(1), path="/search", category_first="0").get_data(as_text=True)
    assert "Looks like" not in html and 'class="divider"' not in html
    assert 'name="category_first" value="1" >' in html  # the box stays unticked on the results page


@pytest.mark.parametrize("value", ["maybe", "2", "[]"])
def test_bad_category_first_is_a_clear_400(hand_made, value):
    client, stub = hand_made
    resp = ask(client, stub.image_at(1), category_first=value)
    assert resp.status_code == 400 and "category_first must be true or false" in resp.get_json()["error"]


def test_each_row_is_weighed_against_its_own_best_neighbour():
    # Two queries in one batch, one close to the catalog and one far from it, at a sharp temperature: were the
    # weights scaled by the batch's best (or added to it), the far row's would vanish (or overflow) and it
    # would get no guess.
    codes, percents = np.array([[0, 1], [1, 0]]), np.array([[100.0, 99.0], [2.0, 1.0]])
    winner, share = CategoryVote(temperature=0.1).vote(codes, percents, 2)
    assert winner.tolist() == [0, 1]
    assert share.tolist() == pytest.approx([1 / (1 + math.exp(-10))] * 2)

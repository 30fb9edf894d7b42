"""The handler's batch contract without TorchServe (fast; tests/test_embedding_handler.py runs it for real): one
batch mixing answer formats, body forms and a bad image answers each request in its own format, aligned with
its inputs, the bad one alone with 400."""

from __future__ import annotations

import base64
import json

import numpy as np

from handlers.embedder import Embedder
from handlers.embedding_handler import EmbeddingHandler
from modelio.protocol import COMPACT, decode_vector
from tests.conftest import demo_image


class Context:
    """What TorchServe's context gives a handler: per-request headers, and per-request answers set."""

    def __init__(self, headers: list[dict]) -> None:
        self.headers, self.types, self.statuses = headers, {}, {}

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx]

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.types[idx] = value

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses[idx] = (code, phrase)


def test_a_mixed_batch_answers_each_request_in_its_own_format(local_embedder: Embedder):
    handler = EmbeddingHandler()
    handler.embedder = local_embedder
    a, b = demo_image("10109"), demo_image("11043")
    rows = [{"body": a}, {"data": base64.b64encode(b).decode()}, {"body": b"not an image"},
            {"body": {"image": base64.b64encode(a).decode()}}]
    context = Context([{"Accept": COMPACT}, {"accept": "application/json"}, {"Accept": COMPACT}, {}])
    answers = [json.loads(out) for out in handler.handle(rows, context)]
    assert len(answers) == 4 and set(context.types.values()) == {"application/json"}
    assert "embedding_b64" in answers[0] and "embedding" not in answers[0]  # asked for the compact form
    assert "embedding" in answers[1] and "embedding_b64" not in answers[1]  # plain JSON
    assert "embedding" in answers[3]  # no Accept header: plain JSON
    assert context.statuses == {2: (400, "Bad image")} and "error" in answers[2]
    assert answers[2]["model"] == local_embedder.backbone_id
    want_a, want_b = local_embedder.embed_one(a), local_embedder.embed_one(b)
    assert float(decode_vector(answers[0]) @ want_a) >= 0.9999 and float(decode_vector(answers[3]) @ want_a) >= 0.9999
    assert float(decode_vector(answers[1]) @ want_b) >= 0.9999
    assert float(want_a @ want_b) < 0.99  # different pictures: a mixed-up batch would be seen
    assert np.isclose(np.linalg.norm(decode_vector(answers[1])), 1.0, atol=1e-4)


def test_a_several_image_request_answers_each_image_in_order_beside_one_image_requests(local_embedder: Embedder):
    """One batch: a one-image request, a three-image request with a bad image in the middle, the same sent as
    JSON bytes (no content type), and three malformed lists (empty, one over the limit, not a list)."""
    from modelio.protocol import MAX_IMAGES, decode_answers

    handler = EmbeddingHandler()
    handler.embedder = local_embedder
    a, b = demo_image("10109"), demo_image("11043")
    b64 = [base64.b64encode(x).decode() for x in (a, b"not an image", b)]
    over = [b64[0]] * (MAX_IMAGES + 1)
    rows = [{"body": a}, {"body": {"images": b64}}, {"body": json.dumps({"images": b64 + [7]}).encode()},
            {"body": {"images": []}}, {"body": {"images": over}}, {"body": {"images": "x"}},
            {"body": {"images": [b64[0]] * MAX_IMAGES}}]
    context = Context([{}, {"Accept": COMPACT}, {}, {}, {}, {}, {"Accept": COMPACT}])
    answers = [json.loads(out) for out in handler.handle(rows, context)]
    assert len(answers) == 7 and context.statuses == {i: (400, "Bad request") for i in (3, 4, 5)}
    assert all(answers[i]["error"] == "images must be a list of 1 to 64 base64 images" for i in (3, 4, 5))
    want_a, want_b = local_embedder.embed_one(a), local_embedder.embed_one(b)
    assert float(decode_vector(answers[0]) @ want_a) >= 0.9999
    for answer, extra in ((answers[1], 0), (answers[2], 1)):
        results = decode_answers(answer, 3 + extra)
        assert answer["model"] == local_embedder.backbone_id
        assert float(results[0].vector @ want_a) >= 0.9999 and float(results[2].vector @ want_b) >= 0.9999
        assert results[1].vector is None and "not" in results[1].error  # the bad one fails alone
        assert extra == 0 or results[3].error  # a number is not an image either
    assert "embedding_b64" in answers[1]["results"][0] and "embedding" in answers[2]["results"][0]
    assert len(answers[6]["results"]) == MAX_IMAGES  # exactly the limit is served


def test_a_batch_mixing_requests_that_ask_for_colour_and_ones_that_do_not(local_embedder: Embedder):
    """The colour histogram goes only to the images of the request that asked for it, comes from the same decode
    as the vector (it equals the build's own), and a bad image in that request still fails alone."""
    from modelio.colour import HIST_SIZE
    from modelio.protocol import decode_answers
    from ranking.appearance import colour_histogram

    handler = EmbeddingHandler()
    handler.embedder = local_embedder
    a, b = demo_image("10109"), demo_image("11043")
    images = [base64.b64encode(x).decode() for x in (a, b"junk", b)]
    rows = [{"body": {"images": images, "colour": True}}, {"body": {"images": images[:1]}}, {"body": a},
            {"body": {"images": images[:1], "colour": "yes"}}]  # only true asks
    answers = [json.loads(out) for out in handler.handle(rows, Context([{}, {}, {}, {}]))]
    coloured = decode_answers(answers[0], 3)
    assert coloured[1].error is not None and coloured[1].colour is None
    for got, blob in ((coloured[0], a), (coloured[2], b)):
        assert got.colour.shape == (HIST_SIZE,)
        np.testing.assert_allclose(got.colour, colour_histogram(blob, 40_000_000), atol=1e-6)
    assert float(decode_vector(answers[0]["results"][0]) @ local_embedder.embed_one(a)) >= 0.9999
    assert not np.allclose(coloured[0].colour, coloured[2].colour)  # each image its own
    assert decode_answers(answers[1], 1)[0].colour is None and "colour_b64" not in answers[2]
    assert decode_answers(answers[3], 1)[0].colour is None

"""The handler's batch contract without TorchServe (fast; tests/test_embedding_handler.py runs it for real): one
batch mixing answer formats, body forms and a bad image answers each request in its own format, aligned with
its inputs, the bad one alone with 400."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from handlers.embedder import Embedder
from handlers.embedding_handler import EmbeddingHandler, request_bytes, request_images, wants_compact
from modelio.protocol import COMPACT, MAX_IMAGES, decode_vector
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
    assert len(answers) == 4 and context.types == {i: "application/json" for i in range(4)}
    assert all(answers[i]["model"] == local_embedder.backbone_id for i in range(4))
    assert all(answers[i]["runtime"] == local_embedder.runtime for i in (0, 1, 3))
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
        assert answer["model"] == local_embedder.backbone_id and answer["runtime"] == local_embedder.runtime
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


# --- how a request's image is read (request_bytes, request_images, wants_compact): no model needed ---------------


@pytest.mark.parametrize(("row", "expected"), [
    ({"data": b"raw"}, b"raw"),  # a binary body
    ({"body": b"raw"}, b"raw"),
    ({"data": None, "body": b"from body"}, b"from body"),  # data present but empty: the body
    ({"data": b"data", "body": b"body"}, b"data"),  # both: data first
    ({"body": b"body", "data": b"data"}, b"data"),  # ... whichever TorchServe lists first
    ({"file": b"form upload"}, b"form upload"),  # a form upload under another field name
    ({}, b""),
    ({"body": {"image": base64.b64encode(b"img").decode()}}, b"img"),  # base64 in JSON, each key name
    ({"body": {"data": base64.b64encode(b"dat").decode()}}, b"dat"),
    ({"body": {"b64": base64.b64encode(b"b64").decode()}}, b"b64"),
    ({"body": {"image": base64.b64encode(b"first").decode(), "b64": "eA=="}}, b"first"),
    ({"body": {"other": "x"}}, b""),  # JSON without an image
    ({"body": "not base64!"}, b"not base64!"),  # text that is not base64: it fails later as not an image
    ({"body": "aGk="}, b"hi"),
    ({"body": "aGk=!"}, b"aGk=!"),  # base64 with a stray character is not read as the base64 around it
    ({"body": bytearray(b"ba")}, b"ba"),
])
def test_a_request_s_image_bytes_are_read_from_each_form(row, expected):
    assert request_bytes(row) == expected


def test_non_ascii_text_that_is_not_base64_is_kept_as_utf8_bytes():
    assert request_bytes({"body": "é?"}) == "é?".encode()
    assert request_bytes({"body": "a\ud800b"}) == b"a?b"  # even text no UTF-8 can hold: never an exception


@pytest.mark.parametrize(("row", "expected"), [
    ({"body": b"\xff\xd8 a jpeg"}, None),  # one image
    ({"body": {"image": "aGk="}}, None),
    ({"body": b"{not json"}, None),  # looks like JSON, is not: one image (fails later as not an image)
    ({"body": {"images": ["aGk="]}}, ([b"hi"], False)),
    ({"body": json.dumps({"images": ["aGk="], "colour": True}).encode()}, ([b"hi"], True)),  # JSON bytes
    ({"data": bytearray(json.dumps({"images": ["aGk="]}).encode())}, ([b"hi"], False)),
    ({"body": {"images": ["aGk=", 7, None]}}, ([b"hi", b"", b""], False)),  # a non-text item fails alone
    ({"body": {"images": ["aGk="], "colour": 1}}, ([b"hi"], False)),  # only true asks for colour
    ({"data": None, "body": {"images": ["aGk="]}}, ([b"hi"], False)),
])
def test_a_several_image_request_is_told_from_a_one_image_request(row, expected):
    assert request_images(row) == expected


@pytest.mark.parametrize("count", [0, MAX_IMAGES + 1])
def test_a_list_of_images_outside_the_limits_is_refused(count):
    with pytest.raises(ValueError, match=f"^images must be a list of 1 to {MAX_IMAGES} base64 images$"):
        request_images({"body": {"images": ["aGk="] * count}})


def test_a_list_of_images_at_the_limits_is_read():
    assert request_images({"body": {"images": ["aGk="]}}) == ([b"hi"], False)
    assert request_images({"body": {"images": ["aGk="] * MAX_IMAGES}}) == ([b"hi"] * MAX_IMAGES, False)
    with pytest.raises(ValueError):
        request_images({"body": {"images": "aGk="}})  # not a list


@pytest.mark.parametrize(("headers", "compact"), [
    ({"Accept": COMPACT}, True),
    ({"accept": COMPACT}, True),  # header names in any case
    ({"ACCEPT": f"application/json, {COMPACT}"}, True),
    ({"Accept": "application/json"}, False),
    ({"X-Accept": COMPACT}, False),
    ({}, False),
    (None, False),  # TorchServe gives None for a request without headers
])
def test_the_compact_answer_is_sent_only_to_who_accepts_it(headers, compact):
    assert wants_compact(Context([headers]), 0) is compact


@pytest.mark.parametrize(("cuda", "gpu_id", "device"), [
    (False, None, "cpu"), (False, 0, "cpu"),  # no GPU: the CPU, whatever TorchServe assigned
    (True, None, "cpu"),  # a GPU machine, but TorchServe gave this worker none
    (True, 0, "cuda:0"), (True, 3, "cuda:3"),
])
def test_the_handler_loads_the_archive_s_model_on_the_device_torchserve_assigned(monkeypatch, tmp_path, caplog,
                                                                                  cuda, gpu_id, device):
    import logging

    built = []

    class Loaded:
        backbone_id, dim, runtime = "model-id", 1280, "openvino"
        backbone = type("Backbone", (), {"feature_map_network": lambda self: built.append(True)})()

    opened = []
    monkeypatch.setattr("handlers.embedding_handler.torch.cuda.is_available", lambda: cuda)
    monkeypatch.setattr(Embedder, "from_model_dir", staticmethod(lambda path, device: opened.append((path, device))
                                                                 or Loaded()))
    context = type("Context", (), {"system_properties": {"model_dir": str(tmp_path), "gpu_id": gpu_id}})()
    handler = EmbeddingHandler()
    with caplog.at_level(logging.INFO, logger="handlers.embedding_handler"):
        handler.initialize(context)
    assert opened == [(tmp_path, device)] and handler.initialized is True and isinstance(handler.embedder, Loaded)
    assert built == [True]  # the feature map's network too, before any request
    assert f"loaded model-id (dim 1280) with runtime openvino on {device}" in [r.getMessage() for r in caplog.records]


def test_only_the_images_of_a_request_that_asks_pay_for_the_colour(local_embedder: Embedder, caplog):
    """The histogram is computed for the images whose request asked for it, and no other (it costs a pass over
    the pixels); the batch is logged with its size."""
    import logging

    asked = []

    class Spy:
        backbone_id, runtime = local_embedder.backbone_id, local_embedder.runtime

        def embed_bytes(self, blobs, colour):
            asked.append(list(colour))
            return local_embedder.embed_bytes(blobs, colour=colour)

    handler = EmbeddingHandler()
    handler.embedder = Spy()
    a = demo_image("10109")
    b64 = base64.b64encode(a).decode()
    rows = [{"body": a}, {"body": {"images": [b64, b64], "colour": True}}, {"body": {"images": [b64]}}]
    with caplog.at_level(logging.INFO, logger="handlers.embedding_handler"):
        handler.handle(rows, Context([{}, {}, {}]))
    assert asked == [[False, True, True, False]]
    assert "batch of 3" in [r.getMessage() for r in caplog.records]


def test_a_feature_map_request_is_answered_beside_embedding_requests(local_embedder: Embedder):
    """One batch: an image, a feature map at 96 px, a feature map of something that is not an image, one
    with a side out of range, one sent as JSON bytes; each gets its own answer, the bad ones 400 alone."""
    from handlers.embedding_handler import request_feature_map
    from modelio.protocol import decode_feature_map

    handler = EmbeddingHandler()
    handler.embedder = local_embedder
    a = demo_image("10109")
    b64 = base64.b64encode(a).decode()
    rows = [{"body": a}, {"body": {"feature_map": b64, "side": 96}},
            {"body": {"feature_map": base64.b64encode(b"nope").decode(), "side": 96}},
            {"body": {"feature_map": b64, "side": 641}},
            {"body": json.dumps({"feature_map": b64, "side": 64}).encode()}]
    context = Context([{}] * len(rows))
    answers = [json.loads(out) for out in handler.handle(rows, context)]
    assert float(decode_vector(answers[0]) @ local_embedder.embed_one(a)) >= 0.9999
    fmap = decode_feature_map(answers[1])
    assert fmap.shape == (local_embedder.dim, 3, 3) and answers[1]["model"] == local_embedder.backbone_id
    assert decode_feature_map(answers[4]).shape == (local_embedder.dim, 2, 2)
    assert context.statuses == {2: (400, "Bad request"), 3: (400, "Bad request")}
    assert "image" in answers[2]["error"] and "64 to 640" in answers[3]["error"]
    assert request_feature_map({"body": a}) is None and request_feature_map({"body": {"images": [b64]}}) is None
    assert request_feature_map({"body": {"feature_map": 7, "side": 96}}) == (b"", 96)  # fails as not an image


def test_a_feature_map_that_breaks_fails_its_request_alone(local_embedder: Embedder, monkeypatch):
    handler = EmbeddingHandler()
    handler.embedder = local_embedder
    a = demo_image("10109")

    def broken(blob, side):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(local_embedder, "feature_map", broken)
    context = Context([{}, {}])
    answers = handler.handle([{"body": {"feature_map": base64.b64encode(a).decode(), "side": 96}}, {"body": a}],
                             context)
    assert context.statuses == {0: (500, "Feature map failed")}
    assert json.loads(answers[0]) == {"error": "the feature map could not be computed"}
    assert "embedding" in json.loads(answers[1])

"""The embedding answer's wire format (modelio/protocol.py), both forms."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from modelio.protocol import decode_vector, encode_answer


@pytest.mark.parametrize("compact", [False, True])
def test_an_answer_round_trips_in_either_form(compact):
    vec = np.array([0.25, -1.5, 3.0], np.float64)
    raw = encode_answer(vec, "bb-1", "openvino", compact=compact)
    body = json.loads(raw)
    assert b" " not in raw  # no padding: 1,280 numbers per answer
    assert (body["dim"], body["model"], body["runtime"]) == (3, "bb-1", "openvino")
    assert ("embedding_b64" in body) is compact and ("embedding" in body) is not compact
    back = decode_vector(body)
    assert back.dtype == np.float32 and back.tolist() == [0.25, -1.5, 3.0]


def test_the_compact_form_is_little_endian_float32():
    body = json.loads(encode_answer(np.array([1.0, 2.0]), "m", "eager", compact=True))
    assert base64.b64decode(body["embedding_b64"]) == np.array([1.0, 2.0], "<f4").tobytes()


@pytest.mark.parametrize(("body", "message"), [
    ({"embedding": [1.0, 2.0], "dim": 3}, "embedding of shape (2,) does not match dim 3"),
    ({"embedding": [[1.0], [2.0]]}, "embedding of shape (2, 1) does not match dim None"),
    ({"embedding_b64": base64.b64encode(np.ones(2, "<f4").tobytes()).decode(), "dim": 4},
     "embedding of shape (2,) does not match dim 4"),
])
def test_a_malformed_vector_is_refused_by_shape(body, message):
    with pytest.raises(ValueError) as refused:
        decode_vector(body)
    assert str(refused.value) == message


def test_a_vector_without_dim_is_taken_as_it_is_and_bad_base64_is_refused():
    assert decode_vector({"embedding": [1, 2, 3]}).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        decode_vector({"embedding_b64": "not base64!"})


def test_a_colour_histogram_round_trips_and_a_malformed_one_is_refused():
    from modelio.colour import HIST_SIZE
    from modelio.protocol import EmbedResult, decode_answers, decode_colour, encode_answers

    hist = np.linspace(0, 1, HIST_SIZE, dtype=np.float32)
    body = json.loads(encode_answers([EmbedResult(vector=np.ones(4, np.float32), colour=hist),
                                      EmbedResult(vector=np.ones(4, np.float32))], "m", "eager", compact=True))
    first, second = decode_answers(body, 2)
    assert np.array_equal(first.colour, hist) and second.colour is None
    for bad in (hist[:-1], np.append(hist, 0.5), np.where(np.arange(HIST_SIZE) == 3, -0.1, hist),
                np.where(np.arange(HIST_SIZE) == 3, np.nan, hist)):
        entry = {"colour_b64": base64.b64encode(np.asarray(bad, "<f4").tobytes()).decode()}
        with pytest.raises(ValueError, match="colour histogram"):
            decode_colour(entry)
    assert decode_colour({}) is None

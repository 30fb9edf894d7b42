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

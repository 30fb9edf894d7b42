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
    assert np.array_equal(first.colour, hist) and second.colour is None and first.colour.dtype == np.float32
    good = base64.b64encode(np.asarray(hist, "<f4").tobytes()).decode()
    with pytest.raises(ValueError):  # a character outside base64 is refused, not skipped
        decode_colour({"colour_b64": good[:8] + "!" + good[8:]})
    for bad in (hist[:-1], np.append(hist, 0.5), np.where(np.arange(HIST_SIZE) == 3, -0.1, hist),
                np.where(np.arange(HIST_SIZE) == 3, np.nan, hist)):
        entry = {"colour_b64": base64.b64encode(np.asarray(bad, "<f4").tobytes()).decode()}
        with pytest.raises(ValueError, match="colour histogram"):
            decode_colour(entry)
    assert decode_colour({}) is None
    older = {"colour_b64": base64.b64encode(np.full(112, 1 / 112, "<f4").tobytes()).decode()}  # the 112-bin one
    with pytest.raises(ValueError, match=rf"^a colour histogram must be {HIST_SIZE} .*, got 112 \(an archive built "
                                         r"by other code sends another size: rebuild it, make mar\)$"):
        decode_colour(older)


def test_a_feature_map_round_trips_as_float16():
    from modelio.protocol import decode_feature_map, encode_feature_map

    fmap = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32) * 3
    body = json.loads(encode_feature_map(fmap, "m"))
    assert body["model"] == "m" and body["shape"] == [4, 3, 5]
    assert len(base64.b64decode(body["map_b64"])) == 2 * 4 * 3 * 5  # two bytes a value
    back = decode_feature_map(body)
    assert back.dtype == np.float32 and back.shape == (4, 3, 5)
    assert np.allclose(back, fmap, rtol=1e-3, atol=1e-3)
    # past float16's range the value is its largest, not infinity
    assert decode_feature_map(json.loads(encode_feature_map(np.full((1, 1, 1), 1e6), "m")))[0, 0, 0] == 65504.0


def _map_body(shape, values: bytes | None = None) -> dict:
    count = int(np.prod(shape)) if all(isinstance(n, int) and n > 0 for n in shape) else 1
    raw = values if values is not None else np.zeros(count, "<f2").tobytes()
    return {"model": "m", "shape": shape, "map_b64": base64.b64encode(raw).decode()}


@pytest.mark.parametrize("body, message", [
    (_map_body([2, 3]), "three positive"),
    (_map_body([2, 3, 0]), "three positive"),
    (_map_body([2, True, 3]), "three positive"),
    (_map_body([2, 3.0, 3]), "three positive"),
    ({"model": "m"}, "three positive"),
    ("not a dict", "three positive"),
    (_map_body([2, 3, 4], b"\0" * 46), "needs 48 bytes"),
    (_map_body([2, 3, 4], b"\0" * 50), "needs 48 bytes"),
    (_map_body([1, 1, 2], np.array([1.0, np.inf], "<f2").tobytes()), "finite"),
    (_map_body([1, 1, 2], np.array([1.0, np.nan], "<f2").tobytes()), "finite"),
])
def test_a_malformed_feature_map_is_refused(body, message):
    from modelio.protocol import decode_feature_map

    with pytest.raises(ValueError, match=message):
        decode_feature_map(body)


def test_a_feature_map_at_the_size_limit_is_read_and_one_value_more_is_refused():
    from modelio.protocol import MAX_MAP_VALUES, decode_feature_map

    assert decode_feature_map(_map_body([1, 1, MAX_MAP_VALUES])).shape == (1, 1, MAX_MAP_VALUES)
    with pytest.raises(ValueError, match="larger than"):
        decode_feature_map({"model": "m", "shape": [1, 1, MAX_MAP_VALUES + 1], "map_b64": ""})
    with pytest.raises(ValueError):
        decode_feature_map({"model": "m", "shape": [1, 1, 2], "map_b64": "not base64!"})

"""Query tokens (gateway/query_token.py): a search refined without the photo, and nothing else accepted."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.query_token import MAX_TOKEN_CHARS, ExpiredQuery, Query, QueryTokens, picture_digest

VECTOR = np.linspace(-1, 1, 8).astype(np.float32)
QUERY = Query(VECTOR, "model-a", "https://shop.example/a.jpg", picture_digest("data:image/jpeg;base64,AAAA"))


def test_a_token_gives_back_its_query():
    tokens = QueryTokens("k", ttl_s=60)
    got = tokens.verify(tokens.issue(QUERY))
    assert np.array_equal(got.vector, VECTOR) and got.vector.dtype == np.float32
    assert (got.backbone_id, got.image_url, got.picture_digest) == (QUERY.backbone_id, QUERY.image_url,
                                                                   QUERY.picture_digest)


def test_expiry_on_both_sides():
    tokens = QueryTokens("k", ttl_s=60)
    token = tokens.issue(QUERY, now=1000.0)
    assert tokens.verify(token, now=1060.0).backbone_id == "model-a"  # the last valid second
    with pytest.raises(ExpiredQuery, match="expired"):
        tokens.verify(token, now=1061.0)


def test_another_key_or_any_changed_character_is_refused():
    token = QueryTokens("k", ttl_s=60).issue(QUERY)
    with pytest.raises(ExpiredQuery, match="choose the photo again"):
        QueryTokens("other", ttl_s=60).verify(token)
    for at in (3, len(token) // 2, len(token) - 1):
        changed = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]
        with pytest.raises(ExpiredQuery):
            QueryTokens("k", ttl_s=60).verify(changed)


@pytest.mark.parametrize("token", ["", "x", "q1.a.b", "q1.a.b.c.d", "." * 3, "q1." + "A" * MAX_TOKEN_CHARS])
def test_malformed_tokens_are_refused_in_the_shoppers_words(token):
    with pytest.raises(ExpiredQuery) as caught:
        QueryTokens("k", ttl_s=60).verify(token)
    assert caught.value.status == 400 and "photo" in caught.value.message


def test_a_signed_token_is_still_checked_for_a_usable_vector():
    """A leaked key must not let a token carry NaN or nothing into the ranking."""
    tokens = QueryTokens("k", ttl_s=60)
    for vector in (np.array([np.nan, 1], np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ExpiredQuery):
            tokens.verify(tokens.issue(Query(vector, "m")))


def test_token_size_limit_on_both_sides():
    tokens = QueryTokens("k", ttl_s=60)
    fits = tokens.issue(Query(np.ones(2900, np.float32), "m"))  # 2900 floats: just under the cap
    assert len(fits) <= MAX_TOKEN_CHARS and len(tokens.verify(fits).vector) == 2900
    over = tokens.issue(Query(np.ones(3100, np.float32), "m"))
    assert len(over) > MAX_TOKEN_CHARS
    with pytest.raises(ExpiredQuery):
        tokens.verify(over)

"""Query tokens (gateway/query_token.py): a search refined without the photo, and nothing else accepted."""

from __future__ import annotations

import base64

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
    # base64's last character may carry unused low bits (changing only those changes no byte): flipping the
    # top bit of a character's 6 always changes a byte, so every change here is a real one
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for at in (3, len(token) // 2, len(token) - 1):
        changed = token[:at] + alphabet[alphabet.index(token[at]) ^ 32] + token[at + 1:]
        with pytest.raises(ExpiredQuery):
            QueryTokens("k", ttl_s=60).verify(changed)


@pytest.mark.parametrize("token", ["", "x", "q2.a", "q2.a.b.c", "." * 2, "q2..", "q2.a.b", "q1.a.b.c",
                                   "q2.x." + "A" * MAX_TOKEN_CHARS])
def test_malformed_tokens_are_refused_in_the_shoppers_words(token):
    with pytest.raises(ExpiredQuery) as caught:
        QueryTokens("k", ttl_s=60).verify(token)
    assert caught.value.status == 400 and "photo" in caught.value.message


def test_a_signed_token_is_still_checked_for_a_usable_vector():
    """A leaked key must not let a token carry NaN or nothing into the ranking."""
    tokens = QueryTokens("k", ttl_s=60)
    for vector in (np.array([np.nan, 1], np.float32), np.array([1, np.inf], np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ExpiredQuery) as refused:
            tokens.verify(tokens.issue(Query(vector, "m")))
        assert str(refused.value) == "we could not re-run that search: choose the photo again, or paste its link"


def test_token_size_limit_on_both_sides():
    tokens = QueryTokens("k", ttl_s=60)
    fits = tokens.issue(Query(np.ones(7600, np.float32), "m"))  # 7600 floats: just under the cap
    assert len(fits) <= MAX_TOKEN_CHARS and len(tokens.verify(fits).vector) == 7600
    over = tokens.issue(Query(np.ones(7700, np.float32), "m"))
    assert len(over) > MAX_TOKEN_CHARS
    with pytest.raises(ExpiredQuery):
        tokens.verify(over)


def test_a_token_is_url_safe_and_any_float_vector_round_trips():
    tokens = QueryTokens("k", ttl_s=60)
    for vector in (np.ones(1, np.float32), np.linspace(0, 1, 7, dtype=np.float64), np.arange(5, dtype=np.float32)):
        token = tokens.issue(Query(vector, "m"))
        assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")  # no "="
        got = tokens.verify(token)
        assert np.allclose(got.vector, vector) and got.vector.dtype == np.float32 and got.hist is None


def test_a_changed_ciphertext_or_key_id_is_refused():
    """The tag covers every byte of the sealed part and the key id beside it."""
    tokens = QueryTokens("k", ttl_s=60)
    prefix, key_id, sealed = tokens.issue(Query(np.ones(4, np.float32), "m")).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    for at in (0, 12, len(raw) // 2, len(raw) - 1):  # the nonce, the first byte sealed, the middle, the tag
        changed = bytearray(raw)
        changed[at] ^= 1
        text = base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("=")
        with pytest.raises(ExpiredQuery):
            tokens.verify(".".join([prefix, key_id, text]))
    with pytest.raises(ExpiredQuery):
        tokens.verify(".".join([prefix, "0" * 8, sealed]))


def test_a_token_reveals_neither_the_url_nor_the_vector():
    """Anyone who sees a token (a history, a log, a shared link) learns nothing of the photo it stands for."""
    tokens = QueryTokens("k", ttl_s=60)
    token = tokens.issue(QUERY)
    sealed = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    for secret in (b"shop.example", VECTOR.astype("<f4").tobytes()[:8], b"model-a", QUERY.picture_digest.encode()):
        assert secret not in sealed and secret.decode("latin-1") not in token
    assert tokens.issue(QUERY) != token  # a fresh nonce each time: two searches of one photo are not linkable


def test_an_old_key_still_opens_its_tokens_and_a_dropped_one_does_not():
    old = QueryTokens("2026-11", ttl_s=60)
    token = old.issue(QUERY)
    rotated = QueryTokens("2026-12", ttl_s=60, old_keys=["2026-11"])
    assert rotated.verify(token).image_url == QUERY.image_url
    assert rotated.issue(QUERY).split(".")[1] != token.split(".")[1]  # new tokens use the new key
    with pytest.raises(ExpiredQuery):
        old.verify(rotated.issue(QUERY))  # the old key never opens a new token
    with pytest.raises(ExpiredQuery):
        QueryTokens("2026-12", ttl_s=60).verify(token)  # once dropped, its tokens are refused
    with pytest.raises(ExpiredQuery, match="expired"):
        rotated.verify(old.issue(QUERY, now=0.0))  # an old key does not extend a token's life


def test_a_sealed_but_malformed_token_gets_the_shoppers_message():
    """Even a plaintext sealed with the key (a leaked key) is parsed defensively, with the same words."""
    import struct

    tokens = QueryTokens("k", ttl_s=60)
    plains = (b"", b"\x05\x00", struct.pack("<H", 8) + b"not json", struct.pack("<H", 2) + b"{}AAAA",
              struct.pack("<H", 7) + b'{"n":1}' + b"\x00\x00\x80")  # 3 vector bytes: not whole floats
    for plain in plains:
        with pytest.raises(ExpiredQuery) as caught:
            tokens.verify(tokens._seal(plain))
        assert caught.value.message == "we could not re-run that search: choose the photo again, or paste its link"


def test_the_expiry_message():
    tokens = QueryTokens("k", ttl_s=1)
    with pytest.raises(ExpiredQuery) as caught:
        tokens.verify(tokens.issue(QUERY, now=0.0), now=2.0)
    assert caught.value.message == "this search has expired: choose the photo again, or paste its link"


def test_the_longest_token_passes_and_one_character_more_fails():
    """Genuine tokens of exactly MAX_TOKEN_CHARS and of the next length: only the length tells them apart."""
    tokens = QueryTokens("k", ttl_s=60)
    by_length = {}
    for dim in range(7620, 7700):
        for url in range(0, 8):
            token = tokens.issue(Query(np.ones(dim, np.float32), "m", "u" * url))
            by_length.setdefault(len(token), token)
    # base64 never ends a token one character past a multiple of four: the next genuine length is 2 more
    exact, over = by_length[MAX_TOKEN_CHARS], by_length[min(n for n in by_length if n > MAX_TOKEN_CHARS)]
    assert len(over) <= MAX_TOKEN_CHARS + 2
    assert len(tokens.verify(exact).vector) > 0
    with pytest.raises(ExpiredQuery):
        tokens.verify(over)


def test_the_picture_digest():
    a, b = picture_digest("data:image/jpeg;base64,AAAA"), picture_digest("data:image/jpeg;base64,AAAB")
    assert a != b and a == picture_digest("data:image/jpeg;base64,AAAA") and len(a) == 32
    assert set(a) <= set("0123456789abcdef")


def test_a_url_is_carried_whole_up_to_its_limit_and_never_cut_short():
    from dataclasses import replace

    from gateway.query_token import MAX_URL_CHARS

    tokens = QueryTokens("k", ttl_s=60)
    longest = "https://shop.example/" + "a" * (MAX_URL_CHARS - len("https://shop.example/"))
    assert tokens.verify(tokens.issue(replace(QUERY, image_url=longest))).image_url == longest
    with pytest.raises(ValueError, match="over 2048"):
        tokens.issue(replace(QUERY, image_url=longest + "b"))


def test_the_key_is_read_once_from_its_secret_and_a_missing_secret_stops_the_start(tmp_path, monkeypatch):
    """QUERY_TOKEN_SECRET_ARN (AWS): the gateway reads the key from Secrets Manager at start (a real S3-style
    API server, moto, in-process); tokens sealed with that key open; an unreadable secret is an error, never a
    made-up key that would refuse every other instance's tokens."""
    import boto3
    from moto import mock_aws

    from gateway.query_token import KeyUnavailable, key_from_secret

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="photo-token-key", SecretString="s3cret-key")["ARN"]
        assert key_from_secret(arn) == "s3cret-key"
        sealed = QueryTokens("s3cret-key", 60).issue(QUERY)
        assert QueryTokens(key_from_secret(arn), 60).verify(sealed).image_url == QUERY.image_url
        with pytest.raises(KeyUnavailable, match="cannot read the query token key"):
            key_from_secret(arn.replace("photo-token-key", "missing"))
        empty = client.create_secret(Name="empty", SecretBinary=b"\x00")["ARN"]
        with pytest.raises(KeyUnavailable, match="holds no text key"):
            key_from_secret(empty)


def test_the_gateway_takes_its_key_from_the_secret(small_index, stub, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from gateway import create_app
    from gateway.config import Config

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="k", SecretString="from-the-secret")["ARN"]
        app = create_app(Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "c"),
                                query_token_secret_arn=arn), client=stub)
    token = QueryTokens("from-the-secret", 60).issue(QUERY)
    assert app.extensions["photo"].tokens.verify(token).backbone_id == QUERY.backbone_id


def test_a_token_carries_the_box_searched_and_refuses_a_malformed_one():
    """The part of the photo a whole-photo search used (gateway/locate.py) comes back with the token, so a refine
    still shows it; a sealed box that is not four ordered fractions is refused like any malformed token."""
    import json
    import struct

    tokens = QueryTokens("k", ttl_s=60)
    boxed = Query(VECTOR, "model-a", box=(0.1, 0.2, 0.6, 0.9))
    assert tokens.verify(tokens.issue(boxed)).box == (0.1, 0.2, 0.6, 0.9)
    assert tokens.verify(tokens.issue(QUERY)).box is None
    edges = Query(VECTOR, "model-a", box=(0.0, 0.0, 1.0, 1.0))  # the whole photo: both ends allowed
    assert tokens.verify(tokens.issue(edges)).box == (0.0, 0.0, 1.0, 1.0)

    def sealed(box: object) -> str:
        head = json.dumps({"b": "m", "u": "", "d": "", "e": 2**40, "n": 1, "x": box}).encode()
        return tokens._seal(struct.pack("<H", len(head)) + head + np.float32(1).tobytes())

    assert tokens.verify(sealed([0, 0, 1, 1])).box == (0.0, 0.0, 1.0, 1.0)  # whole numbers read as floats
    assert tokens.verify(sealed(None)).box is None
    for bad in ([0.5, 0, 0.5, 1], [0, 0.5, 1, 0.5], [-0.01, 0, 1, 1], [0, 0, 1.01, 1], [0, 0, 1], [0, 0, 1, 1, 1],
                [True, 0, 1, 1], ["0", 0, 1, 1], {"l": 0}, "0,0,1,1", [0, 0, float("nan"), 1]):
        with pytest.raises(ExpiredQuery):
            tokens.verify(sealed(bad))


# --------------------------------------------------------------------------- the photo's other items


def _items(count: int, dim: int = 1280, hist: bool = True):
    from gateway.query_token import QueryItem

    rng = np.random.default_rng(count)
    return tuple(QueryItem((0.1 * i, 0.2, 0.1 * i + 0.3, 0.9), f"cat{i}" if i % 2 else "",
                           rng.standard_normal(dim).astype(np.float32),
                           rng.random(112).astype(np.float32) if hist else None) for i in range(count))


def test_other_items_round_trip_at_half_precision_and_the_query_stays_exact():
    tokens = QueryTokens("k", ttl_s=60)
    vector, hist = np.random.default_rng(0).standard_normal(1280).astype(np.float32), np.full(112, 0.25, np.float32)
    items = _items(3)
    back = tokens.verify(tokens.issue(Query(vector, "m", "", "", hist, (0.1, 0.1, 0.5, 0.5), items)))
    assert np.array_equal(back.vector, vector) and np.array_equal(back.hist, hist) and back.box == (0.1, 0.1, 0.5, 0.5)
    assert [(i.box, i.category) for i in back.items] == [(i.box, i.category) for i in items]
    for got, sent in zip(back.items, items, strict=True):
        assert got.vector.dtype == np.float32 and np.allclose(got.vector, sent.vector, rtol=1e-3, atol=1e-3)
        assert np.allclose(got.hist, sent.hist, atol=1e-3)
    without = tokens.verify(tokens.issue(Query(vector, "m", items=_items(2, hist=False))))
    assert without.hist is None and all(item.hist is None for item in without.items)
    assert tokens.verify(tokens.issue(Query(vector, "m", hist=hist))).items == ()


def test_a_2048_d_query_with_three_items_fits_and_a_fourth_item_is_refused():
    from gateway.query_token import MAX_ITEMS

    tokens = QueryTokens("k", ttl_s=60)
    big = Query(np.ones(2048, np.float32), "m", "u" * 2048, "d" * 32, np.ones(112, np.float32), (0, 0, 1, 1),
                _items(MAX_ITEMS, 2048))
    assert len(tokens.issue(big)) <= MAX_TOKEN_CHARS and len(tokens.verify(tokens.issue(big)).items) == 3
    with pytest.raises(ValueError, match="4 other items are over 3"):
        tokens.issue(Query(np.ones(8, np.float32), "m", items=_items(MAX_ITEMS + 1, 8)))


def _sealed(tokens: QueryTokens, head: dict, numbers: bytes) -> str:
    import json
    import struct

    raw = json.dumps(head).encode()
    return tokens._seal(struct.pack("<H", len(raw)) + raw + numbers)


@pytest.mark.parametrize("change", ["short", "long", "nan", "box", "category", "too many", "lengths"])
def test_a_sealed_token_with_items_that_do_not_add_up_is_refused(change):
    """Authenticated, so made by us; parsed defensively anyway (a key can leak)."""
    tokens = QueryTokens("k", ttl_s=60)
    item = {"x": [0, 0, 0.5, 0.5], "c": "Bags", "n": 4, "h": 0}
    head = {"b": "m", "u": "", "d": "", "e": 2 ** 40, "n": 4, "h": 0, "i": [item]}
    main, other = np.ones(4, "<f4").tobytes(), np.ones(4, "<f2").tobytes()
    assert len(tokens.verify(_sealed(tokens, head, main + other)).items) == 1  # the unchanged one is fine
    numbers = {"short": main + other[:-2], "long": main + other + b"\0\0",
               "nan": main + np.array([1, 1, 1, np.nan], "<f2").tobytes()}.get(change, main + other)
    if change == "box":
        head["i"] = [{**item, "x": [0.5, 0, 0.4, 1]}]
    elif change == "category":
        head["i"] = [{**item, "c": 7}]
    elif change == "too many":
        head["i"] = [item] * 4
        numbers = main + other * 4
    elif change == "lengths":
        head["i"] = [{**item, "n": 0}]
    with pytest.raises(ExpiredQuery):
        tokens.verify(_sealed(tokens, head, numbers))

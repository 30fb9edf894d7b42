"""Short-lived sealed query tokens: refine a search (threshold, category, more results) without sending
the photo again, and without the model embedding it again.

A token carries the query's model vector (never the photo), its colour descriptor, the backbone that made
it, the image URL it came from (empty for an upload), a digest of the picture the page shows for it, and
when it expires; and the photo's other items (gateway/locate.py), each a box, a category and its vector and
colour at half precision, so that picking one needs neither the photo nor the model. All of that is
**encrypted and authenticated** with AES-256-GCM (``cryptography``) under a
key derived from ``QUERY_TOKEN_KEY``: whoever sees a token (a browser history, a proxy log, a shared link)
learns nothing of the photo's vector or URL, and a changed byte is refused.

Keys rotate: tokens are sealed under the current key and opened under it or any of ``QUERY_TOKEN_OLD_KEYS``
(keep the previous key there for at least ``QUERY_TOKEN_TTL_S`` after a change, then remove it). Each token
names its key by a short id, so opening one costs one decryption. Nothing is kept server-side, so any worker
of any replica sharing the keys can open a token. A token is untrusted input: whatever is wrong with it
(forged, expired, cut short, another key, another model) is one ``ExpiredQuery`` in the shopper's words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import BadRequest

PREFIX = "q2"
#: AES-GCM nonce bytes, random per token (NIST SP 800-38D: up to 2^32 tokens per key; rotate long before).
NONCE_BYTES = 12
#: Far above any real token (a 2048-d float32 vector and three other items at half precision: 29 KB as base64):
#: longer ones are not parsed.
MAX_TOKEN_CHARS = 40_960
#: The most other items a token carries (the searched one is its query).
MAX_ITEMS = 3
#: Longest product id a token carries as the confirmed product (a longer one is not pinned).
MAX_PINNED_CHARS = 256
#: Longest image URL a query may name (the service refuses longer ones; a token never cuts one short).
MAX_URL_CHARS = 2048


class ExpiredQuery(BadRequest):
    """A query token that cannot be used: the shopper must give the photo again."""


@dataclass(frozen=True)
class Query:
    """What a token stands for."""

    vector: np.ndarray  # float32, as the model returned it (before the index's whitening)
    backbone_id: str
    image_url: str = ""  # the URL the image came from; "" for an upload
    picture_digest: str = ""  # ``picture_digest()`` of the picture shown for the query; "" for none
    hist: np.ndarray | None = None  # its colour histogram (ranking/appearance.py), when there is one
    box: tuple[float, float, float, float] | None = None  # the part of the photo searched (gateway/locate.py)
    items: tuple[QueryItem, ...] = ()  # the photo's other items, when it has them
    pinned: str = ""  # the product its details put first (ranking/verify.py): it stays first on every page ...
    confirmed: bool = False  # ... confirmed as the very product (not only lifted by its details)


@dataclass(frozen=True)
class QueryItem:
    """Another item of the query's photo: where it is, what it looks like, and its vector and colour."""

    box: tuple[float, float, float, float]
    category: str  # its closest product's category ("" for none)
    vector: np.ndarray
    hist: np.ndarray | None = None


def picture_digest(picture: str) -> str:
    """A short digest binding a page's query picture (a data URL) to its token."""
    return hashlib.sha256(picture.encode()).hexdigest()[:32]


class KeyUnavailable(RuntimeError):
    """The token key's secret could not be read: the gateway must not start (a made-up key would refuse every
    other instance's tokens)."""


def key_from_secret(arn: str, client=None) -> str:
    """The key stored in the Secrets Manager secret ``arn`` (its SecretString)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = client or boto3.client("secretsmanager")
        key = client.get_secret_value(SecretId=arn).get("SecretString") or ""
    except (BotoCoreError, ClientError) as exc:
        raise KeyUnavailable(f"cannot read the query token key from {arn}: {exc}") from None
    if not key:
        raise KeyUnavailable(f"the secret {arn} holds no text key")
    return key


def new_key() -> str:
    """A random key, for a gateway started without ``QUERY_TOKEN_KEY``."""
    return secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Key:
    """One token key: the AES-256 key derived from the configured text, and its public id."""

    def __init__(self, text: str) -> None:
        if not text:
            raise ValueError("a query token key must not be empty")
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"photo-query-token",
                   info=b"aes-256-gcm v2").derive(text.encode())
        self.aead = AESGCM(raw)
        self.id = hashlib.sha256(b"key id" + raw).hexdigest()[:8]  # names the key, reveals nothing of it


class QueryTokens:
    """Seals tokens under the current key; opens them under it or an old one (rotation)."""

    def __init__(self, key: str, ttl_s: float, old_keys: Sequence[str] = ()) -> None:
        self._current = _Key(key)
        self._keys = {k.id: k for k in (_Key(text) for text in old_keys if text)}
        self._keys[self._current.id] = self._current
        self.ttl_s = ttl_s

    def _seal(self, plain: bytes, key: _Key | None = None) -> str:
        key = key or self._current
        aad = f"{PREFIX}.{key.id}"
        nonce = os.urandom(NONCE_BYTES)
        return f"{aad}.{_b64(nonce + key.aead.encrypt(nonce, plain, aad.encode()))}"

    def issue(self, query: Query, now: float | None = None) -> str:
        """The token of ``query``, valid for ``ttl_s`` seconds from ``now``."""
        now = time.time() if now is None else now
        if len(query.image_url) > MAX_URL_CHARS:  # never cut short: a cut URL would name another image
            raise ValueError(f"an image URL of {len(query.image_url)} characters is over {MAX_URL_CHARS}")
        fields = {"b": query.backbone_id, "u": query.image_url, "d": query.picture_digest,
                  "e": int(now + self.ttl_s), "n": int(np.size(query.vector))}
        if query.box is not None:
            fields["x"] = [float(v) for v in query.box]
        if query.pinned:
            if len(query.pinned) > MAX_PINNED_CHARS:
                raise ValueError(f"a product id of {len(query.pinned)} characters is over {MAX_PINNED_CHARS}")
            fields["p"] = query.pinned
            if query.confirmed:
                fields["c"] = 1
        if len(query.items) > MAX_ITEMS:
            raise ValueError(f"{len(query.items)} other items are over {MAX_ITEMS}")
        tail = b""
        if query.items:  # lengths said outright: the query's colour, then each item's vector and colour
            fields["h"] = 0 if query.hist is None else int(np.size(query.hist))
            fields["i"] = [{"x": [float(v) for v in item.box], "c": item.category, "n": int(np.size(item.vector)),
                            "h": 0 if item.hist is None else int(np.size(item.hist))} for item in query.items]
            tail = b"".join(np.concatenate([np.asarray(p, dtype="<f2").ravel() for p in (item.vector, item.hist)
                                            if p is not None]).tobytes() for item in query.items)
        head = json.dumps(fields, separators=(",", ":")).encode()
        parts = [query.vector] if query.hist is None else [query.vector, query.hist]
        vector = np.concatenate([np.asarray(p, dtype="<f4").ravel() for p in parts]).tobytes()
        return self._seal(struct.pack("<H", len(head)) + head + vector + tail)

    def _open(self, token: object) -> bytes:
        """The plaintext of a token sealed under one of our keys; ``ExpiredQuery`` for anything else."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise ExpiredQuery(_AGAIN)
        prefix, key_id, sealed = token.split(".")
        key = self._keys.get(key_id)
        if prefix != PREFIX or key is None:
            raise ExpiredQuery(_AGAIN)
        try:
            raw = _unb64(sealed)
            return key.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{prefix}.{key_id}".encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise ExpiredQuery(_AGAIN) from None

    def verify(self, token: str, now: float | None = None) -> Query:
        """The query of a genuine, unexpired token; ``ExpiredQuery`` for anything else."""
        now = time.time() if now is None else now
        plain = self._open(token)
        try:  # authenticated, so made by us; parsed defensively anyway (a key can leak)
            (size,) = struct.unpack_from("<H", plain)
            head = json.loads(plain[2:2 + size])
            query = _parsed(head, plain[2 + size:])
            expires = int(head["e"])
        except (ValueError, KeyError, TypeError, struct.error):
            raise ExpiredQuery(_AGAIN) from None
        if expires < now:
            raise ExpiredQuery("this search has expired: choose the photo again, or paste its link")
        numbers = [query.vector, query.hist] + [a for item in query.items for a in (item.vector, item.hist)]
        if not all(np.all(np.isfinite(a)) for a in numbers if a is not None):
            raise ExpiredQuery(_AGAIN)
        return query


def _parsed(head: dict, tail: bytes) -> Query:
    """The query of a token's head and numbers (``ValueError``, ``KeyError`` or ``TypeError`` when they do not
    fit together): the query's vector and colour at full precision, then each other item's at half."""
    n = int(head["n"])
    items = head.get("i", [])
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise ValueError("items")
    if items:
        h = int(head["h"])
        if n <= 0 or h < 0:
            raise ValueError("lengths")
        main, tail = np.frombuffer(tail[:4 * (n + h)], dtype="<f4").astype(np.float32), tail[4 * (n + h):]
        if len(main) != n + h:
            raise ValueError("vector bytes")
        vector, hist = main[:n], (main[n:] if h else None)
    else:
        if len(tail) % 4:
            raise ValueError("vector bytes")
        numbers = np.frombuffer(tail, dtype="<f4").astype(np.float32)
        if not 0 < n <= len(numbers):
            raise ValueError("vector length")
        vector, hist, tail = numbers[:n], (numbers[n:] if len(numbers) > n else None), b""
    others = []
    for item in items:
        size, colours = int(item["n"]), int(item["h"])
        numbers = np.frombuffer(tail[:2 * (size + colours)], dtype="<f2").astype(np.float32)
        if size <= 0 or colours < 0 or len(numbers) != size + colours:
            raise ValueError("item bytes")
        tail = tail[2 * (size + colours):]
        box = _box(item["x"])
        if box is None or not isinstance(item["c"], str):
            raise ValueError("item")
        others.append(QueryItem(box, item["c"], numbers[:size], numbers[size:] if colours else None))
    if tail:
        raise ValueError("trailing bytes")
    pinned, confirmed = head.get("p", ""), head.get("c", 0)
    if not isinstance(pinned, str) or len(pinned) > MAX_PINNED_CHARS or confirmed not in (0, 1) \
            or isinstance(confirmed, bool) or (confirmed and not pinned):
        raise ValueError("pinned")
    return Query(vector, str(head["b"]), str(head["u"]), str(head["d"]), hist, _box(head.get("x")), tuple(others),
                 pinned, bool(confirmed))


_AGAIN = "we could not re-run that search: choose the photo again, or paste its link"


def _box(raw: object) -> tuple[float, float, float, float] | None:
    """A token's box: None, or four fractions with left < right and top < bottom (``ValueError`` otherwise)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                             for v in raw):
        raise ValueError("box")
    left, top, right, bottom = (float(v) for v in raw)
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):  # NaN fails every comparison
        raise ValueError("box")
    return left, top, right, bottom

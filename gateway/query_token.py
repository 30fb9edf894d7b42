"""Short-lived signed query tokens: refine a search (threshold, category, more results) without sending
the photo again, and without the model embedding it again.

A token carries the query's model vector (never the photo), the backbone that made it, the image URL it
came from (empty for an upload), a digest of the picture the page shows for it, and when it expires; it
is signed with HMAC-SHA256 under ``QUERY_TOKEN_KEY``. Nothing is kept server-side, so any worker of any
replica sharing the key can verify it. A token is untrusted input: whatever is wrong with it (forged,
expired, cut short, from another model) is one ``ExpiredQuery`` in the shopper's words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import numpy as np

from gateway.errors import BadRequest

PREFIX = "q1"
#: Far above any real token (a 2048-d float32 vector is 11 KB as base64): longer ones are not parsed.
MAX_TOKEN_CHARS = 16_384
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


def picture_digest(picture: str) -> str:
    """A short digest binding a page's query picture (a data URL) to its token."""
    return hashlib.sha256(picture.encode()).hexdigest()[:32]


def new_key() -> str:
    """A random key, for a gateway started without ``QUERY_TOKEN_KEY``."""
    return secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class QueryTokens:
    """Issues and verifies tokens under one key."""

    def __init__(self, key: str, ttl_s: float) -> None:
        self._key = key.encode()
        self.ttl_s = ttl_s

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, query: Query, now: float | None = None) -> str:
        """The token of ``query``, valid for ``ttl_s`` seconds from ``now``."""
        now = time.time() if now is None else now
        if len(query.image_url) > MAX_URL_CHARS:  # never cut short: a cut URL would name another image
            raise ValueError(f"an image URL of {len(query.image_url)} characters is over {MAX_URL_CHARS}")
        head = {"b": query.backbone_id, "u": query.image_url, "d": query.picture_digest,
                "e": int(now + self.ttl_s), "n": int(np.size(query.vector))}
        parts = [query.vector] if query.hist is None else [query.vector, query.hist]
        vector = np.concatenate([np.asarray(p, dtype="<f4").ravel() for p in parts]).tobytes()
        body = f"{PREFIX}.{_b64(json.dumps(head, separators=(',', ':')).encode())}.{_b64(vector)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, now: float | None = None) -> Query:
        """The query of a genuine, unexpired token; ``ExpiredQuery`` for anything else."""
        now = time.time() if now is None else now
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 3:
            raise ExpiredQuery(_AGAIN)
        body, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()) or not body.startswith(PREFIX + "."):
            raise ExpiredQuery(_AGAIN)
        try:  # signed by us, so well formed; checked anyway (a key can leak)
            _, head_text, vector_text = body.split(".")
            head = json.loads(_unb64(head_text))
            numbers = np.frombuffer(_unb64(vector_text), dtype="<f4").astype(np.float32)
            n = int(head["n"])
            if not 0 < n <= len(numbers):
                raise ValueError("vector length")
            vector, hist = numbers[:n], (numbers[n:] if len(numbers) > n else None)
            query = Query(vector, str(head["b"]), str(head["u"]), str(head["d"]), hist)
            expires = int(head["e"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ExpiredQuery(_AGAIN) from None
        if expires < now:
            raise ExpiredQuery("this search has expired: choose the photo again, or paste its link")
        if not np.all(np.isfinite(numbers)):
            raise ExpiredQuery(_AGAIN)
        return query


_AGAIN = "we could not re-run that search: choose the photo again, or paste its link"

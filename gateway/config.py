"""Gateway settings, read from environment variables (see README "Configuration")."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from indexstore.ann import AnnSettings
from safeio.paths import cache_home
from search import BackendSettings
from search.factory import KINDS
from search.milvus import MilvusSettings

#: Words read as true in environment variables and request flags (requests also accept FALSE_WORDS).
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
SEARCH_BACKENDS = KINDS  # the search backend kinds (search/factory.py)
LOG_FORMATS = ("json", "text")

#: Accepted range of each numeric setting: (field, lowest, lowest excluded, highest or None). README's
#: configuration table states the same ranges; tests/test_config.py checks each on both sides.
LIMITS: tuple[tuple[str, float, bool, float | None], ...] = (
    ("index_poll_s", 0, False, None),
    ("torchserve_timeout", 0, True, None),
    ("max_upload_mb", 0, True, None),
    ("max_pixels", 1, False, None),
    ("max_decode_mb", 0, True, None),
    ("decode_concurrency", 1, False, None),
    ("blas_threads", 0, False, None),
    ("default_threshold", 0, False, 100),
    ("default_top_k", 1, False, None),
    ("max_top_k", 1, False, None),
    ("url_fetch_timeout", 0, True, None),
    ("url_fetch_concurrency", 1, False, None),
    ("ann_min_products", 0, False, None),
    ("ann_expansion", 1, False, None),
    ("query_token_ttl_s", 0, True, None),
    ("ready_cache_s", 0, False, None),
    ("gateway_admin_port", 0, False, 65535),
)


@dataclass(frozen=True)
class Config:
    #: Index location: a folder or s3://bucket/prefix written by scripts/build_index.py.
    index_uri: str = "index"
    #: Seconds between checks for a newly published index version (0: never).
    index_poll_s: float = 30.0
    #: Check for a new version at the first request after ``index_poll_s`` instead of in a thread (Lambda).
    index_poll_on_request: bool = False
    #: Local copy of the last good version, served when the store is unreachable at start-up.
    index_cache_dir: str = ""
    torchserve_url: str = "http://127.0.0.1:8080"
    torchserve_model: str = "embedding"
    #: TorchServe's inference token (token authorization on), or the key file it writes (re-read on 401).
    torchserve_token: str = ""
    torchserve_key_file: str = ""
    #: Seconds to wait for one embedding before answering 503.
    torchserve_timeout: float = 10.0
    #: Largest accepted upload; larger requests get 413.
    max_upload_mb: float = 10.0
    #: Decompression-bomb guard for uploads and fetched URLs: a 6000×4000 photo; the model needs 224×224.
    max_pixels: int = 24_000_000
    #: Peak memory one query decode may take, estimated before decoding (modelio/imaging.py ``decode_cost``).
    max_decode_mb: float = 256.0
    #: Query photos decoded at once per worker process: the worker's decoding memory is at most this ×
    #: ``max_decode_mb``; a request that waits 10 s for a turn gets 503.
    decode_concurrency: int = 2
    #: BLAS threads per worker process (the search's matrix products); 0: the whole CPUs of the container's
    #: CPU quota (``limits.cpu``), or every CPU where there is none (safeio/cpus.py).
    blas_threads: int = 0
    #: Default minimum similarity, in calibrated percent (see ranking/calibration.py; uncalibrated: 100·cosine).
    default_threshold: float = 70.0
    default_top_k: int = 12
    #: Rank the query's guessed category first (see ranking/category_first.py); per request: category_first.
    category_first: bool = True
    #: A whole photo (no box drawn) is also searched in windows, and the window where the catalog sees a
    #: product best is searched instead when it beats the whole photo (gateway/locate.py); the answer says
    #: which box it used.
    locate_item: bool = True
    max_top_k: int = 100
    #: Folder with the catalog's local images, served on /catalog/ (unset: none are; never taken from the index).
    catalog_dir: str = ""
    #: Seconds for the whole fetch of a query image URL: lookup, connect, redirects and body together.
    url_fetch_timeout: float = 10.0
    #: Image URLs fetched at once per worker process; more get 503 with Retry-After. Below GATEWAY_THREADS, so
    #: slow links never hold every thread (``python -m gateway`` refuses otherwise).
    url_fetch_concurrency: int = 6
    #: Let query image URLs point at loopback/private hosts (tests and local demos only).
    allow_private_urls: bool = False
    #: Comma-separated CIDRs of non-public networks query URLs may still use (e.g. an internal image host).
    allowed_image_networks: str = ""
    #: Search backend: auto (exact below ``ann_min_products``, else the version's ANN file), exact, ann, milvus.
    search_backend: str = "auto"
    #: ``auto`` searches with the ANN file from this many products (the build writes one from this size).
    ann_min_products: int = AnnSettings.min_products
    #: HNSW search depth (efSearch): higher is more exact and slower (see docs/SCALING.md).
    ann_expansion: int = AnnSettings.expansion_search
    #: Milvus cluster / Zilliz Cloud address, or a local file for Milvus Lite (``search_backend=milvus``).
    milvus_uri: str = ""
    milvus_token: str = ""
    #: Alias switched to the served version's collection.
    milvus_alias: str = MilvusSettings.alias
    #: Milvus index type of new collections: AUTOINDEX (approximate, Milvus picks), HNSW, FLAT (exact), ...
    milvus_index_type: str = MilvusSettings.index_type
    #: Key signing query tokens (refine without re-uploading); replicas behind one address must share it.
    #: Unset: ``python -m gateway`` makes one for its workers (tokens then work on this replica only).
    query_token_key: str = ""
    #: A Secrets Manager secret holding the key, read once at start (AWS; the key then never sits in the
    #: function's configuration). Used when QUERY_TOKEN_KEY is unset.
    query_token_secret_arn: str = ""
    #: Comma-separated earlier keys that still open tokens (rotation: keep one for QUERY_TOKEN_TTL_S, then drop it).
    query_token_old_keys: str = ""
    #: Seconds a query token stays valid after its search.
    query_token_ttl_s: float = 3600.0
    #: /readyz caches its TorchServe probe for this many seconds.
    ready_cache_s: float = 2.0
    #: The admin listener's port (``python -m gateway`` binds it beside the public one): /metrics and
    #: /readyz's details are served there only. 0: none (metrics and details are then served nowhere).
    gateway_admin_port: int = 0
    #: Logs of the gateway and the build: ``json`` (one object per line, with the request id) or ``text``.
    log_format: str = "json"
    #: The user's cache folder (the XDG convention; unset: ~/.cache): index copies and downloaded images.
    xdg_cache_home: str = ""

    def __post_init__(self) -> None:
        for name, low, strict, high in LIMITS:
            _check_range(name, getattr(self, name), low, strict, high)
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"DEFAULT_TOP_K={self.default_top_k} must be at most MAX_TOP_K={self.max_top_k}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT={self.log_format!r}: use one of {', '.join(LOG_FORMATS)}")
        if self.search_backend not in SEARCH_BACKENDS:
            raise ValueError(f"SEARCH_BACKEND={self.search_backend!r}: use one of {', '.join(SEARCH_BACKENDS)}")
        if self.search_backend == "milvus" and not self.milvus_uri:
            raise ValueError("SEARCH_BACKEND=milvus needs MILVUS_URI (a Milvus address, or a file for Milvus Lite)")
        for cidr in self.image_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"ALLOWED_IMAGE_NETWORKS: {cidr!r} is not a network (e.g. 10.0.0.0/8)") from None

    @property
    def ann(self) -> AnnSettings:
        """The HNSW settings (the build's and the gateway's)."""
        return AnnSettings(min_products=self.ann_min_products, expansion_search=self.ann_expansion)

    @property
    def milvus(self) -> MilvusSettings | None:
        """Where Milvus is, when ``MILVUS_URI`` is set."""
        if not self.milvus_uri:
            return None
        return MilvusSettings(self.milvus_uri, self.milvus_token, self.milvus_alias, self.milvus_index_type)

    @property
    def backends(self) -> BackendSettings:
        """Which search backend serves a version."""
        return BackendSettings(self.search_backend, self.ann_min_products, self.ann_expansion, self.milvus)

    @property
    def fetch(self) -> FetchSettings:
        """How query image URLs are fetched."""
        return FetchSettings(int(self.max_upload_mb * 1024 * 1024), self.url_fetch_timeout,
                             self.url_fetch_concurrency, self.allow_private_urls, self.image_networks)

    @property
    def tokens(self) -> TokenSettings:
        """How query tokens are signed."""
        old = tuple(k.strip() for k in self.query_token_old_keys.split(",") if k.strip())
        return TokenSettings(self.query_token_key, self.query_token_ttl_s, old)

    @property
    def index_cache(self) -> Path:
        """The local copy of the index: ``INDEX_CACHE_DIR``, else a folder per index URI under the user's cache."""
        if self.index_cache_dir:
            return Path(self.index_cache_dir)
        return cache_home(self.xdg_cache_home) / "index" / hashlib.sha256(self.index_uri.encode()).hexdigest()[:16]

    @cached_property
    def image_networks(self) -> tuple[str, ...]:
        """``allowed_image_networks`` as a tuple of CIDRs."""
        return tuple(n.strip() for n in self.allowed_image_networks.split(",") if n.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Each field from its upper-case environment variable (``INDEX_URI``, ``TORCHSERVE_URL``, ...)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name.upper(), raw, type(f.default))
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class FetchSettings:
    """Query image URLs: the byte cap, the deadline, how many at once, and which non-public networks."""

    max_bytes: int
    timeout_s: float
    concurrency: int
    allow_private: bool
    networks: tuple[str, ...]


@dataclass(frozen=True)
class TokenSettings:
    """Query tokens: the sealing key ("": one made per process), how long a token is valid, and the earlier keys
    that still open tokens."""

    key: str
    ttl_s: float
    old_keys: tuple[str, ...] = ()


def _parse(name: str, raw: str, kind: type) -> object:
    """``raw`` as ``kind``; a flag must be one of TRUE_WORDS / FALSE_WORDS (a typo is refused, not read as false)."""
    if kind is bool:
        word = raw.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{name}={raw!r}: use one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
        return word in TRUE_WORDS
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def _check_range(name: str, value: float, low: float, strict: bool, high: float | None) -> None:
    """Refuse ``value`` outside [low, high] (low itself too when ``strict``), NaN and infinity included."""
    below = value <= low if strict else value < low
    if not math.isfinite(value) or below or (high is not None and value > high):
        bound = f"more than {low:g}" if strict else f"at least {low:g}"
        if high is not None:
            bound = f"between {low:g} and {high:g}"
        raise ValueError(f"{name.upper()}={value!r} is out of range: it must be {bound}")

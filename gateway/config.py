"""Gateway settings, read from environment variables (see README "Configuration")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property

#: Words read as true in environment variables and request flags (requests also accept FALSE_WORDS).
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
SEARCH_BACKENDS = ("auto", "exact", "ann", "milvus")


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
    #: Default minimum similarity, in calibrated percent (see catalog/calibration.py; uncalibrated: 100·cosine).
    default_threshold: float = 70.0
    default_top_k: int = 12
    #: Rank the query's guessed category first (see catalog/category_first.py); per request: category_first.
    category_first: bool = True
    max_top_k: int = 100
    #: Folder with the catalog's local images, served on /catalog/ (unset: none are; never taken from the index).
    catalog_dir: str = ""
    #: Seconds for the whole fetch of a query image URL: lookup, connect, redirects and body together.
    url_fetch_timeout: float = 10.0
    #: Image URLs fetched at once per worker process; more get 503 with Retry-After.
    url_fetch_concurrency: int = 4
    #: Let query image URLs point at loopback/private hosts (tests and local demos only).
    allow_private_urls: bool = False
    #: Comma-separated CIDRs of non-public networks query URLs may still use (e.g. an internal image host).
    allowed_image_networks: str = ""
    #: Search backend: auto (exact below ``ann_min_products``, else the version's ANN file), exact, ann, milvus.
    search_backend: str = "auto"
    #: ``auto`` searches with the ANN file from this many products (the build writes one from this size).
    ann_min_products: int = 100_000
    #: HNSW search depth (efSearch): higher is more exact and slower (see docs/SCALING.md).
    ann_expansion: int = 128
    #: Milvus cluster / Zilliz Cloud address, or a local file for Milvus Lite (``search_backend=milvus``).
    milvus_uri: str = ""
    milvus_token: str = ""
    #: Alias switched to the served version's collection.
    milvus_alias: str = "photo_current"
    #: Milvus index type of new collections: AUTOINDEX (approximate, Milvus picks), HNSW, FLAT (exact), ...
    milvus_index_type: str = "AUTOINDEX"
    #: Key signing query tokens (refine without re-uploading); replicas behind one address must share it.
    #: Unset: ``python -m gateway`` makes one for its workers (tokens then work on this replica only).
    query_token_key: str = ""
    #: Seconds a query token stays valid after its search.
    query_token_ttl_s: float = 3600.0
    #: /readyz caches its TorchServe probe for this many seconds.
    ready_cache_s: float = 2.0

    def __post_init__(self) -> None:
        if self.search_backend not in SEARCH_BACKENDS:
            raise ValueError(f"SEARCH_BACKEND={self.search_backend!r}: use one of {', '.join(SEARCH_BACKENDS)}")
        if self.search_backend == "milvus" and not self.milvus_uri:
            raise ValueError("SEARCH_BACKEND=milvus needs MILVUS_URI (a Milvus address, or a file for Milvus Lite)")
        if self.url_fetch_concurrency < 1:
            raise ValueError("URL_FETCH_CONCURRENCY must be at least 1")
        if not self.query_token_ttl_s > 0:
            raise ValueError("QUERY_TOKEN_TTL_S must be more than 0")
        if self.ann_min_products < 0 or self.ann_expansion < 1:
            raise ValueError("ANN_MIN_PRODUCTS must be ≥ 0 and ANN_EXPANSION ≥ 1")

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
            kind = type(f.default)
            try:
                values[f.name] = raw.strip().lower() in TRUE_WORDS if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update(overrides)
        return cls(**values)

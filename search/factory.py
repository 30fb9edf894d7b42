"""The one place that knows every backend: which one serves a version, and what each needs to open."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexstore.ann import AnnSettings
from search.base import SearchBackend

log = logging.getLogger(__name__)

#: Backend kinds a setting may name; "auto" picks exact or ann by the catalog's size.
KINDS = ("auto", "exact", "ann", "milvus")


@dataclass(frozen=True)
class BackendSettings:
    """Which search backend serves a version (``SEARCH_BACKEND`` and friends, see gateway/config.py)."""

    kind: str = "auto"
    ann_min_products: int = AnnSettings.min_products
    ann_expansion: int = AnnSettings.expansion_search
    milvus: object | None = None  # search.milvus.MilvusSettings (imported only where Milvus is used)


@dataclass(frozen=True)
class BackendSource:
    """What a backend may be opened from: one index version's search-space vectors, in the forms each needs."""

    version: str
    count: int  # rows
    dim: int  # search-space dimensions
    codes: np.ndarray  # category code per row (ranking/category_first.py)
    vectors: Callable[[], np.ndarray]  # the whole matrix (exact search)
    ann_path: Path | None = None  # the version's ANN file, when it has one


class NoAnnFile(ValueError):
    """``SEARCH_BACKEND=ann`` for a version built without an ANN file."""


def kind_for(settings: BackendSettings, count: int, has_ann: bool) -> str:
    """The backend ``settings`` pick for a version of ``count`` products: ``auto`` is ann from
    ``ann_min_products`` rows when the version has an ANN file, else exact."""
    if settings.kind != "auto":
        return settings.kind
    return "ann" if count >= settings.ann_min_products and has_ann else "exact"


def needs_matrix(settings: BackendSettings, count: int, has_ann: bool) -> bool:
    """Whether that backend reads the version's raw matrix: exact search does; the ANN file carries its own
    vectors and Milvus its collection (filled by the build), so a replica on either need not fetch it at all."""
    return kind_for(settings, count, has_ann) == "exact"


def chosen_kind(settings: BackendSettings, source: BackendSource) -> str:
    """``kind_for`` ``source``, saying so when a big version lacks the ANN file that would serve it faster."""
    big = source.count >= settings.ann_min_products
    if settings.kind == "auto" and big and source.ann_path is None:
        log.warning("version %s has %d products but no ANN file: searching exactly (rebuild with --ann always "
                    "for the faster search)", source.version, source.count)
    return kind_for(settings, source.count, source.ann_path is not None)


def open_backend(settings: BackendSettings, source: BackendSource) -> SearchBackend:
    """The backend that serves ``source`` under ``settings`` (``NoAnnFile``, or the backend's own refusal)."""
    kind = chosen_kind(settings, source)
    if kind == "ann":
        if source.ann_path is None:
            raise NoAnnFile(f"version {source.version} has no ANN file, and SEARCH_BACKEND=ann needs one "
                            "(build it with scripts/build_index.py --ann always)")
        from indexstore.ann import check_file, open_ann
        from search.ann import AnnSearch

        check_file(source.ann_path, source.count, source.dim)  # in a child: a malformed file cannot crash us
        return AnnSearch(open_ann(source.ann_path, source.count, source.dim), source.codes, settings.ann_expansion)
    if kind == "milvus":
        from search.milvus import MilvusSearch

        return MilvusSearch.serve(settings.milvus, source.version, source.count)
    from search.exact import ExactSearch

    return ExactSearch(source.vectors(), source.codes)


#: The default: exact search, or the ANN file from 100,000 products.
DEFAULT_BACKENDS = BackendSettings()

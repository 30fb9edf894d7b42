"""The backend factory (search/factory.py): which backend serves a version, what each is opened with, and
the refusal when the ANN file is missing. Milvus itself is stubbed here (tests/test_milvus.py runs it)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexstore.ann import AnnSettings, build_ann
from search import BackendSettings, BackendSource, ExactSearch, open_backend
from search.ann import AnnSearch
from search.factory import NoAnnFile, chosen_kind, needs_matrix


def source(tmp_path, count: int = 40, ann: bool = False, **calls) -> BackendSource:
    x = np.eye(count, 8, dtype=np.float32)
    x[8:] = np.eye(8, dtype=np.float32)[np.arange(count - 8) % 8]
    path = None
    if ann:
        path = tmp_path / "ann.faiss"
        path.write_bytes(build_ann(x))
    codes = np.arange(count) % 3
    return BackendSource("v1", count, 8, codes, vectors=calls.get("vectors", lambda: x), ann_path=path)


@pytest.mark.parametrize(("count", "ann", "kind"), [(99, True, "exact"), (100, True, "ann"), (100, False, "exact"),
                                                    (99, False, "exact")])
def test_auto_switches_to_the_ann_file_at_its_size(tmp_path, count, ann, kind):
    assert chosen_kind(BackendSettings("auto", ann_min_products=100), source(tmp_path, count, ann)) == kind


def test_a_large_version_without_its_ann_file_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="search.factory"):
        assert chosen_kind(BackendSettings("auto", ann_min_products=40), source(tmp_path, 40)) == "exact"
    assert caplog.messages == ["version v1 has 40 products but no ANN file: searching exactly (rebuild with --ann "
                               "always for the faster search)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="search.factory"):
        chosen_kind(BackendSettings("auto", ann_min_products=41), source(tmp_path, 40))
        chosen_kind(BackendSettings("auto", ann_min_products=40), source(tmp_path, 40, ann=True))
    assert caplog.messages == []  # small enough, or it has the file


@pytest.mark.parametrize("kind", ["exact", "ann", "milvus"])
def test_a_named_kind_is_taken_as_it_is(tmp_path, kind):
    assert chosen_kind(BackendSettings(kind, ann_min_products=0), source(tmp_path, 40)) == kind


def test_exact_opens_on_the_matrix_only(tmp_path):
    def no_blocks():
        raise AssertionError("the exact backend must not read the version block by block")

    backend = open_backend(BackendSettings("exact"), source(tmp_path, blocks=no_blocks))
    assert isinstance(backend, ExactSearch) and backend.name == "exact" and len(backend) == 40


def test_ann_needs_its_file(tmp_path):
    with pytest.raises(NoAnnFile) as caught:
        open_backend(BackendSettings("ann"), source(tmp_path))
    assert str(caught.value) == ("version v1 has no ANN file, and SEARCH_BACKEND=ann needs one (build it with "
                                 "scripts/build_index.py --ann always)")


def test_ann_opens_the_checked_file_with_the_search_depth(tmp_path):
    backend = open_backend(BackendSettings("ann", ann_expansion=37), source(tmp_path, ann=True))
    assert isinstance(backend, AnnSearch) and backend.name == "ann" and len(backend) == 40
    assert backend._expansion == 37
    default = open_backend(BackendSettings("ann"), source(tmp_path, ann=True))
    assert default._expansion == AnnSettings.expansion_search == 128


def test_milvus_is_served_from_its_filled_collection_without_reading_the_matrix(tmp_path, monkeypatch):
    """The build fills Milvus; the gateway only asks for the version's collection of ``count`` rows."""
    from search import milvus

    seen = {}

    def serve(settings, version, count):
        seen.update(settings=settings, version=version, count=count)
        return "a milvus backend"

    def never():
        raise AssertionError("a Milvus replica read the matrix")

    monkeypatch.setattr(milvus.MilvusSearch, "serve", staticmethod(serve))
    settings = BackendSettings("milvus", milvus=milvus.MilvusSettings("x.db"))
    assert open_backend(settings, source(tmp_path, vectors=never)) == "a milvus backend"
    assert seen == {"settings": settings.milvus, "version": "v1", "count": 40}


@pytest.mark.parametrize(("kind", "count", "ann", "needed"), [
    ("exact", 5, True, True), ("ann", 5, True, False), ("milvus", 5, False, False),
    ("auto", 99, True, True), ("auto", 100, True, False), ("auto", 100, False, True)])
def test_only_exact_search_needs_the_raw_matrix(kind, count, ann, needed):
    assert needs_matrix(BackendSettings(kind, ann_min_products=100), count, ann) is needed


def test_the_defaults_are_the_ann_settings_defaults():
    assert (BackendSettings().ann_min_products, BackendSettings().ann_expansion) == (
        AnnSettings.min_products, AnnSettings.expansion_search)

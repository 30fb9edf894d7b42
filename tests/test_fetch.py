"""Catalog image fetching (catalog/fetch.py): local files inside the catalog, cached downloads."""

from __future__ import annotations

import pytest

from catalog.fetch import FetchError, ImageSource
from tests.conftest import jpeg_bytes


def test_local_files_and_the_size_cap_on_both_sides(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x" * 100)
    (tmp_path / "b.jpg").write_bytes(b"x" * 101)
    source = ImageSource(tmp_path, tmp_path / "cache", max_bytes=100)
    assert source.fetch("a.jpg") == b"x" * 100
    with pytest.raises(FetchError, match="larger than 100 bytes"):
        source.fetch("b.jpg")
    with pytest.raises(FetchError, match="not found"):
        source.fetch("missing.jpg")
    with pytest.raises(FetchError, match="escapes"):
        source.fetch("../a.jpg")
    assert (source.downloads, source.cache_hits) == (0, 0)


def test_downloads_are_cached_and_refresh_downloads_again(tmp_path, http_server):
    url = http_server.add("/a.jpg", jpeg_bytes())
    source = ImageSource(tmp_path, tmp_path / "cache", allow_private=True)
    assert source.fetch(url) == jpeg_bytes() and source.fetch(url) == jpeg_bytes()
    assert (source.downloads, source.cache_hits) == (1, 1) and http_server.requests == ["/a.jpg"]
    again = ImageSource(tmp_path, tmp_path / "cache", allow_private=True, refresh=True)
    again.fetch(url)
    assert again.downloads == 1 and http_server.requests == ["/a.jpg", "/a.jpg"]
    assert not list((tmp_path / "cache").glob(".part-*"))


def test_private_hosts_need_permission(tmp_path, http_server):
    url = http_server.add("/a.jpg", jpeg_bytes())
    with pytest.raises(FetchError, match="loopback"):
        ImageSource(tmp_path, tmp_path / "cache").fetch(url)
    assert http_server.requests == []

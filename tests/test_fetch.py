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


def test_a_fifo_or_device_in_the_catalog_is_refused_without_reading(tmp_path):
    """A named pipe would block the build forever on read; it is refused by its type before any read."""
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.jpg")
    source = ImageSource(tmp_path, tmp_path / "cache")
    outcome: list = []

    def fetch():
        try:
            source.fetch("pipe.jpg")
        except FetchError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(10)
    assert outcome == ["not a regular file: pipe.jpg"]


def test_signed_urls_lose_their_query_in_reports(tmp_path, http_server):
    from catalog.build import errors_csv
    from catalog.reader import RowError
    from safeio.paths import redact_url

    signed = "https://cdn.example.com/a.jpg?X-Amz-Signature=secret&X-Amz-Credential=key#frag"
    assert redact_url(signed) == "https://cdn.example.com/a.jpg?…"
    assert redact_url("https://user:pw@cdn.example.com/a.jpg") == "https://cdn.example.com/a.jpg"
    assert redact_url("images/a.jpg?x=1") == "images/a.jpg?x=1"  # a local path is not a URL
    report = errors_csv([RowError(2, "p1", signed, "fetch", "HTTP 403")]).decode()
    assert "secret" not in report and "key" not in report and "https://cdn.example.com/a.jpg?…" in report
    url = http_server.add("/gone.jpg", b"", status=404) + "?token=secret"
    with pytest.raises(FetchError) as err:
        ImageSource(tmp_path, tmp_path / "cache", allow_private=True).fetch(url)
    assert "secret" not in str(err.value) and "answered HTTP 404" in str(err.value)


def test_control_characters_from_the_catalog_are_printed_escaped():
    from catalog.build import BuildReport
    from catalog.reader import RowError

    report = BuildReport("v", "out", "bb", 0, [RowError(3, "id\x1b[2J", "x.jpg", "catalog", "bad \x1b]0;title\x07\r")])
    text = report.summary()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\\x1b[2J" in text


def test_counters_add_up_and_a_new_nested_cache_folder_is_made(tmp_path, http_server):
    urls = [http_server.add(f"/{name}.jpg", jpeg_bytes()) for name in ("a", "b")]
    source = ImageSource(tmp_path, tmp_path / "new" / "nested" / "cache", allow_private=True)
    for url in urls + urls + urls:
        assert source.fetch(url) == jpeg_bytes()
    assert (source.downloads, source.cache_hits) == (2, 4)
    assert len(http_server.requests) == 2


def test_fetch_refusals_word_for_word_and_the_builders_user_agent(tmp_path, http_server, monkeypatch):
    source = ImageSource(tmp_path, tmp_path / "cache", allow_private=True, max_bytes=10)
    (tmp_path / "big.jpg").write_bytes(b"x" * 11)
    (tmp_path / "folder.jpg").mkdir()
    gone = f"image URL answered HTTP 404: {http_server.url}/none.jpg?…"  # the signature is not reported
    for url, message in [("big.jpg", "image larger than 10 bytes"),
                         ("missing.jpg", "image file not found: missing.jpg"),
                         ("folder.jpg", "not a regular file: folder.jpg"), (http_server.url + "/none.jpg?sig=1", gone)]:
        with pytest.raises(FetchError) as refused:
            source.fetch(url)
        assert str(refused.value) == message
    seen = []
    handler = http_server.server.RequestHandlerClass
    original = handler.do_GET

    def do_get(request):
        seen.append(request.headers.get("User-Agent"))
        return original(request)

    monkeypatch.setattr(handler, "do_GET", do_get)
    assert source.fetch(http_server.add("/ua.jpg", b"img")) == b"img"
    assert seen == ["photo-index-builder/0.1"]

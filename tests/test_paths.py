"""Catalog image locations (safeio/paths.py): remote or inside the catalog folder, never outside."""

from __future__ import annotations

import pytest

from safeio.paths import MAX_PRODUCT_URL, UnsafePath, is_remote, printable, product_link, redact_url, resolve_local


@pytest.mark.parametrize(("url", "remote"), [("http://a/b.jpg", True), ("HTTPS://a/b.jpg", True),
                                             ("ftp://a/b.jpg", False), ("images/b.jpg", False)])
def test_is_remote(url, remote):
    assert is_remote(url) is remote


def test_resolve_local_stays_inside_the_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    assert resolve_local("images/a.jpg", tmp_path) == (tmp_path / "images" / "a.jpg").resolve()
    assert resolve_local("images/../images/a.jpg", tmp_path) == (tmp_path / "images" / "a.jpg").resolve()
    (tmp_path / "outside").symlink_to("/etc")
    for bad, reason in [("../secret.jpg", "escapes"), ("/etc/passwd", "escapes"), ("outside/passwd", "escapes"),
                        ("file:///etc/passwd", "scheme"), ("a\0.jpg", "NUL")]:
        with pytest.raises(UnsafePath, match=reason):
            resolve_local(bad, tmp_path)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://cdn.example.com/a.jpg?X-Amz-Signature=secret#part", "https://cdn.example.com/a.jpg?…"),
    ("https://user:pw@cdn.example.com/a.jpg", "https://cdn.example.com/a.jpg"),
    ("https://a@b@cdn.example.com:8443/a.jpg#x", "https://cdn.example.com:8443/a.jpg"),  # the last @ ends the login
    ("http://cdn.example.com/a.jpg", "http://cdn.example.com/a.jpg"),
    ("images/a.jpg?v=1", "images/a.jpg?v=1"),  # a local path is shown as written
])
def test_reports_show_urls_without_their_secrets(url, shown):
    assert redact_url(url) == shown


def test_path_refusals_word_for_word(tmp_path):
    scheme = "unsupported URL scheme in 's3://b/x.jpg': use http, https or a relative path"
    for bad, message in [("a\0.jpg", "path contains a NUL byte"),
                         ("../x.jpg", "path escapes the catalog folder: ../x.jpg"), ("s3://b/x.jpg", scheme)]:
        with pytest.raises(UnsafePath) as refused:
            resolve_local(bad, tmp_path)
        assert str(refused.value) == message
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UnsafePath, match=r"^unusable path 'loop/a.jpg': "):
        resolve_local("loop/a.jpg", tmp_path)


def test_printable_escapes_control_characters_and_cuts_at_its_limit():
    assert printable("a\x1b[31mb\r\nc\x00") == "a\\x1b[31mb\\r\\nc\\x00"
    assert printable("é ✓") == "é ✓"  # printable text is left alone
    assert printable("x" * 200) == "x" * 200
    assert printable("x" * 201) == "x" * 200 + "…"
    assert printable("\n" * 3, limit=4) == "\\n\\n…"  # the limit counts the escaped text


@pytest.mark.parametrize(("text", "kept"), [
    ("https://shop.example/p/1", True), ("http://shop.example:8080/p?id=1#top", True), ("HTTPS://SHOP.EXAMPLE/", True),
    ("javascript:alert(1)", False), ("ftp://shop.example/p", False), ("/p/1", False), ("shop.example/p", False),
    ("https://", False), ("https:///p", False), ("https://user:pw@shop.example/p", False),
    ("https://user@shop.example/p", False), ("https://shop.example/a b", False), ("https://shop.example/\x00", False),
    ("https://shop.example/\x7f", False), ("https://[::1/p", False), ("", False), (None, False), (3, False),
])
def test_a_product_link_is_an_absolute_http_url_with_a_host_and_nothing_else(text, kept):
    assert product_link(text) == (text if kept else None)


def test_a_product_link_at_its_length_limit_is_kept_and_one_more_is_not():
    base = "https://shop.example/"
    assert product_link(base + "a" * (MAX_PRODUCT_URL - len(base))) is not None
    assert product_link(base + "a" * (MAX_PRODUCT_URL - len(base) + 1)) is None

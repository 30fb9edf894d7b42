"""Catalog image locations (catalog/paths.py): remote or inside the catalog folder, never outside."""

from __future__ import annotations

import pytest

from catalog.paths import UnsafePath, is_remote, resolve_local


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

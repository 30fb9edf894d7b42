"""Hostile inputs through the gateway, table-driven: each gets its exact refusal, and the gateway keeps
serving afterwards. Plus property-based fuzzing of image decoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modelio.imaging import ImageError, decode_image
from safeio import safe_http
from tests.conftest import demo_image, jpeg_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: a decompression bomb must be refused before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


class Resendable(io.BytesIO):
    """An upload the test client may send again: the table below is built once per process, and a run
    that repeats a test (mutmut, pytest-rerun) must not find its file closed. Closing rewinds instead."""

    def close(self) -> None:
        self.seek(0)


def upload(data: bytes, **form) -> dict:
    return {"data": {"file": (Resendable(data), "q.jpg"), **form}, "content_type": "multipart/form-data"}


def url(u: str, **form) -> dict:
    return {"json": {"image_url": u, **form}}


# (name, request kwargs, expected status, exact message fragment)
def json_of_size(size: int) -> dict:
    """A JSON body of exactly ``size`` bytes: an image link (within its own 2,048-character limit) and a long
    category that pads it."""
    head = b'{"image_url": "http://x.test/a.jpg", "category": "'
    body = head + b"a" * (size - len(head) - 2) + b'"}'
    assert len(body) == size
    return {"data": body, "content_type": "application/json"}


HOSTILE = [
    ("ssrf loopback", url("http://127.0.0.1/a.jpg"), 400, "resolves to a loopback address (127.0.0.1)"),
    ("ssrf decimal ip", url("http://2130706433/a.jpg"), 400, "loopback address (127.0.0.1)"),
    ("ssrf octal ip", url("http://0177.0.0.1/a.jpg"), 400, "loopback address (127.0.0.1)"),
    ("ssrf hex ip", url("http://0x7f000001/a.jpg"), 400, "loopback address (127.0.0.1)"),
    ("ssrf ipv6 loopback", url("http://[::1]/a.jpg"), 400, "loopback address (::1)"),
    ("ssrf mapped ipv6", url("http://[::ffff:127.0.0.1]/a.jpg"), 400, "loopback address"),
    ("ssrf unspecified", url("http://0.0.0.0/a.jpg"), 400, "unspecified address"),
    ("ssrf metadata", url("http://169.254.169.254/latest/meta-data/"), 400, "link-local address"),
    ("ssrf private 10/8", url("http://10.0.0.8/a.jpg"), 400, "private address"),
    ("ssrf private 192.168", url("http://192.168.1.1/a.jpg"), 400, "private address"),
    ("ssrf multicast", url("http://239.1.1.1/a.jpg"), 400, "multicast address"),
    ("ssrf dns to loopback", url("http://evil.test/a.jpg"), 400, "'evil.test' resolves to a loopback"),
    ("ssrf dns rebinding answer", url("http://rebind.test/a.jpg"), 400, "'rebind.test' resolves to a private"),
    ("scheme file", url("file:///etc/passwd"), 400, "must start with http:// or https://"),
    ("scheme ftp", url("ftp://example.com/a.jpg"), 400, "must start with http:// or https://"),
    ("scheme javascript", url("javascript:alert(1)"), 400, "must start with http:// or https://"),
    ("credentials in url", url("http://u:p@example.com/a.jpg"), 400, "must not contain credentials"),
    ("bad port", url("http://example.com:70000/a.jpg"), 400, "malformed"),
    ("unresolvable", url("http://nothing.invalid/a.jpg"), 400, "cannot resolve host"),
    ("png bomb", upload(png_header_only(100_000, 100_000)), 400, "image too large"),
    ("wide png bomb", upload(png_header_only(65_000, 1_000)), 400, "image too large"),
    # MAX_PIXELS (default 24,000,000): exactly at it is decoded (and this fake PNG has no pixel data), one
    # row more is refused unread
    ("png at the pixel limit", upload(png_header_only(6_000, 4_000)), 400, "corrupt or truncated"),
    ("png one row over the limit", upload(png_header_only(6_000, 4_001)), 400, "image too large"),
    ("zero bytes", upload(b""), 400, "the uploaded file is empty"),
    ("fake gif header", upload(b"GIF89a but not really"), 400, "not a supported image"),
    ("html", upload(b"<script>alert(1)</script>"), 400, "not a supported image"),
    ("truncated jpeg", upload(demo_image(10109)[:1500]), 400, "corrupt or truncated"),
    ("bmp not allowed", upload(encoded(Image.new("RGB", (8, 8)), "BMP")), 400, "not a supported image"),
    ("tiff not allowed", upload(encoded(Image.new("RGB", (8, 8)), "TIFF")), 400, "not a supported image"),
    ("svg not allowed", upload(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), 400, "not a supported image"),
    ("threshold nan", upload(jpeg_bytes(), threshold="nan"), 400, "threshold must be between 0 and 100"),
    ("threshold inf", upload(jpeg_bytes(), threshold="inf"), 400, "threshold must be between 0 and 100"),
    ("top_k huge", upload(jpeg_bytes(), top_k="100000"), 400, "top_k must be between 1 and 100"),
    ("top_k float", upload(jpeg_bytes(), top_k="2.5"), 400, "top_k must be a whole number"),
    ("json not object", {"json": ["http://x"]}, 400, "JSON body must be an object"),
    ("json broken", {"data": b"{not json", "content_type": "application/json"}, 400, "JSON body must be an object"),
    ("oversized upload", upload(b"\xff" * (2 * 1024 * 1024)), 413, "that photo is too large to send (over 1 MB)"),
    ("json nested 200,000 deep", {"data": b"[" * 200_000, "content_type": "application/json"}, 413, "at most 48 KB"),
    ("json nested 10,000 deep", {"data": b"[" * 10_000, "content_type": "application/json"}, 400,
     "JSON body must be an object"),
    ("json of exactly 48 KB", json_of_size(48 * 1024), 400, "cannot resolve host 'x.test'"),
    ("json one byte over 48 KB", json_of_size(48 * 1024 + 1), 413, "at most 48 KB"),
    ("ssrf international name", url("http://bücher.test/a.jpg"), 400, "'xn--bcher-kva.test' resolves to a loopback"),
    ("ssrf site-local ipv6", url("http://[fec0::1]/a.jpg"), 400, "site-local address"),
]

ODD_BUT_FINE = [
    ("cmyk jpeg", encoded(Image.new("CMYK", (40, 40), (0, 200, 200, 0)), "JPEG")),
    ("16-bit png", encoded(Image.fromarray(np.full((40, 40), 40000, np.uint16)), "PNG")),
    ("palette with alpha", encoded(Image.new("P", (40, 40)), "PNG", transparency=0)),
    ("animated gif", encoded(Image.new("RGB", (40, 40)), "GIF", save_all=True,
                             append_images=[Image.new("RGB", (40, 40), (255, 0, 0))])),
    ("webp", encoded(Image.new("RGB", (40, 40), (0, 0, 255)), "WEBP")),
    ("exif rotated", encoded(Image.new("RGB", (60, 30)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00"
                             b"\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00")),
]


@pytest.fixture
def fake_dns(monkeypatch):
    table = {"evil.test": ["127.0.0.1"], "xn--bcher-kva.test": ["127.0.0.1"],
             "rebind.test": ["93.184.216.34", "10.0.0.7"], "nothing.invalid": []}
    real = safe_http.system_resolve
    monkeypatch.setattr(safe_http, "system_resolve", lambda host, port: table.get(host) or real(host, port)
                        if host not in table or table[host] else [])


def shopper_words(reason: str) -> str | None:
    """What the shopper is told for a refusal whose exact ``reason`` goes to the log (None: the reason is
    itself in the shopper's words, and is the answer)."""
    from gateway.routes.errors import IMAGE_WORDS, URL_WORDS

    for fragment, words in (("address", URL_WORDS["refused"]), ("resolves to", URL_WORDS["refused"]),
                            ("credentials", URL_WORDS["refused"]),
                            ("must start with", URL_WORDS["invalid"]), ("malformed", URL_WORDS["invalid"]),
                            ("cannot resolve", URL_WORDS["unreachable"]), ("image too large", IMAGE_WORDS["too_large"]),
                            ("corrupt or truncated", IMAGE_WORDS["damaged"]),
                            ("not a supported image", IMAGE_WORDS["format"])):
        if fragment in reason:
            return words
    return None


@pytest.mark.parametrize("name, request_kw, status, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_refused_exactly_then_still_serving(client, fake_dns, caplog, name, request_kw, status,
                                                          message):
    """Each refusal: its status; the shopper's words (never a host, address or decoder message); the exact
    reason in the log with the request id the answer carries."""
    import logging

    caplog.set_level(logging.INFO)
    resp = client.post("/api/search", **request_kw)
    assert resp.status_code == status, resp.get_data(as_text=True)
    said, words = resp.get_json()["error"], shopper_words(message)
    if words is None:
        assert message in said
    else:
        assert said == words and message in caplog.text
        assert f"[request {resp.headers['X-Request-Id']}]" in caplog.text
        for internal in ("127.0.0.1", "::1", "169.254", "10.0.0", "loopback", "private", "evil.test", "corrupt"):
            assert internal not in said
    good = client.post("/api/search", **upload(demo_image(10109), threshold="0"))
    assert good.status_code == 200 and good.get_json()["results"][0]["id"] == "10109"


@pytest.mark.parametrize("name, data", ODD_BUT_FINE, ids=[o[0] for o in ODD_BUT_FINE])
def test_odd_images_are_handled(client, name, data):
    resp = client.post("/api/search", **upload(data, threshold="0", top_k="3"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert len(resp.get_json()["results"]) == 3


TRAVERSAL = ["../products.csv", "..%2fproducts.csv", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd",
             "images/../../products.csv", "images/%00.jpg", "file:///etc/passwd"]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_catalog_paths_cannot_escape(client, path):
    assert client.get(f"/catalog/{path}", follow_redirects=True).status_code == 404
    assert client.get("/catalog/images/10109.jpg").status_code == 200


def test_html_output_is_escaped(client, fake_dns):
    resp = client.post("/search", data={"image_url": "http://<script>alert(1)</script>.test/x.jpg"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decoding_random_bytes_never_crashes(data):
    try:
        img = decode_image(data)
    except ImageError:
        return
    assert img.mode == "RGB"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 255)), min_size=1, max_size=8))
def test_decoding_corrupted_jpeg_never_crashes(flips):
    data = bytearray(demo_image(10109))
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        img = decode_image(bytes(data))
    except ImageError:
        return
    assert img.mode == "RGB" and img.size[0] > 0


def test_slow_image_links_cannot_take_every_thread(small_index, stub, tmp_path):
    """With one URL-fetch slot, a link that drips keeps it until its deadline (504); a second link meanwhile
    gets 503 with Retry-After, uploads still work, and the slot is free again afterwards."""
    import threading
    import time

    from gateway import create_app
    from gateway.config import Config
    from tests.test_safe_http import DripServer

    config = Config(index_uri=str(small_index), index_poll_s=0, index_cache_dir=str(tmp_path / "copy"),
                    allow_private_urls=True, url_fetch_timeout=1.5, url_fetch_concurrency=1)
    client = create_app(config, client=stub).test_client()
    drip = DripServer(gap=0.1, total=100)
    first: list = []
    hog = threading.Thread(target=lambda: first.append(client.post("/api/search", json={"image_url": drip.url})))
    hog.start()
    time.sleep(0.5)
    busy = client.post("/api/search", json={"image_url": drip.url})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    assert "too many image links" in busy.get_json()["error"]
    assert client.post("/api/search", **upload(demo_image(10109))).status_code == 200
    hog.join(10)
    assert first[0].status_code == 504
    assert first[0].get_json()["error"] == "that link took too long to answer: try again, or upload the photo"
    drip.close()
    again = DripServer(gap=0.01, total=5)
    resp = client.post("/api/search", json={"image_url": again.url})
    assert resp.status_code == 400  # the slot was free: fetched, and found not to be a picture
    assert resp.get_json()["error"] == ("that file is not a picture we can open: choose a JPEG, PNG, WebP or GIF "
                                        "photo")
    again.close()


@pytest.mark.parametrize("body", ['{"query_token": "q2.a.\\ud800"}', '{"category": "\\udfff", "image_url": "x"}',
                                  '{"image_url": ["\\ud83d"]}'])
def test_a_lone_surrogate_in_json_is_a_400_not_a_crash(client, body, caplog):
    answer = client.post("/api/search", data=body, content_type="application/json")
    assert answer.status_code == 400 and "not valid UTF-8" in answer.get_json()["error"]
    assert "Traceback" not in caplog.text
    paired = client.post("/api/search", data='{"category": "\\ud83d\\udc5f"}', content_type="application/json")
    assert paired.status_code == 400 and "no image" in paired.get_json()["error"]  # a real emoji (👟) is text

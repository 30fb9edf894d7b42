"""gateway/multipart.py: Werkzeug's multipart decoder with regex-free boundary finding. The same events as
Werkzeug's own decoder on generated bodies (every line-break style, boundaries inside data, near-misses,
truncation, any chunking), and installed where the app's form parser uses it."""

from __future__ import annotations

import io

import pytest
import werkzeug.formparser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.sansio.multipart import Epilogue, MultipartDecoder, NeedData
from werkzeug.wrappers import Request

from gateway import create_app, multipart
from gateway.multipart import BoundaryFinder, Decoder
from tests.test_routes import Model, config_for, shop  # noqa: F401 - shop: the 60-product version fixture

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"


def events(cls, boundary: bytes, chunks: list[bytes], limit: int | None = None, parts: int = 20) -> list[str]:
    """What a decoder says for ``chunks``, driven as Werkzeug's parser drives it, then the error if any."""
    decoder, said = cls(boundary, limit, max_parts=parts), []
    try:
        for chunk in [*chunks, None]:
            decoder.receive_data(chunk)
            for _ in range(10_000):
                event = decoder.next_event()
                said.append(repr(event))
                if isinstance(event, (Epilogue, NeedData)):
                    break
    except Exception as exc:  # noqa: BLE001 - the error is part of what is compared
        said.append(f"{type(exc).__name__}: {exc}")
    return said


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


@st.composite
def bodies(draw):
    """A boundary and a body made of the pieces that decide where boundaries are: every line break, dashes,
    spaces, the boundary itself and prefixes of it, inside the preamble, the headers and the data."""
    boundary = draw(st.text(BCHARS, min_size=1, max_size=12)).encode()
    piece = st.sampled_from([b"\r\n", b"\n", b"\r", b"--", b" ", b"\t", b"x", b"--" + boundary, boundary,
                             b"--" + boundary[:-1], b"\r\n--" + boundary + b"x", b"--" + boundary + b"--"])
    filler = st.lists(piece, max_size=6).map(b"".join)
    brk = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
    body = draw(filler)
    for i in range(draw(st.integers(0, 3))):
        disposition = b'form-data; name="f%d"' % i + draw(st.sampled_from([b"", b'; filename="a.jpg"']))
        body += (draw(brk) + b"--" + boundary + draw(st.sampled_from([b"", b" ", b"\t "])) + draw(brk)
                 + b"Content-Disposition: " + disposition + draw(brk) + draw(brk) + draw(filler))
    last = draw(st.sampled_from([b"--", b"-- ", b"--\r\n", b"", b"\r\n"]))
    body += draw(brk) + b"--" + boundary + last + draw(filler)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # a body cut short
    return boundary, body, draw(st.lists(st.integers(0, 10_000), max_size=4))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.sampled_from([None, 8, 64]), st.sampled_from([1, 2, 20]))
def test_the_same_events_as_werkzeugs_own_decoder(case, limit, parts):
    boundary, body, cuts = case
    chunks = chunked(body, cuts)
    assert events(Decoder, boundary, chunks, limit, parts) == events(MultipartDecoder, boundary, chunks, limit, parts)


@pytest.mark.parametrize("parts", [1, 2])
def test_the_parts_limit_at_its_edge(parts):
    part = b"--B\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n"
    body = part % 0 + part % 1 + b"--B--"
    said = events(Decoder, b"B", [body], parts=parts)
    assert said == events(MultipartDecoder, b"B", [body], parts=parts)
    assert ("RequestEntityTooLarge" in said[-1]) == (parts < 2)


CASES = [
    b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--B--\r\n",  # CRLF, no preamble
    b"preamble\r\n--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--B--",
    b"--B\nContent-Disposition: form-data; name=\"a\"\n\nv\n--B--\n",  # LF only
    b"--B\rContent-Disposition: form-data; name=\"a\"\r\rv\r--B--\r",  # CR only
    b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv--B\r\nstill v\r\n--B--",  # no break before
    b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--Bx\r\n--B--",  # followed by more name
    b"--B \t\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--B-- \r\nepilogue",  # spaces after
    b"x--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--B--",  # preamble runs into it
]


@pytest.mark.parametrize("body", CASES)
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_the_same_events_on_known_bodies_in_any_chunks(body, size):
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    assert events(Decoder, b"B", chunks) == events(MultipartDecoder, b"B", chunks)
    assert any("Data(data=b'v" in e for e in events(Decoder, b"B", chunks))


def test_the_finder_finds_what_werkzeugs_pattern_finds_from_any_start():
    data = b"ab--B\r\nc\r\n--Bx\r\n--B\r\n"
    decoder = MultipartDecoder(b"B")  # its two compiled patterns
    for finder, pattern in ((BoundaryFinder(b"B", line_break=True), decoder.boundary_re),
                            (BoundaryFinder(b"B", line_break=False), decoder.preamble_re)):
        for pos in range(len(data) + 1):
            ours, theirs = finder.search(data, pos), pattern.search(data, pos)
            assert (ours is None) == (theirs is None), pos
            if theirs is not None:
                assert (ours.start(), ours.end(), ours.group(1)) == (theirs.start(), theirs.end(), theirs.group(1))
    # a boundary of dashes: the match starts one past a near miss, where a find two past would not look
    for boundary, dashes in ((b"-", b"\r\n----\r\n"), (b"--", b"\n-----\n")):
        decoder = MultipartDecoder(boundary)
        for finder, pattern in ((BoundaryFinder(boundary, True), decoder.boundary_re),
                                (BoundaryFinder(boundary, False), decoder.preamble_re)):
            ours, theirs = finder.search(dashes), pattern.search(dashes)
            assert (ours and (ours.start(), ours.end())) == (theirs and (theirs.start(), theirs.end()))
    assert BoundaryFinder(b"-", False).search(b"\r\n----\r\n").start() == 3
    found = BoundaryFinder(b"B", line_break=True).search(data)
    assert (found.start(), found.end()) == (14, 21)  # "--B" at 2 has no line break before, "--Bx" goes on
    with pytest.raises(IndexError, match="0"):
        found.group(0)


def test_the_app_factory_installs_it(shop, monkeypatch):  # noqa: F811 - the imported fixture
    monkeypatch.setattr(werkzeug.formparser, "MultipartDecoder", MultipartDecoder)
    create_app(config_for(shop[0]), client=Model(shop[1]))
    assert werkzeug.formparser.MultipartDecoder is Decoder


def test_an_upload_is_read_through_it(monkeypatch):
    monkeypatch.setattr(werkzeug.formparser, "MultipartDecoder", MultipartDecoder)
    assert multipart.install() is True and werkzeug.formparser.MultipartDecoder is Decoder
    assert multipart.install() is True  # again: already there
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n\r\n\x00\xff--XyZ-\r\n"
            b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n5\r\n--XyZ--\r\n")
    request = Request({"REQUEST_METHOD": "POST", "CONTENT_TYPE": "multipart/form-data; boundary=XyZ",
                       "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "SERVER_NAME": "x",
                       "SERVER_PORT": "80", "PATH_INFO": "/", "wsgi.url_scheme": "http"})
    assert request.files["file"].read() == b"\x00\xff--XyZ-\r\n"
    assert request.form["top_k"] == "5"


def test_not_installed_over_another_decoder(monkeypatch):
    class Other(MultipartDecoder):
        pass

    monkeypatch.setattr(werkzeug.formparser, "MultipartDecoder", Other)
    assert multipart.install() is False
    assert werkzeug.formparser.MultipartDecoder is Other

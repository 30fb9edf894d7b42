"""Uploads read without compiling two regular expressions per request.

Werkzeug's multipart decoder compiles two patterns around each request's boundary; a browser or HTTP client
makes a new boundary for every upload, so Python's pattern cache never helps, and compiling them is most of
reading an upload form (0.25 of 0.33 ms in a loop, about 0.8 ms of a query inside a busy gunicorn worker;
docs/PERFORMANCE.md, session 10). ``BoundaryFinder`` finds what those two patterns find with ``bytes.find``
and one pattern compiled once; ``install`` makes Werkzeug's form parser use a decoder with it. Nothing else
of Werkzeug's parsing changes: its limits, events and errors are its own (tests/test_multipart.py compares
both decoders event for event on generated bodies)."""

from __future__ import annotations

import re

import werkzeug.formparser
from werkzeug.sansio.multipart import LINE_BREAK, MultipartDecoder, State

#: What may follow a boundary, as Werkzeug's patterns say it: ``--`` (the last one) with optional horizontal
#: space and line break, or optional horizontal space and a line break.
AFTER_BOUNDARY = re.compile(rb"--[^\S\n\r]*%s?|[^\S\n\r]*%s" % (LINE_BREAK, LINE_BREAK))


class BoundaryMatch:
    """A found boundary: where it starts (with the line break before it), ends, and what followed it."""

    __slots__ = ("_end", "_start", "_tail")

    def __init__(self, start: int, end: int, tail: bytes) -> None:
        self._start, self._end, self._tail = start, end, tail

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        """Group 1 of Werkzeug's pattern: what followed the boundary (``--`` on the last one)."""
        if index != 1:
            raise IndexError(index)
        return self._tail


class BoundaryFinder:
    """The leftmost ``[line break]--boundary`` followed by ``AFTER_BOUNDARY``, as ``re.search`` would find it for
    Werkzeug's pattern; the line break before is required when ``line_break`` (between parts), optional
    before the first boundary."""

    def __init__(self, boundary: bytes, line_break: bool) -> None:
        self.mark = b"--" + boundary
        self.line_break = line_break

    def search(self, data: bytes | bytearray, pos: int = 0) -> BoundaryMatch | None:
        at = data.find(self.mark, pos)
        while at != -1:
            start = self._line_start(data, at, pos)
            if start is not None:
                tail = AFTER_BOUNDARY.match(data, at + len(self.mark))
                if tail is not None:
                    return BoundaryMatch(start, tail.end(), bytes(tail.group(0)))
            at = data.find(self.mark, at + 1)
        return None

    def _line_start(self, data: bytes | bytearray, at: int, pos: int) -> int | None:
        """Where a match of the boundary at ``at`` starts: with the line break just before it (CRLF, LF or CR,
        not before ``pos``), else at ``at`` when a line break is optional, else None."""
        if at - 2 >= pos and data[at - 2:at] == b"\r\n":
            return at - 2
        if at - 1 >= pos and data[at - 1:at] in (b"\n", b"\r"):
            return at - 1
        return None if self.line_break else at


class Decoder(MultipartDecoder):
    """Werkzeug's decoder with ``BoundaryFinder`` in place of its two per-boundary patterns."""

    def __init__(self, boundary: bytes, max_form_memory_size: int | None = None, *,
                 max_parts: int | None = None) -> None:
        # Werkzeug's own __init__ compiles the patterns: its other fields are set here as it sets them.
        self.buffer = bytearray()
        self.complete = False
        self.max_form_memory_size = max_form_memory_size
        self.max_parts = max_parts
        self.state = State.PREAMBLE
        self.boundary = boundary
        self.preamble_re = BoundaryFinder(boundary, line_break=False)
        self.boundary_re = BoundaryFinder(boundary, line_break=True)
        self._search_position = 0
        self._parts_decoded = 0


def install() -> bool:
    """Make Werkzeug's form parser decode uploads with ``Decoder`` (once per process); False, changing
    nothing, when its decoder is not the one this was written against (a new Werkzeug: the test fails)."""
    current = werkzeug.formparser.MultipartDecoder
    if current is Decoder:
        return True
    fields = vars(MultipartDecoder(b"x"))
    expected = {"buffer", "complete", "max_form_memory_size", "max_parts", "state", "boundary", "preamble_re",
                "boundary_re", "_search_position", "_parts_decoded"}
    if current is not MultipartDecoder or set(fields) != expected:
        return False
    werkzeug.formparser.MultipartDecoder = Decoder
    return True

"""A request id on every request: taken from a well-formed ``X-Request-Id`` (a load balancer's or a
client's), else made here; returned in the ``X-Request-Id`` answer header and put on every log line written
while the request is served, so a shopper's "it failed" can be found in the log."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, has_request_context, request

#: One line per request answered: its id, route pattern, method, status and duration.
access = logging.getLogger("photo.access")

HEADER = "X-Request-Id"
#: An incoming id is kept only if it is this simple (no log injection, bounded length).
WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def current() -> str:
    """The current request's id ("-" outside a request)."""
    if has_request_context():
        return str(g.get("request_id", "-"))
    return "-"


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (a format may use ``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current()
        return True


def install(app: Flask) -> None:
    """Give every request an id, answer it in ``X-Request-Id``, and make it available to logging."""

    @app.before_request
    def _assign() -> None:
        given = request.headers.get(HEADER, "")
        g.request_id = given if WELL_FORMED.fullmatch(given) else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def _answer(response):
        response.headers[HEADER] = current()
        started = g.get("request_started")
        took = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        access.info("%s %s %s", request.method, request.path, response.status_code,
                    extra={"request_id": current(), "route": request.url_rule.rule if request.url_rule else "unmatched",
                           "method": request.method, "status": response.status_code, "duration_ms": took})
        return response

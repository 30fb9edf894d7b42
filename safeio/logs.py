"""Logs as one JSON object per line (time, level, logger, message, and the request's id, route, method, status
and duration where there is one), for the gateway and the build: what log pipelines (CloudWatch, Loki,
Elasticsearch) parse without rules. ``LOG_FORMAT=text`` gives plain lines for a terminal instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Record attributes copied into the JSON object when a log call passes them (``extra={...}``).
FIELDS = ("request_id", "route", "method", "status", "duration_ms")
#: ``LOG_FORMAT=text``: one plain line per record.
TEXT_FORMAT = "%(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an exception's traceback goes in ``exc_info`` as text, never a second line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record, not the stream it was made with: a handler made
    while stderr was replaced (a test runner's capture, closed later) would otherwise fail at exit."""

    @property
    def stream(self):  # noqa: ANN201 - logging's own attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(fmt: str = "json", level: int = logging.INFO, *filters: logging.Filter) -> None:
    """Send INFO and above to stderr, as JSON lines (``fmt="json"``) or plain text (``"text"``)."""
    handler = StderrHandler()
    for record_filter in filters:
        handler.addFilter(record_filter)
    if fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_config(fmt: str = "json", request_filter: str = "") -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: every record (the app's and gunicorn's own) in one format, INFO kept;
    gunicorn's access log is off (the app logs each request itself, with its id and route). ``request_filter``:
    the dotted name of a ``logging.Filter`` class that puts the request's id on each record."""
    formatter = {"()": JsonFormatter} if fmt != "text" else {"format": TEXT_FORMAT}
    filters = {"request": {"()": request_filter}} if request_filter else {}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"photo": formatter},
        "filters": filters,
        "handlers": {"stderr": {"class": "safeio.logs.StderrHandler", "formatter": "photo",
                                "filters": list(filters)}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
                    "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False}},
    }

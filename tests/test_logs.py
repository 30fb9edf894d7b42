"""Logs (safeio/logs.py): one JSON object per line from the gateway (gunicorn included) and the build, each
request's line with its id, route, status and duration; INFO kept."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import requests

from safeio.logs import JsonFormatter, gunicorn_config
from tests.conftest import REPO


def record(message: str = "hello %s", args=("world",), **extra) -> logging.LogRecord:
    rec = logging.LogRecord("photo.test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_record_is_one_json_object_with_its_request_fields():
    line = JsonFormatter().format(record(request_id="abc", route="/api/search", method="POST", status=200,
                                         duration_ms=12.5, unrelated="x"))
    entry = json.loads(line)
    assert entry["message"] == "hello world" and entry["level"] == "INFO" and entry["logger"] == "photo.test"
    assert entry["time"].endswith("Z") and len(entry["time"]) == 24
    assert {k: entry[k] for k in ("request_id", "route", "method", "status", "duration_ms")} == {
        "request_id": "abc", "route": "/api/search", "method": "POST", "status": 200, "duration_ms": 12.5}
    assert "unrelated" not in entry
    assert "request_id" not in json.loads(JsonFormatter().format(record(request_id="-")))  # outside a request


def test_a_traceback_stays_inside_its_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record()
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]


@pytest.mark.parametrize(("fmt", "json_lines"), [("json", True), ("text", False)])
def test_configure_writes_info_in_the_chosen_format(fmt, json_lines):
    code = (f"import logging; from safeio.logs import configure; configure({fmt!r}); "
            "logging.getLogger('photo.x').info('kept %d', 1); logging.getLogger('photo.x').debug('dropped')")
    err = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "dropped" not in err
    if json_lines:
        assert json.loads(lines[0])["message"] == "kept 1"
    else:
        assert lines[0] == "INFO photo.x kept 1"


def test_gunicorns_own_logs_use_the_same_format_and_the_request_filter():
    config = gunicorn_config("json", "gateway.request_id.RequestIdFilter")
    assert config["formatters"]["photo"]["()"] is JsonFormatter
    assert config["handlers"]["stderr"]["filters"] == ["request"]
    assert config["loggers"]["gunicorn.error"]["level"] == "INFO" and config["root"]["level"] == "INFO"
    assert "filters" not in gunicorn_config("text")["handlers"]["stderr"] or not gunicorn_config("text")[
        "handlers"]["stderr"]["filters"]



def test_each_request_is_logged_with_its_id_route_status_and_duration(client, caplog):
    caplog.set_level(logging.INFO, logger="photo.access")
    answer = client.get("/healthz", headers={"X-Request-Id": "req-42"})
    lines = [r for r in caplog.records if r.name == "photo.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.request_id, line.route, line.method, line.status) == ("req-42", "/healthz", "GET", 200)
    assert line.duration_ms >= 0 and answer.headers["X-Request-Id"] == "req-42"


@pytest.mark.integration
def test_the_served_gateway_logs_json_lines_with_request_ids(start_gateway, demo_index, refusing_url):
    """Under gunicorn: every line of the log is a JSON object, INFO such as the served version is kept, and a
    request's line carries the id its answer returned."""
    gw = start_gateway(INDEX_URI=str(demo_index), TORCHSERVE_URL=refusing_url)
    answer = requests.get(f"{gw.url}/healthz", timeout=10)
    rid = answer.headers["X-Request-Id"]
    gw.stop()
    entries = [json.loads(line) for line in gw.log_path.read_text().splitlines() if line.strip()]
    assert any(e["level"] == "INFO" and "serving index version" in e["message"] for e in entries)
    mine = [e for e in entries if e.get("request_id") == rid]
    assert mine and mine[-1]["route"] == "/healthz" and mine[-1]["status"] == 200 and "duration_ms" in mine[-1]
    assert any(e["logger"].startswith("gunicorn") for e in entries)  # gunicorn's own lines too


def test_the_handler_writes_to_the_stderr_of_the_moment(monkeypatch):
    """A handler made while stderr was a test runner's capture keeps working once that capture is closed."""
    import io

    from safeio.logs import StderrHandler

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    first.close()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    handler.emit(record())
    assert json.loads(later.getvalue())["message"] == "hello world"

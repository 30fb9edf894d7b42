"""The Lambda entry point (gateway/lambda_handler.py) answering API Gateway events, with a real TorchServe."""

from __future__ import annotations

import base64
import importlib
import json
import sys
import time

import pytest

from tests.conftest import demo_image

pytestmark = pytest.mark.integration


def event(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> dict:
    """An API Gateway REST API (payload 1.0) proxy event, binary bodies base64-encoded as API Gateway sends them."""
    return {"resource": "/{proxy+}", "path": path, "httpMethod": method, "headers": headers or {},
            "multiValueHeaders": {k: [v] for k, v in (headers or {}).items()}, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": {"proxy": path.lstrip("/")},
            "stageVariables": None, "requestContext": {"path": f"/prod{path}", "stage": "prod",
                                                       "httpMethod": method, "requestId": "test"},
            "body": base64.b64encode(body).decode() if body else None, "isBase64Encoded": bool(body)}


def multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = "photo-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def lambda_module(monkeypatch, small_index, torchserve, tmp_path):
    monkeypatch.setenv("INDEX_URI", str(small_index))
    monkeypatch.setenv("TORCHSERVE_URL", torchserve.url)
    monkeypatch.setenv("INDEX_CACHE_DIR", str(tmp_path / "copy"))
    monkeypatch.delenv("INDEX_POLL_ON_REQUEST", raising=False)
    sys.modules.pop("gateway.lambda_handler", None)
    module = importlib.import_module("gateway.lambda_handler")
    yield module
    sys.modules.pop("gateway.lambda_handler", None)


def test_health_and_a_search_through_api_gateway_events(lambda_module):
    health = lambda_module.handler(event("GET", "/healthz"), None)
    assert health["statusCode"] == 200 and json.loads(health["body"]) == {"status": "ok"}
    body, content_type = multipart({"threshold": "0", "top_k": "3"}, demo_image("10109"))
    found = lambda_module.handler(event("POST", "/api/search", body, {"Content-Type": content_type}), None)
    assert found["statusCode"] == 200, found["body"]
    answer = json.loads(found["body"])
    assert answer["results"][0]["id"] == "10109" and len(answer["results"]) == 3
    body, content_type = multipart({}, b"not an image")
    refused = lambda_module.handler(event("POST", "/api/search", body, {"Content-Type": content_type}), None)
    assert refused["statusCode"] == 400 and "not a picture we can open" in json.loads(refused["body"])["error"]


def test_a_photo_sent_as_the_body_through_api_gateway(lambda_module):
    """The photo itself as the body (``image/*`` is one of the API's binary media types): base64 in the event."""
    sent = event("POST", "/api/search", demo_image("10109"), {"Content-Type": "image/jpeg"})
    query = {"threshold": "0", "top_k": "2"}
    sent["queryStringParameters"], sent["multiValueQueryStringParameters"] = query, {k: [v] for k, v in query.items()}
    found = lambda_module.handler(sent, None)
    assert found["statusCode"] == 200, found["body"]
    assert [r["id"] for r in json.loads(found["body"])["results"]][:1] == ["10109"]
    assert len(json.loads(found["body"])["results"]) == 2  # the query string's settings were read


def test_index_poll_happens_on_requests_not_in_a_thread(lambda_module):
    svc = lambda_module.app.extensions["photo"]
    assert svc.config.index_poll_on_request and svc.indexes.poll_s > 0 and not svc.indexes.polling
    checked = svc.indexes.checked_at
    assert lambda_module.handler(event("GET", "/healthz"), None)["statusCode"] == 200
    assert svc.indexes.checked_at == checked  # within INDEX_POLL_S: no look at the store
    svc.indexes.poll_s = 0.01
    time.sleep(0.05)
    assert lambda_module.handler(event("GET", "/healthz"), None)["statusCode"] == 200
    assert svc.indexes.checked_at > checked  # the request itself looked for a new version


def test_the_page_behind_a_rest_stage_links_inside_the_stage(lambda_module):
    """The advertised SearchUrl is https://…/prod/: the page's style sheet, script and form must be under /prod
    too, and the static files load through the same function."""
    page = lambda_module.handler(event("GET", "/"), None)
    assert page["statusCode"] == 200
    html = base64.b64decode(page["body"]).decode() if page.get("isBase64Encoded") else page["body"]
    assert 'href="/prod/static/style.css"' in html and 'action="/prod/search"' in html
    assert 'src="/prod/static/page.js"' in html
    css = lambda_module.handler(event("GET", "/static/style.css"), None)
    headers = css.get("headers") or {k: v[-1] for k, v in css["multiValueHeaders"].items()}
    assert css["statusCode"] == 200 and headers["Content-Type"].startswith("text/css")


def v2_event(method: str, raw_path: str, stage: str = "$default") -> dict:
    """An HTTP API or Function URL (payload 2.0) event."""
    return {"version": "2.0", "routeKey": "$default", "rawPath": raw_path, "rawQueryString": "", "headers": {},
            "requestContext": {"stage": stage, "requestId": "test",
                               "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1",
                                        "sourceIp": "203.0.113.9"}},
            "isBase64Encoded": False}


@pytest.mark.parametrize(("raw", "stage", "prefix"), [("/", "$default", ""), ("/beta/", "beta", "/beta")],
                         ids=["function-url-or-default-stage", "http-api-named-stage"])
def test_http_api_and_function_url_events_serve_the_page_with_working_links(lambda_module, raw, stage, prefix):
    page = lambda_module.handler(v2_event("GET", raw, stage), None)
    assert page["statusCode"] == 200
    html = base64.b64decode(page["body"]).decode() if page.get("isBase64Encoded") else page["body"]
    assert f'href="{prefix}/static/style.css"' in html and f'action="{prefix}/search"' in html
    health = lambda_module.handler(v2_event("GET", f"{prefix}/healthz", stage), None)
    assert health["statusCode"] == 200 and json.loads(health["body"]) == {"status": "ok"}

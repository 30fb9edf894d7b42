"""The Lambda entry's stage prefix (gateway/stage.py ``stage_prefix``/``with_stage_prefix``): links and
form targets carry the address the client used, for REST API stages, HTTP API stages and Function URLs."""

from __future__ import annotations

import base64

import pytest
from apig_wsgi import make_lambda_handler
from flask import Flask, url_for

from gateway.stage import stage_prefix, with_stage_prefix


def rest(path: str, seen: str) -> dict:
    """A REST API (payload 1.0) event: ``path`` as the function gets it, ``seen`` as the client sent it."""
    return {"resource": "/{proxy+}", "path": path, "httpMethod": "GET", "headers": {}, "multiValueHeaders": {},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "requestContext": {"path": seen, "stage": "prod"}, "body": None, "isBase64Encoded": False}


def v2(raw_path: str, stage: str = "$default") -> dict:
    """An HTTP API or Function URL (payload 2.0) event."""
    return {"version": "2.0", "routeKey": "$default", "rawPath": raw_path, "rawQueryString": "", "headers": {},
            "requestContext": {"stage": stage, "http": {"method": "GET", "path": raw_path, "sourceIp": "1.2.3.4",
                                                                        "protocol": "HTTP/1.1"}},
            "isBase64Encoded": False}


@pytest.mark.parametrize(("event", "prefix"), [
    (rest("/search", "/prod/search"), "/prod"),  # the default execute-api address: the stage
    (rest("/", "/prod/"), "/prod"),
    (rest("/search", "/search"), ""),  # a custom domain mapped to the stage at its root
    (rest("/search", "/shop/search"), "/shop"),  # a custom domain with a base path
    (v2("/search"), ""),  # HTTP API $default stage, or a Function URL
    (v2("/beta/search", "beta"), "/beta"),  # HTTP API named stage: in rawPath
    (v2("/beta", "beta"), "/beta"),
    (v2("/betamax/search", "beta"), ""),  # only a whole path segment is a stage
    ({}, ""),
])
def test_the_prefix_is_what_the_client_used_and_the_function_did_not_see(event, prefix):
    assert stage_prefix(event) == prefix


def app() -> Flask:
    web = Flask(__name__)

    @web.get("/search")
    def search():
        return f"{url_for('search')} {url_for('static', filename='style.css')}"

    return web


@pytest.mark.parametrize(("event", "links"), [
    (rest("/search", "/prod/search"), "/prod/search /prod/static/style.css"),
    (v2("/beta/search", "beta"), "/beta/search /beta/static/style.css"),
    (v2("/search"), "/search /static/style.css"),
])
def test_links_made_behind_a_stage_carry_it(event, links):
    handler = make_lambda_handler(with_stage_prefix(app()), binary_support=True)
    answer = handler(event, None)
    assert answer["statusCode"] == 200, answer
    body = base64.b64decode(answer["body"]).decode() if answer.get("isBase64Encoded") else answer["body"]
    assert body == links

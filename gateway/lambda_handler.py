"""AWS Lambda entry point: API Gateway (REST or HTTP API) events → the same Flask app.

The container image (infra/docker/gateway.Dockerfile, target ``lambda``) runs ``gateway.lambda_handler.handler``.
One process per Lambda instance holds the index; a background thread would be frozen between invocations,
so a new published version is looked for on requests (``INDEX_POLL_ON_REQUEST``, every ``INDEX_POLL_S``).
Uploads arrive base64-encoded (binary media types on the API), which is why ``MAX_UPLOAD_MB`` is lower here.

Behind a REST API's stage (``https://…/prod/search``) API Gateway hands the function ``/search``, and
apig-wsgi leaves ``SCRIPT_NAME`` empty, so the page would link ``/static/style.css`` and post to ``/search``,
outside the stage. ``with_stage_prefix`` sets ``SCRIPT_NAME`` to the part of the address the client used
that the function does not see (the stage, or a custom domain's base path), and strips a named HTTP API
stage from the path the same way; every link and form target Flask makes then carries it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from apig_wsgi import make_lambda_handler

from gateway import create_app
from gateway.config import Config
from gateway.request_id import RequestIdFilter
from safeio.logs import configure as configure_logs

#: A frozen Lambda runs no thread between invocations: new versions are looked for on requests, unless the
#: environment says otherwise.
LAMBDA_DEFAULTS = {"INDEX_POLL_ON_REQUEST": "true"}



def stage_prefix(event: dict[str, Any]) -> str:
    """The address prefix the client used that the function's path lacks ("" when none)."""
    context = event.get("requestContext") or {}
    if event.get("version") == "2.0":  # HTTP API or Function URL: a named stage is part of rawPath
        stage = str(context.get("stage") or "$default")
        prefix = f"/{stage}"
        raw = str(event.get("rawPath") or "")
        return prefix if stage != "$default" and (raw == prefix or raw.startswith(prefix + "/")) else ""
    seen, path = str(context.get("path") or ""), str(event.get("path") or "")  # REST: context.path is as sent
    if path and seen.endswith(path) and seen != path:
        return seen[: len(seen) - len(path)].rstrip("/")
    return ""


def with_stage_prefix(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``app`` with ``SCRIPT_NAME`` set from the event, and a named HTTP API stage taken off ``PATH_INFO``."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        prefix = stage_prefix(environ.get("apig_wsgi.full_event") or {})
        if prefix:
            environ["SCRIPT_NAME"] = prefix
            if environ.get("PATH_INFO", "").startswith(prefix + "/") or environ.get("PATH_INFO") == prefix:
                environ["PATH_INFO"] = environ["PATH_INFO"][len(prefix):] or "/"
        return app(environ, start_response)

    return wsgi


_settings = Config.from_env(LAMBDA_DEFAULTS | dict(os.environ))
configure_logs(_settings.log_format, logging.INFO, RequestIdFilter())  # CloudWatch gets one JSON object per line
app = create_app(_settings)  # at cold start: one index per instance
_wsgi = make_lambda_handler(with_stage_prefix(app), binary_support=True)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler."""
    return _wsgi(event, context)

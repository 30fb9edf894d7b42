"""AWS Lambda entry point: API Gateway (REST or HTTP API) events → the same Flask app.

The container image (infra/docker/gateway.Dockerfile, target ``lambda``) runs ``gateway.lambda_handler.handler``.
One process per Lambda instance holds the index; a background thread would be frozen between invocations,
so a new published version is looked for on requests (``INDEX_POLL_ON_REQUEST``, every ``INDEX_POLL_S``).
Uploads arrive base64-encoded (binary media types on the API), which is why ``MAX_UPLOAD_MB`` is lower here.

Links and form targets carry the API's stage (gateway/stage.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from apig_wsgi import make_lambda_handler

from gateway import create_app
from gateway.config import Config
from gateway.request_id import RequestIdFilter
from gateway.stage import with_stage_prefix
from safeio.logs import configure as configure_logs

#: A frozen Lambda runs no thread between invocations: new versions are looked for on requests, unless the
#: environment says otherwise.
LAMBDA_DEFAULTS = {"INDEX_POLL_ON_REQUEST": "true"}

_settings = Config.from_env(LAMBDA_DEFAULTS | dict(os.environ))
configure_logs(_settings.log_format, logging.INFO, RequestIdFilter())  # CloudWatch gets one JSON object per line
app = create_app(_settings)  # at cold start: one index per instance
_wsgi = make_lambda_handler(with_stage_prefix(app), binary_support=True)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler."""
    return _wsgi(event, context)

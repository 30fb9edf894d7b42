"""AWS Lambda entry point: API Gateway (REST or HTTP API) events → the same Flask app.

The container image (infra/docker/gateway.Dockerfile, target ``lambda``) runs ``gateway.lambda_handler.handler``.
One process per Lambda instance holds the index; a background thread would be frozen between invocations,
so a new published version is looked for on requests (``INDEX_POLL_ON_REQUEST``, every ``INDEX_POLL_S``).
Uploads arrive base64-encoded (binary media types on the API), which is why ``MAX_UPLOAD_MB`` is lower here.
"""

from __future__ import annotations

import os
from typing import Any

from apig_wsgi import make_lambda_handler

from gateway import create_app
from gateway.config import Config

#: A frozen Lambda runs no thread between invocations: new versions are looked for on requests, unless the
#: environment says otherwise.
LAMBDA_DEFAULTS = {"INDEX_POLL_ON_REQUEST": "true"}

app = create_app(Config.from_env(LAMBDA_DEFAULTS | dict(os.environ)))  # at cold start: one index per instance
_wsgi = make_lambda_handler(app, binary_support=True)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler."""
    return _wsgi(event, context)

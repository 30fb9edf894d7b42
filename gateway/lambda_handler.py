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

os.environ.setdefault("INDEX_POLL_ON_REQUEST", "true")

from gateway import create_app  # noqa: E402 - after the Lambda defaults above

app = create_app()  # at cold start: the index is loaded once per Lambda instance
_wsgi = make_lambda_handler(app, binary_support=True)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function's handler."""
    return _wsgi(event, context)

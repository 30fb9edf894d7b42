"""The address prefix a Lambda behind API Gateway is reached under (a REST API's stage, a custom domain's base
path, a named HTTP API stage), made ``SCRIPT_NAME`` so every link and form target Flask makes carries it.

Behind a REST API's stage (``https://…/prod/search``) API Gateway hands the function ``/search``, and
apig-wsgi leaves ``SCRIPT_NAME`` empty, so the page would link ``/static/style.css`` and post to ``/search``,
outside the stage. Imported by gateway/lambda_handler.py; it has no side effects of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


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

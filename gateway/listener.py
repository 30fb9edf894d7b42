"""Which listener a request arrived on: the public one (shoppers, the load balancer) or the admin one
(``GATEWAY_ADMIN_PORT``: Prometheus, operators), so that ``/metrics`` and ``/readyz``'s details are served
only where the public route cannot reach.

``python -m gateway`` binds both and wraps the app in ``tag_admin_requests``, which marks a request that
came in through the admin port, judged by the socket it was accepted on (a client cannot forge that: it is
neither a header nor part of the URL). Without an admin port (Lambda, ``make demo`` by default) no request
is marked, so metrics and details are served nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import request

#: The WSGI environ key set on requests that came in through the admin listener.
ADMIN = "photo.admin_listener"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def tag_admin_requests(app: WsgiApp, admin_port: int) -> WsgiApp:
    """``app``, with requests accepted on ``admin_port`` marked as admin ones (and no other request)."""

    def tagged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop(ADMIN, None)
        sock = environ.get("gunicorn.socket")
        if admin_port and sock is not None and _local_port(sock) == admin_port:
            environ[ADMIN] = True
        return app(environ, start_response)

    return tagged


def _local_port(sock: Any) -> int | None:
    try:
        return int(sock.getsockname()[1])
    except (OSError, TypeError, ValueError, IndexError):
        return None


def on_admin_listener() -> bool:
    """Whether the current request came in through the admin listener."""
    return request.environ.get(ADMIN) is True

"""Health checks for the platform (load balancers, Kubernetes probes): alive, and ready to search."""

from __future__ import annotations

from flask import jsonify

from gateway.listener import on_admin_listener
from gateway.routes.common import bp, service


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    return readiness_answer()


def readiness_answer():
    """Ready or not, for anyone; why, and what is served, only on the admin listener (the reasons name
    addresses and errors of the services behind the gateway)."""
    svc = service()
    ok, reason = svc.readiness()
    if not on_admin_listener():
        return jsonify(ready=ok), 200 if ok else 503
    index = svc.index
    body = {"ready": ok, "reason": reason, "index_version": index.version if index else None,
            "index_cached": svc.indexes.from_cache, "index_error": svc.indexes.error,
            "model": index.backbone_id if index else None, "products": len(index) if index else 0,
            "search_backend": index.backend.name if index else None}
    return jsonify(body), 200 if ok else 503

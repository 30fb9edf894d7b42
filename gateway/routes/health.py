"""Health checks for the platform (load balancers, Kubernetes probes): alive, and ready to search."""

from __future__ import annotations

from flask import jsonify

from gateway.routes.common import bp, service


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    svc = service()
    ok, reason = svc.readiness()
    index = svc.index
    body = {"ready": ok, "reason": reason, "index_version": index.version if index else None,
            "index_cached": svc.indexes.from_cache, "index_error": svc.indexes.error,
            "model": index.backbone_id if index else None, "products": len(index) if index else 0,
            "search_backend": index.backend.name if index else None}
    return jsonify(body), 200 if ok else 503

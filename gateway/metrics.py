"""Prometheus metrics of the gateway, served on ``GET /metrics`` of the admin listener only (gateway/listener.py).

Requests by route and status with their latency, model-server latency, the served index (version,
backbone, size) and image-URL fetch refusals. Under gunicorn with several workers the counts of all
workers are added up through ``PROMETHEUS_MULTIPROC_DIR`` (set by ``python -m gateway``).
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from gateway.listener import on_admin_listener

REQUESTS = Counter("photo_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram("photo_request_seconds", "Time to answer an HTTP request", ["route", "status"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
EMBEDDING = Histogram("photo_embedding_seconds", "Time the model server took for one query image",
                      buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
INDEX_INFO = Gauge("photo_index_info", "The served index version (1) and earlier ones (0)", ["version", "backbone"],
                   multiprocess_mode="max")
INDEX_PRODUCTS = Gauge("photo_index_products", "Products in the served index", multiprocess_mode="max")
FETCH_ERRORS = Counter("photo_url_fetch_errors_total", "Query image URLs refused or failed", ["status"])


def registry() -> CollectorRegistry:
    """All workers' metrics in multiprocess mode, else this process's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return DEFAULT_REGISTRY
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def index_served(version: str, backbone_id: str, products: int, previous: str | None = None,
                 previous_backbone: str | None = None) -> None:
    if previous:
        INDEX_INFO.labels(previous, previous_backbone or "").set(0)
    INDEX_INFO.labels(version, backbone_id).set(1)
    INDEX_PRODUCTS.set(products)


#: HTTP methods counted by name; any other token (gunicorn accepts any 3–20 letters) is counted as "OTHER",
#: so a stranger cannot create a new time series per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: its method when a standard one, else ``OTHER``."""
    return method if method in METHODS else "OTHER"


def instrument(app: Flask) -> None:
    """Count and time every request by its route pattern (bounded label values), and serve /metrics on the
    admin listener (404 on the public one)."""

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(route, method_label(request.method), str(response.status_code)).inc()
        if "metrics_started" in g:
            LATENCY.labels(route, str(response.status_code)).observe(time.perf_counter() - g.metrics_started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        if not on_admin_listener():  # the public route: as if there were no such page
            return Response("not found\n", status=404, mimetype="text/plain")
        return Response(generate_latest(registry()), mimetype=CONTENT_TYPE_LATEST)

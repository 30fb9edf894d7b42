"""The JSON API (for apps and other services): search by photo, URL or token; more like a product."""

from __future__ import annotations

import time

from flask import Response, current_app, jsonify

from gateway.routes.common import (
    bp,
    image_link,
    product_page,
    request_params,
    search_options,
    search_query,
    service,
)
from gateway.service import Hit, Results


def result_json(hit: Hit) -> dict:
    p = hit.product
    return {"id": str(p["id"]), "name": p.get("name", ""), "category": p.get("category", ""),
            "price": p.get("price"), "image_url": image_link(p), "product_url": product_page(p),
            "score": round(hit.score, 6),
            "similarity": round(hit.similarity, 1), "match": hit.percent}


def api_answer(found: Results, started: float, token: str | None = None) -> Response:
    """The JSON answer; its model and ``index_version`` are those of the version that ranked ``found``."""
    guess = found.guess and {"category": found.guess.category, "confidence": found.guess.confidence,
                             "source": found.guess.source, "results": found.first_group}
    extra = {} if token is None else {"query_token": token}
    box = None if found.box is None else [round(v, 4) for v in found.box.fractions()]
    items = [{"box": [round(v, 4) for v in item.box.fractions()], "category": item.category} for item in found.items]
    return jsonify(results=[result_json(h) for h in found.hits], category_first=guess, box=box, items=items,
                   no_close_match=found.no_close_match, closer_outside_filter=found.closer_outside_filter,
                   confirmed=found.pinned if found.confirmed else None, first_by_details=found.pinned or None,
                   model=found.index_model,
                   index_version=found.index_version, took_ms=round((time.perf_counter() - started) * 1000, 1), **extra)


@bp.post("/api/search")
def api_search():
    return search_answer()


def search_answer() -> Response:
    """``POST /api/search`` (the handlers' bodies are plain functions: mutmut does not mutate decorated ones)."""
    started = time.perf_counter()
    params = request_params()
    options = search_options(params)  # checked before any fetch or model call
    answer = service().search(search_query(params, with_picture=False), options)
    return api_answer(answer.found, started, answer.token)


@bp.get("/api/products/<product_id>/similar")
def api_similar(product_id: str):
    return similar_answer(product_id)


def similar_answer(product_id: str) -> Response:
    started = time.perf_counter()
    return api_answer(service().similar(product_id, search_options(request_params())), started)


@bp.get("/openapi.json")
def openapi():
    """The JSON API's OpenAPI 3 description."""
    return current_app.send_static_file("openapi.json")

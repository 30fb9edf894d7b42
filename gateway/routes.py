"""HTTP routes: the search page, the JSON API, health checks and catalog images."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from catalog.calibration import UNCALIBRATED
from catalog.fetch import FetchError, is_remote, resolve_local
from gateway.config import FALSE_WORDS, TRUE_WORDS
from gateway.images import QueryImageError, check_image, fetch_url
from gateway.service import Hit, Results, SearchService, ServiceError

log = logging.getLogger(__name__)
bp = Blueprint("photo", __name__)


def service() -> SearchService:
    return current_app.extensions["photo"]


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


# --------------------------------------------------------------------------- parameters


def _params() -> dict:
    """Merged query string, form fields and JSON body."""
    merged = dict(request.args.items())
    merged.update(request.form.items())
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ServiceError(400, "JSON body must be an object, e.g. {\"image_url\": \"https://...\"}")
        merged.update({k: v for k, v in body.items() if v is not None})
    return merged


def _number(params: dict, name: str, default: float, low: float, high: float, kind=float):
    raw = params.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ServiceError(400, f"{name} must be a number between {low:g} and {high:g}, got {raw!r}") from None
    if not low <= value <= high:
        raise ServiceError(400, f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _flag(params: dict, name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in TRUE_WORDS + FALSE_WORDS:
        raise ServiceError(400, f"{name} must be true or false, got {raw!r}")
    return text in TRUE_WORDS


def search_options(params: dict) -> dict:
    """threshold, top_k, category and category_first from the request, checked."""
    cfg = service().config
    return {"threshold": _number(params, "threshold", cfg.default_threshold, 0, 100),
            "top_k": _number(params, "top_k", cfg.default_top_k, 1, cfg.max_top_k, kind=int),
            "category": str(params.get("category") or "").strip() or None,
            "category_first": _flag(params, "category_first", cfg.category_first)}


def query_image(params: dict) -> bytes:
    """The uploaded file, or the bytes behind ``image_url``; checked to be a decodable image."""
    cfg = service().config
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        data = upload.read()
        if not data:
            raise ServiceError(400, "the uploaded file is empty")
    elif str(params.get("image_url") or "").strip():
        try:
            data = fetch_url(str(params["image_url"]), int(cfg.max_upload_mb * 1024 * 1024),
                             cfg.url_fetch_timeout, cfg.allow_private_urls, cfg.image_networks)
        except QueryImageError as exc:
            raise ServiceError(exc.status, str(exc)) from None
    else:
        raise ServiceError(400, "no image: upload a file (field 'file') or give an image_url")
    try:
        check_image(data, cfg.max_pixels)
    except QueryImageError as exc:
        raise ServiceError(exc.status, str(exc)) from None
    return data


def image_link(product: dict) -> str:
    url = str(product.get("image_url", ""))
    return url if is_remote(url) else url_for("photo.catalog_image", path=url)


def result_json(hit: Hit) -> dict:
    p = hit.product
    return {"id": str(p["id"]), "name": p.get("name", ""), "category": p.get("category", ""),
            "price": p.get("price"), "image_url": image_link(p), "score": round(hit.score, 6),
            "similarity": hit.percent}


def api_answer(found: Results, started: float) -> Response:
    index = service().require_index()
    guess = found.guess and {"category": found.guess.category, "confidence": found.guess.confidence,
                             "source": found.guess.source, "results": found.first_group}
    return jsonify(results=[result_json(h) for h in found.hits], category_first=guess, model=index.backbone,
                   index_version=index.version, took_ms=round((time.perf_counter() - started) * 1000, 1))


# --------------------------------------------------------------------------- pages


def render_page(status: int = 200, **context) -> tuple[str, int]:
    svc = service()
    index = svc.index
    return render_template(
        "index.html",
        categories=index.categories if index else [],
        calibrated=index.data.manifest.get("calibration") if index and index.calibration.points != UNCALIBRATED
        else None,
        threshold=context.pop("threshold", svc.config.default_threshold),
        top_k=context.pop("top_k", svc.config.default_top_k),
        category_first=context.pop("category_first", svc.config.category_first),
        image_link=image_link,
        **context,
    ), status


@bp.get("/")
def home():
    return render_page()


@bp.post("/search")
def search_page():
    started = time.perf_counter()
    params = _params()
    options = search_options(params)
    found = service().search_image(query_image(params), **options)
    return render_page(found=found, searched=True, image_url=params.get("image_url"),
                       took_ms=round((time.perf_counter() - started) * 1000), **options)


@bp.get("/products/<product_id>/similar")
def similar_page(product_id: str):
    options = search_options(_params())
    found = service().similar(product_id, **options)
    return render_page(found=found, searched=True, anchor=found.anchor, **options)


# --------------------------------------------------------------------------- JSON API


@bp.post("/api/search")
def api_search():
    started = time.perf_counter()
    params = _params()
    options = search_options(params)
    return api_answer(service().search_image(query_image(params), **options), started)


@bp.get("/api/products/<product_id>/similar")
def api_similar(product_id: str):
    started = time.perf_counter()
    return api_answer(service().similar(product_id, **search_options(_params())), started)


@bp.get("/openapi.json")
def openapi():
    """The JSON API's OpenAPI 3 description."""
    return current_app.send_static_file("openapi.json")


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
            "model": index.backbone if index else None, "products": len(index) if index else 0}
    return jsonify(body), 200 if ok else 503


@bp.get("/catalog/<path:path>")
def catalog_image(path: str):
    """Local catalog images, only from inside the catalog folder."""
    svc = service()
    index = svc.require_index()
    root = Path(svc.config.catalog_dir or index.data.manifest.get("catalog", {}).get("root", "."))
    if urlsplit(path).scheme:
        raise ServiceError(404, "not a catalog image")
    try:
        file = resolve_local(path, root)
    except FetchError:
        raise ServiceError(404, "not a catalog image") from None
    if not file.is_file():
        raise ServiceError(404, "image not found")
    return send_file(file, max_age=3600)


# --------------------------------------------------------------------------- errors


def _error(status: int, message: str):
    if wants_json():
        return jsonify(error=message, status=status), status
    return render_page(status=status, error=message)


@bp.app_errorhandler(ServiceError)
def on_service_error(exc: ServiceError):
    return _error(exc.status, exc.message)


@bp.app_errorhandler(RequestEntityTooLarge)
def on_too_large(exc: RequestEntityTooLarge):
    limit = service().config.max_upload_mb
    return _error(413, f"upload too large: the limit is {limit:g} MB")


@bp.app_errorhandler(HTTPException)
def on_http_error(exc: HTTPException):
    return _error(exc.code or 500, exc.description or exc.name)


@bp.app_errorhandler(Exception)
def on_unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal error: the request could not be completed; it has been logged")

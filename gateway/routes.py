"""HTTP routes: the search page, the JSON API, health checks and catalog images."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from catalog.paths import UnsafePath, is_remote, resolve_local
from catalog.safe_http import UnsafeURL
from gateway import metrics
from gateway.config import FALSE_WORDS, TRUE_WORDS
from gateway.errors import BadRequest, NotFound, ServiceError, TooLarge
from gateway.images import Crop, cropped, picture, query_image
from gateway.query_token import ExpiredQuery, Query, picture_digest
from gateway.service import Hit, Results, SearchOptions, SearchService
from handlers.imaging import ImageError
from modelserver.client import ModelServerError
from search import SearchUnavailable

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
        body = _json_body()
        if not isinstance(body, dict):
            raise BadRequest("JSON body must be an object, e.g. {\"image_url\": \"https://...\"}")
        merged.update({k: v for k, v in body.items() if v is not None})
    return merged


#: A JSON body carries a URL and a few settings: far less than this.
MAX_JSON_BYTES = 16 * 1024


def _json_body() -> object:
    """The JSON body, at most ``MAX_JSON_BYTES`` (413 above); None when it does not parse (any depth)."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge(f"a JSON request may be at most {MAX_JSON_BYTES // 1024} KB")
    raw = request.stream.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:  # no Content-Length (chunked): counted while read
        raise TooLarge(f"a JSON request may be at most {MAX_JSON_BYTES // 1024} KB")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # 200,000 "[" is a RecursionError, not a ValueError
        return None


def _number(params: dict, name: str, default: float, low: float, high: float, kind=float):
    raw = params.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float) and not raw.is_integer()):
            raise TypeError(raw)  # JSON true is not 1, and 1.5 results is not 1
        value = kind(raw)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise BadRequest(f"{name} must be {what} between {low:g} and {high:g}, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _flag(params: dict, name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in TRUE_WORDS + FALSE_WORDS:
        raise BadRequest(f"{name} must be true or false, got {raw!r}")
    return text in TRUE_WORDS


def search_options(params: dict) -> SearchOptions:
    """threshold, top_k, category, category_first and offset from the request, checked."""
    cfg = service().config
    return SearchOptions(threshold=_number(params, "threshold", cfg.default_threshold, 0, 100),
                         top_k=_number(params, "top_k", cfg.default_top_k, 1, cfg.max_top_k, kind=int),
                         category=str(params.get("category") or "").strip() or None,
                         category_first=_flag(params, "category_first", cfg.category_first),
                         offset=_number(params, "offset", 0, 0, cfg.max_top_k, kind=int),
                         **_price_range(params))


#: The highest price a range may name (far above any real price; keeps the number finite and printable).
MAX_PRICE = 1e12


def _price_range(params: dict) -> dict:
    """``min_price`` / ``max_price`` (either may be left out), checked: 0 ≤ min ≤ max ≤ ``MAX_PRICE``."""
    low = _number(params, "min_price", None, 0, MAX_PRICE)
    high = _number(params, "max_price", None, 0, MAX_PRICE)
    if low is not None and high is not None and low > high:
        raise BadRequest(f"the lowest price ({low:g}) is above the highest ({high:g}): swap them")
    return {"min_price": low, "max_price": high}


@dataclass(frozen=True)
class Searched:
    """One search request's answer: the results, the token to refine them, what the page shows of the query."""

    found: Results
    token: str
    image_url: str = ""  # the query's image URL ("" for an upload)
    picture: str = ""  # the query picture as a data: URL ("" when not asked for)


def run_search(params: dict, options: SearchOptions, with_picture: bool) -> Searched:
    """Search for this request's query: a new photo or image URL (cropped when asked), else the vector of
    its ``query_token`` (no upload, no model call)."""
    svc = service()
    crop = Crop.parse(params.get("crop"))
    upload = request.files.get("file")
    uploaded = upload is not None and bool(upload.filename)
    image_url = str(params.get("image_url") or "").strip()
    token = str(params.get("query_token") or "")
    try:  # verified once; a refused token only matters when it is the query
        query, refused = (svc.tokens.verify(token), None) if token else (None, None)
    except ExpiredQuery as exc:
        query, refused = None, exc
    if uploaded or (image_url and (query is None or query.image_url != image_url)):
        image = query_image(upload, image_url, svc.config, svc.url_fetches)
        if crop is not None:
            image = cropped(image, crop, svc.config.max_pixels)
        found = svc.search_image(image, options)
        shown = picture(image, svc.config.max_pixels) if with_picture else ""
        url = "" if uploaded else image_url
    elif token:
        if crop is not None:
            raise BadRequest("to search part of the photo, give the photo again with the box drawn on it")
        if refused is not None:
            raise refused
        if query.backbone_id != svc.require_index().backbone_id:
            raise ExpiredQuery("the search engine has been updated since this search: choose the photo again")
        found, url = svc.search_vector(query.vector, query.backbone_id, options, query.hist), query.image_url
        shown = _token_picture(params, query) if with_picture else ""
    else:
        raise BadRequest("no image: choose or drop a photo, or paste a link to one")
    issued = svc.tokens.issue(Query(found.vector, found.model, url, picture_digest(shown) if shown else "",
                                    found.hist))
    return Searched(found, issued, url, shown)


#: The only kind of query picture a page shows (``gateway.images.picture`` makes them).
PICTURE_PREFIX = "data:image/jpeg;base64,"


def _token_picture(params: dict, query: Query) -> str:
    """The request's ``query_picture`` when it is the one ``query``'s token was issued with, else "" (a
    stranger's picture is never shown)."""
    shown = str(params.get("query_picture") or "")
    return shown if shown.startswith(PICTURE_PREFIX) and picture_digest(shown) == query.picture_digest else ""


def _show_more(params: dict) -> int | None:
    """"Show more": the same search with ``show`` results instead of ``top_k``; returns how many were shown
    before (the first new one gets focus), or None."""
    if not params.get("show"):
        return None
    shown_before, params["top_k"] = params.get("top_k"), params["show"]
    try:
        return int(str(shown_before))
    except ValueError:
        return None


def image_link(product: dict) -> str:
    url = str(product.get("image_url", ""))
    return url if is_remote(url) else url_for("photo.catalog_image", path=url)


def result_json(hit: Hit) -> dict:
    p = hit.product
    return {"id": str(p["id"]), "name": p.get("name", ""), "category": p.get("category", ""),
            "price": p.get("price"), "image_url": image_link(p), "score": round(hit.score, 6),
            "similarity": hit.percent}


def api_answer(found: Results, started: float, token: str | None = None) -> Response:
    """The JSON answer; its model and ``index_version`` are those of the version that ranked ``found``."""
    guess = found.guess and {"category": found.guess.category, "confidence": found.guess.confidence,
                             "source": found.guess.source, "results": found.first_group}
    extra = {} if token is None else {"query_token": token}
    return jsonify(results=[result_json(h) for h in found.hits], category_first=guess,
                   no_close_match=found.no_close_match, model=found.index_model,
                   index_version=found.index_version, took_ms=round((time.perf_counter() - started) * 1000, 1), **extra)


# --------------------------------------------------------------------------- pages


def render_page(status: int = 200, **context) -> tuple[str, int]:
    svc = service()
    index, cfg = svc.index, svc.config
    threshold = context.pop("threshold", cfg.default_threshold)
    top_k = context.pop("top_k", cfg.default_top_k)
    category_first = context.pop("category_first", cfg.category_first)
    return render_template(
        "index.html",
        categories=index.categories if index else [],
        calibrated=index.calibration_info if index else None,
        threshold=threshold,
        top_k=top_k,
        category_first=category_first,
        refine_open=threshold != cfg.default_threshold or category_first != cfg.category_first,
        prices=bool(index and index.has_prices),
        min_price=context.pop("min_price", None),
        max_price=context.pop("max_price", None),
        more=min(top_k + cfg.default_top_k, cfg.max_top_k) if top_k < cfg.max_top_k else None,
        image_link=image_link,
        **context,
    ), status


@bp.get("/")
def home():
    return render_page()


@bp.route("/search", methods=["GET", "POST"])
def search_page():
    """The results page. GET with ``image_url`` is a shareable link; GET without a query goes home."""
    started = time.perf_counter()
    params = _params()
    if request.method == "GET" and not (params.get("image_url") or params.get("query_token")):
        return redirect(url_for("photo.home"))
    first_new = _show_more(params)
    options = search_options(params)
    asked = run_search(params, options, with_picture=True)
    share = asked.image_url and url_for("photo.search_page", image_url=asked.image_url, **_link_options(options))
    return render_page(found=asked.found, searched=True, image_url=asked.image_url, query_token=asked.token,
                       query_picture=asked.picture, share_url=share, first_new=first_new,
                       took_ms=round((time.perf_counter() - started) * 1000), **asdict(options))


def _link_options(options: SearchOptions) -> dict:
    """The settings of a shareable link (the defaults left out, so links stay short)."""
    cfg = service().config
    link = {"threshold": f"{options.threshold:g}", "top_k": options.top_k, "category": options.category,
            "category_first": int(options.category_first), "min_price": options.min_price,
            "max_price": options.max_price}
    defaults = {"threshold": f"{cfg.default_threshold:g}", "top_k": cfg.default_top_k, "category": None,
                "category_first": int(cfg.category_first), "min_price": None, "max_price": None}
    return {k: v for k, v in link.items() if v != defaults[k]}


@bp.get("/products/<product_id>/similar")
def similar_page(product_id: str):
    params = _params()
    first_new = _show_more(params)
    options = search_options(params)
    found = service().similar(product_id, options)
    share = url_for("photo.similar_page", product_id=product_id, **_link_options(options))
    return render_page(found=found, searched=True, anchor=found.anchor, share_url=share,
                       first_new=first_new, **asdict(options))


# --------------------------------------------------------------------------- JSON API


@bp.post("/api/search")
def api_search():
    started = time.perf_counter()
    params = _params()
    options = search_options(params)  # checked before any fetch or model call
    asked = run_search(params, options, with_picture=False)
    return api_answer(asked.found, started, asked.token)


@bp.get("/api/products/<product_id>/similar")
def api_similar(product_id: str):
    started = time.perf_counter()
    return api_answer(service().similar(product_id, search_options(_params())), started)


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
            "model": index.backbone_id if index else None, "products": len(index) if index else 0,
            "search_backend": index.backend.name if index else None}
    return jsonify(body), 200 if ok else 503


#: What ``/catalog/`` serves, by file suffix, with the content type it is served as.
IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".gif": "image/gif"}


@bp.get("/catalog/<path:path>")
def catalog_image(path: str):
    """A local catalog image: only one that a product of the served index names, only an image type, and
    only from ``CATALOG_DIR`` (a path is never taken from the index's manifest: the store is untrusted)."""
    svc = service()
    index = svc.require_index()
    kind = IMAGE_SUFFIXES.get(Path(path).suffix.lower())
    if not svc.config.catalog_dir or kind is None or urlsplit(path).scheme or not index.has_image(path):
        raise NotFound("not a catalog image")
    try:
        file = resolve_local(path, Path(svc.config.catalog_dir))
    except UnsafePath:
        raise NotFound("not a catalog image") from None
    if not file.is_file():
        raise NotFound("image not found")
    return send_file(file, mimetype=kind, max_age=3600)


# --------------------------------------------------------------------------- headers

#: No inline script or style (the page's script is static/page.js); images from the catalog's hosts (http/https),
#: the shopper's own preview (blob:); never framed, never sending the page's address to image hosts.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: http: "
                           "blob: data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@bp.after_app_request
def security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


# --------------------------------------------------------------------------- errors


def _error(status: int, message: str):
    if wants_json():
        return jsonify(error=message, status=status), status
    return render_page(status=status, error=message, **_kept_inputs())


def _kept_inputs() -> dict:
    """What the shopper had entered, for the page that reports an error: the typed URL and every setting
    that is still valid (an invalid one falls back to its default; the error names it)."""
    try:
        params = dict(request.args.items()) | dict(request.form.items())
    except Exception:  # noqa: BLE001 - an unreadable body: nothing to keep
        return {}
    kept: dict = {"image_url": str(params.get("image_url") or "")[:2048]} | _kept_query(params)
    try:
        kept.update(asdict(search_options(params)))
    except ServiceError:
        kept["category"] = str(params.get("category") or "") or None
    return kept


def _kept_query(params: dict) -> dict:
    """A still-valid query token (and its picture) of a failed request, so the shopper can retry without
    giving the photo again."""
    token = str(params.get("query_token") or "")
    try:
        query = service().tokens.verify(token) if token else None
    except ExpiredQuery:
        query = None
    if query is None:
        return {}
    return {"query_token": token, "query_picture": _token_picture(params, query),
            "image_url": str(params.get("image_url") or query.image_url)[:2048]}


@bp.app_errorhandler(ServiceError)
def on_service_error(exc: ServiceError):
    response = _error(exc.status, exc.message)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        response = current_app.make_response(response)
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.app_errorhandler(ImageError)
def on_bad_image(exc: ImageError):
    return _error(400, str(exc))


@bp.app_errorhandler(UnsafeURL)
def on_refused_url(exc: UnsafeURL):
    metrics.FETCH_ERRORS.labels(str(exc.status)).inc()
    return _error(exc.status, str(exc))


@bp.app_errorhandler(ModelServerError)
def on_model_server_down(exc: ModelServerError):
    log.warning("embedding failed: %s", exc)
    return _error(503, f"search is temporarily unavailable: {exc}")


#: What a shopper is told when the search backend fails (the reason goes to the log).
SEARCH_DOWN = "search is temporarily unavailable: please try again in a moment"


@bp.app_errorhandler(SearchUnavailable)
def on_search_down(exc: SearchUnavailable):
    log.warning("search backend failed: %s", exc)
    response = current_app.make_response(_error(503, SEARCH_DOWN))
    response.headers["Retry-After"] = "2"
    return response


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

"""What every route shares: the blueprint, the request's parameters read and checked, the query object,
links to catalog images, and the security headers of every answer."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from catalog.products import PRODUCT_URL
from gateway.config import FALSE_WORDS, TRUE_WORDS
from gateway.errors import BadRequest, TooLarge
from gateway.images import Crop
from gateway.query_token import MAX_ITEMS
from gateway.service import SearchOptions, SearchQuery, SearchService
from safeio.paths import is_remote, product_link

bp = Blueprint("photo", __name__)


def service() -> SearchService:
    return current_app.extensions["photo"]


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


# --------------------------------------------------------------------------- parameters


NOT_UTF8 = "the request has text that is not valid UTF-8: send it again as plain text"


def request_params() -> dict:
    """Merged query string, form fields and JSON body; text that was not valid UTF-8 is refused (400)."""
    merged = dict(request.args.items())
    merged.update(request.form.items())
    # Werkzeug decodes the query string and form fields with errors="replace": bytes that were not UTF-8
    # arrive as U+FFFD. Refused rather than searched for as a category or fetched as a link.
    if not _query_is_utf8() or any("\ufffd" in key or (isinstance(value, str) and "\ufffd" in value)
                                   for key, value in merged.items()):
        raise BadRequest(NOT_UTF8)
    if request.is_json:
        body = _json_body()
        if not isinstance(body, dict):
            raise BadRequest("JSON body must be an object, e.g. {\"image_url\": \"https://...\"}")
        merged.update({k: v for k, v in body.items() if v is not None})
    return merged


def _query_is_utf8() -> bool:
    """Whether every name and value of the raw query string is UTF-8 once unquoted (Werkzeug keeps a bad
    escape such as ``%FF`` as the literal text "%FF", so the decoded view cannot tell)."""
    try:
        for part in re.split(rb"[&;]", request.query_string):
            unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: A JSON body carries a URL or a query token (at most MAX_TOKEN_CHARS) and a few settings: less than this.
MAX_JSON_BYTES = 48 * 1024


def _json_body() -> object:
    """The JSON body, at most ``MAX_JSON_BYTES`` (413 above); None when it does not parse (any depth)."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge(f"a JSON request may be at most {MAX_JSON_BYTES // 1024} KB")
    raw = request.stream.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:  # no Content-Length (chunked): counted while read
        raise TooLarge(f"a JSON request may be at most {MAX_JSON_BYTES // 1024} KB")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # 200,000 "[" is a RecursionError, not a ValueError
        return None
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # "\ud800" parses to a lone surrogate
    except UnicodeEncodeError:
        raise BadRequest(NOT_UTF8) from None
    return body


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


def show_more(params: dict) -> int | None:
    """"Show more": the same search with ``show`` results instead of ``top_k``; returns how many were shown
    before (the first new one gets focus), or None."""
    if not params.get("show"):
        return None
    shown_before, params["top_k"] = params.get("top_k"), params["show"]
    try:
        return int(str(shown_before))
    except ValueError:
        return None


def product_page(product: dict) -> str | None:
    """The product's page in the shop, checked again here (the index store is untrusted): None when unsafe."""
    return product_link(product.get(PRODUCT_URL))


def image_link(product: dict) -> str:
    url = str(product.get("image_url", ""))
    return url if is_remote(url) else url_for("photo.catalog_image", path=url)


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


def security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


bp.after_app_request(security_headers)  # not a decorator: mutmut leaves decorated functions unmutated


def search_query(params: dict, with_picture: bool) -> SearchQuery:
    """The request's query as the service takes it: the upload's bytes (a multipart ``file``, or a body that is
    the photo itself), the image URL, the query token (and the picture a page sent back with it), the crop."""
    upload = request.files.get("file")
    return SearchQuery(upload=upload.read() if upload is not None and upload.filename else photo_body(),
                       image_url=str(params.get("image_url") or "").strip(),
                       token=str(params.get("query_token") or ""), crop=Crop.parse(params.get("crop")),
                       with_picture=with_picture, picture=str(params.get("query_picture") or ""),
                       item=_number(params, "item", 0, 0, MAX_ITEMS, kind=int))


def _is_photo_body(mimetype: str) -> bool:
    """Whether a body of this media type is the photo itself: ``image/...`` or ``application/octet-stream``."""
    return mimetype.startswith("image/") or mimetype == "application/octet-stream"


def photo_body() -> bytes | None:
    """The request's body when it is the photo itself (``curl --data-binary @photo.jpg -H 'Content-Type:
    image/jpeg'``: no form to build or parse), else None; an empty one is b"" (the service says it is empty).
    Over ``MAX_UPLOAD_MB``: 413, as for an uploaded file."""
    if not _is_photo_body(request.mimetype):
        return None
    limit = int(service().config.max_upload_mb * 1024 * 1024)
    data = request.stream.read(limit + 1)  # Werkzeug has refused a longer declared length already (413)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data

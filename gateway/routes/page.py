"""The shopper's page: the search form and its results, "more like this", and the catalog's own images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from flask import redirect, render_template, request, send_file, url_for

from gateway.errors import NotFound
from gateway.routes.common import (
    bp,
    image_link,
    product_page,
    request_params,
    search_options,
    search_query,
    service,
    show_more,
)
from gateway.service import SearchOptions
from safeio.paths import UnsafePath, resolve_local


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
        product_page=product_page,
        max_upload_bytes=int(cfg.max_upload_mb * 1024 * 1024),
        **context,
    ), status


@bp.get("/")
def home():
    return render_page()


@bp.route("/search", methods=["GET", "POST"])
def search_page():
    return search_results_page()


def search_results_page():
    """The results page. GET with ``image_url`` is a shareable link; GET without a query goes home."""
    params = request_params()
    if request.method == "GET" and not (params.get("image_url") or params.get("query_token")):
        return redirect(url_for("photo.home"))
    first_new = show_more(params)
    options = search_options(params)
    asked = service().search(search_query(params, with_picture=True), options)
    share = asked.image_url and url_for("photo.search_page", image_url=asked.image_url, **_link_options(options))
    return render_page(found=asked.found, searched=True, image_url=asked.image_url, query_token=asked.token,
                       query_picture=asked.picture, share_url=share, first_new=first_new, **asdict(options))


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
    return similar_results_page(product_id)


def similar_results_page(product_id: str):
    params = request_params()
    first_new = show_more(params)
    options = search_options(params)
    found = service().similar(product_id, options)
    share = url_for("photo.similar_page", product_id=product_id, **_link_options(options))
    return render_page(found=found, searched=True, anchor=found.anchor, share_url=share,
                       first_new=first_new, **asdict(options))


#: What ``/catalog/`` serves, by file suffix, with the content type it is served as.
IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".gif": "image/gif"}


@bp.get("/catalog/<path:path>")
def catalog_image(path: str):
    return catalog_file(path)


def catalog_file(path: str):
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

"""Every failure as an answer: JSON for the API, the page (with what the shopper had entered) otherwise."""

from __future__ import annotations

import logging
from dataclasses import asdict

from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gateway import metrics, request_id
from gateway.errors import ServiceError
from gateway.query_token import ExpiredQuery
from gateway.routes.common import bp, search_options, service, wants_json
from gateway.routes.page import render_page
from modelio.imaging import ImageError
from modelserver.client import ModelServerError
from safeio.safe_http import UnsafeURL
from search import SearchUnavailable

log = logging.getLogger(__name__)


def error_answer(status: int, message: str):
    if wants_json():
        return jsonify(error=message, status=status), status
    kept = _kept_inputs()
    if status == 429 or status >= 500:  # the photo was fine, the service was not: keep it for another try
        kept |= _kept_upload()
    return render_page(status=status, error=message, **kept)


def _kept_upload() -> dict:
    """The uploaded photo of a request the service could not answer, as the page's picture (no token: the page
    sends it again on the next Search). Nothing when there was no upload or it does not decode."""
    try:
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            return {}
        upload.stream.seek(0)
        return {"query_picture": service().decodes.decode(upload.read(), service().config).picture()}
    except Exception:  # noqa: BLE001 - an error page must render whatever is wrong with the upload
        log.info("the failed request's photo is not kept [request %s]", request_id.current(), exc_info=True)
        return {}


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
    return {"query_token": token, "query_picture": service().token_picture(str(params.get("query_picture") or ""),
                                                                           query),
            "image_url": str(params.get("image_url") or query.image_url)[:2048]}


def on_serviceerror_answer(exc: ServiceError):
    if exc.detail:
        log.warning("%s [request %s]: %s", exc.message, request_id.current(), exc.detail)
    response = error_answer(exc.status, exc.message)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        response = current_app.make_response(response)
        response.headers["Retry-After"] = str(retry_after)
    return response


#: What a shopper is told about a picture that cannot be used, by ``ImageError.kind`` (the exact reason goes to
#: the log with the request id).
IMAGE_WORDS = {
    "empty": "the file is empty: choose a photo",
    "format": "that file is not a picture we can open: choose a JPEG, PNG, WebP or GIF photo",
    "damaged": "that picture seems damaged or incomplete: choose it again, or try another photo",
    "too_large": "that picture is too large to open: choose a smaller photo (any phone photo works)",
}

#: What a shopper is told about an image link that failed, by ``UnsafeURL.kind``; never the host, address or
#: port (the link was theirs, but what it resolves to is ours).
URL_WORDS = {
    "invalid": "that link is not a web address we can use: paste the picture's full link (https://…), or upload "
               "the photo",
    "refused": "we can't open pictures from that link: use a public link to the picture, or upload the photo",
    "unreachable": "we couldn't load a picture from that link: check that it opens in your browser, or upload the "
                   "photo",
    "not_image": "that link opens a page, not a picture: copy the picture's own address (right-click it, \"Copy "
                 "image address\"), or upload it",
    "too_large": "the picture at that link is too large: upload a smaller photo",
    "slow": "that link took too long to answer: try again, or upload the photo",
    "busy": "we're opening a lot of links right now: try again in a moment, or upload the photo",
}


def on_bad_image(exc: ImageError):
    log.info("unusable image [request %s]: %s", request_id.current(), exc)
    return error_answer(400, IMAGE_WORDS.get(exc.kind, IMAGE_WORDS["damaged"]))


def on_refused_url(exc: UnsafeURL):
    metrics.FETCH_ERRORS.labels(str(exc.status)).inc()
    log.info("image URL refused [request %s]: %s", request_id.current(), exc)
    response = current_app.make_response(error_answer(exc.status, URL_WORDS.get(exc.kind, URL_WORDS["refused"])))
    if exc.status == 503:
        response.headers["Retry-After"] = "2"
    return response


#: What a shopper is told when the model server or the search backend fails: no host, port or reason (those
#: go to the log).
SEARCH_DOWN = "search is temporarily unavailable: please try again in a moment"


def on_search_down(exc: ModelServerError | SearchUnavailable):
    """The model server or the search backend failed: 503 with ``Retry-After``, the reason to the log only."""
    log.warning("%s failed [request %s]: %s", "embedding" if isinstance(exc, ModelServerError) else "search backend",
                request_id.current(), exc)
    response = current_app.make_response(error_answer(503, SEARCH_DOWN))
    response.headers["Retry-After"] = "2"
    return response


def on_too_large(exc: RequestEntityTooLarge):
    limit = service().config.max_upload_mb
    return error_answer(413, f"that photo is too large to send (over {limit:g} MB): choose a smaller one, or "
                             "take it at a lower resolution")


def on_httperror_answer(exc: HTTPException):
    return error_answer(exc.code or 500, exc.description or exc.name)


def on_unexpected(exc: Exception):
    log.exception("unhandled error on %s %s [request %s]", request.method, request.path, request_id.current())
    return error_answer(500, "something went wrong on our side: please try again in a moment")


# Registered here rather than by decorators, so that the handlers stay plain functions (mutmut leaves decorated
# functions unmutated: docs/TESTING.md).
for _kind, _handler in ((ServiceError, on_serviceerror_answer), (ImageError, on_bad_image),
                        (UnsafeURL, on_refused_url), (ModelServerError, on_search_down),
                        (SearchUnavailable, on_search_down), (RequestEntityTooLarge, on_too_large),
                        (HTTPException, on_httperror_answer), (Exception, on_unexpected)):
    bp.app_errorhandler(_kind)(_handler)

"""The gateway's own request errors: one type per kind, each with the HTTP status it answers with.

``str(err)`` is shown to the user as it is. Errors of other layers that reach a request keep their own
types (``ImageError``, ``UnsafeURL``, ``ModelServerError``); gateway/routes/errors.py registers one handler for each.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be answered; subclasses fix the status."""

    status = 500

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # for the log only (paths, store errors, model ids): never shown


class BadRequest(ServiceError):
    """The request's parameters are wrong or missing."""

    status = 400


class TooLarge(ServiceError):
    """The request body is larger than this kind of request may be."""

    status = 413


class NotFound(ServiceError):
    """No such product or catalog image."""

    status = 404


class Unavailable(ServiceError):
    """The index is not loaded, or the model does not match it: try again later."""

    status = 503


class Busy(Unavailable):
    """Every slot for this kind of work is taken: answered 503 with ``Retry-After``."""

    retry_after_s = 2

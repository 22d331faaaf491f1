"""Errors as values with a type, rendered as `application/problem+json` (RFC 9457) in one place."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from marshmallow import ValidationError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

PROBLEM_BASE = "https://floodgate.dev/problems/"
PROBLEM_JSON = "application/problem+json"

log = logging.getLogger("floodgate.errors")


class Problem(Exception):
    """A domain or protocol error a client can act on.

    Subclasses set `status`, `slug` (the stable last part of the `type` URI) and `title`, and may
    set `default_detail` (the `detail` when none is given; else the title); instances carry a
    human `detail` and optional extension members.
    """

    status = 400
    slug = "bad-request"
    title = "Bad request"
    default_detail: str | None = None

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extensions: Any):
        detail = detail or self.default_detail or self.title
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self) -> dict[str, Any]:
        """The problem document, without the request-specific `instance`."""
        body = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status, "detail": self.detail}
        body.update(self.extensions)
        return body


class InvalidRequest(Problem):
    """422: the request is well-formed but its content is not acceptable (field-level `errors`)."""

    status, slug, title = 422, "validation", "Request failed validation"


class MalformedRequest(Problem):
    """400: the body is not a JSON document."""

    status, slug, title = 400, "malformed", "Malformed request"


class Unauthorized(Problem):
    """401: no credentials, or credentials that do not verify."""

    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="floodgate"'})
        super().__init__(detail, **kwargs)


class Forbidden(Problem):
    """403: a verified caller who may not do this."""

    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(Problem):
    """404: nothing there, or nothing there for this caller."""

    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    """409: the request clashes with the current state."""

    status, slug, title = 409, "conflict", "Conflict"


class RetryLater(Problem):
    """A problem that tells the caller when to come back: `Retry-After`, in seconds. Every 429
    and 503 is one (checkout's load-shedding middleware, which answers before Flask, sets the
    same header on its own response)."""

    def __init__(self, detail: str | None = None, retry_after: int = 1, **kwargs: Any):
        kwargs.setdefault("headers", {"Retry-After": str(retry_after)})
        super().__init__(detail, **kwargs)


class ServiceUnavailable(RetryLater):
    """503 with `Retry-After`: a dependency is down; the caller should come back shortly."""

    status, slug, title = 503, "unavailable", "Temporarily unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """503: the service's database did not answer (restarting, failing over); nothing was done."""

    slug, title = "database-unavailable", "The database is not answering"


# --- a drop's refusals -----------------------------------------------------------------------
# Inventory refuses a hold with these and checkout passes them on to the buyer as they are, so
# they are declared once, here, with one status and title each.

class DropNotFound(NotFound):
    slug, title = "drop-not-found", "No such drop"


class SaleNotOpen(Forbidden):
    slug, title = "not-open", "The drop is not open"


class InviteOnly(Forbidden):
    slug, title = "invite-only", "The drop is open to invited buyers only for now"


class NotInvitePhase(Forbidden):
    """A hold asked only for the drop's invite-only phase (`invited_only`: checkout's order without
    a line pass on a drop with a line) when the phase is not running. Checkout answers the buyer
    that the drop's line is the way in."""

    slug, title = "not-invite-phase", "The drop is not in its invite-only phase"


class SoldOut(Conflict):
    slug, title = "sold-out", "Sold out"


class NotEnoughStock(SoldOut):
    """Units remain, fewer than the order asks for: a smaller order may still be placed. Every
    caller that only needs to know the order cannot have its units handles it as a SoldOut."""

    slug, title = "not-enough-stock", "Not enough stock"


class LimitExceeded(Conflict):
    slug, title = "limit-exceeded", "Purchase limit reached"


class CountryNotAllowed(InvalidRequest):
    slug, title = "country-not-allowed", "The drop does not ship to that country"


def problem_response(problem: Problem) -> Response:
    """Render `problem` as an RFC 9457 response."""
    body = problem.to_dict()
    body["instance"] = request.path
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def validation_problem(error: ValidationError) -> InvalidRequest:
    """A 422 problem listing marshmallow's field-level messages."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return InvalidRequest("One or more fields are invalid.", errors=messages)


def init_app(app: Flask) -> None:
    """Route every error raised in `app` through problem+json; no stack trace reaches a client."""

    @app.errorhandler(Problem)
    def _problem(problem: Problem):
        return problem_response(problem)

    @app.errorhandler(ValidationError)
    def _validation(error: ValidationError):
        return problem_response(validation_problem(error))

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException):
        generic = Problem(error.description)
        generic.status, generic.title = error.code or 500, error.name
        generic.slug = error.name.lower().replace(" ", "-")
        response = problem_response(generic)
        if error.code == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _database_unavailable(error: Exception):
        # The transaction was rolled back with the lost connection; the pool replaces the
        # connections it had, so the buyer's retry (same Idempotency-Key) is handled afresh.
        log.warning("database unavailable", extra={"error": repr(error)[:500]})
        return problem_response(DatabaseUnavailable("The database is not answering; retry in a moment."))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        internal = Problem("The server could not complete the request; it has been logged.")
        internal.status, internal.slug, internal.title = 500, "internal", "Internal error"
        return problem_response(internal)

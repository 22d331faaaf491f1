"""The drop page buyers open: `GET /drops/{drop_id}/page`.

One HTML page, no build step: its inline script signs the buyer up or in at accounts, shows the
drop from inventory with a countdown, takes a place in the drop's line, places the order here and
follows it to its confirmation email, calling each service from the browser (they answer it
through CORS). The server only fills in where the services are and what time it is; everything
the buyer sees comes from the APIs, written into the page as text, never as markup.

Left out of checkout's OpenAPI document: `shared.openapi.operation` describes JSON answers only,
and this one is `text/html`.
"""
from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import Blueprint, make_response, render_template

from shared.errors import DropNotFound
from shared.money import MINOR_DIGITS
from shared.web import root

bp = Blueprint("drop_page", __name__, template_folder="templates")


@bp.get("/drops/<drop_id>/page")
def drop_page(drop_id: str):
    drop_id = drop_id_in_path(drop_id, "A drop's page is at /drops/<its id>/page; that is not a drop id.")
    settings = root().settings
    return page_response("drop_page.html", drop_id,
                         service_urls(settings, line=settings.line_status_public_url),  # the waiting room's status edge
                         minor_digits=MINOR_DIGITS)  # its prices, in ISO 4217's minor units


def service_urls(settings, **more: str) -> dict[str, str]:
    """Where a page's script finds accounts, inventory, checkout and the services `more` names,
    as public URLs without a trailing slash."""
    urls = {"accounts": settings.accounts_public_url, "inventory": settings.inventory_public_url,
            "checkout": settings.public_url, **more}
    return {name: url.rstrip("/") for name, url in urls.items()}


def drop_id_in_path(raw: str, why_not: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise DropNotFound(why_not) from None


def page_response(template: str, drop_id: str, services: dict[str, str], **page_data):
    """One of checkout's pages (the drop page, the control room): the template filled in with
    the drop, where the services are, the server's time (the reader's clock may be off:
    countdowns and "extend" count from the server's) and the page's own `page_data`, behind a policy that lets only the page's
    own script and style run and talk to those services alone."""
    nonce = secrets.token_urlsafe(16)
    page = {"drop_id": drop_id, "services": services, "server_time": datetime.now(timezone.utc).isoformat(),
            **page_data}
    response = make_response(render_template(template, page=page, nonce=nonce))
    response.headers["Content-Security-Policy"] = content_security_policy(nonce, services.values())
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def content_security_policy(nonce: str, service_urls) -> str:
    """Only the page's own script and style run, and it talks to the services alone."""
    origins = sorted({_origin(url) for url in service_urls})
    return "; ".join((
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        f"style-src 'nonce-{nonce}'",
        f"connect-src {' '.join(origins)}",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

"""What every service's Flask app has: errors, logs, request ids, metrics, traces, probes, OpenAPI."""
from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Hashable, Iterable, Mapping
from urllib.parse import urlsplit

import idna
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from marshmallow import EXCLUDE, Schema, fields
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from shared import auth, db, errors, logs, metrics, openapi, tracing
from shared.answer_cache import AnswerCache
from shared.config import ConfigError
from shared.last_seen import heartbeat_figures
from shared.messaging.metrics import outbox_figures
from shared.service import Root
from shared.values import storable

log = logging.getLogger("floodgate.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
READINESS_CACHE_SECONDS = 2.0
# The largest request body read (413 beyond): an order, a drop or a batch of 64 holds is a few
# KiB. Without a limit one anonymous request of tens of MB parsed into Python objects could take a
# worker past its pod's memory limit, and every order in flight on it. An operation that needs
# more raises `request.max_content_length` for itself, after checking who calls.
MAX_BODY_BYTES = 1 << 20
# HTTP methods as metric labels: any other token a client sends is "other", so made-up methods
# cannot add series without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(root: Root, blueprints: list[Blueprint], title: str, verifier: auth.TokenVerifier | None = None,
               collectors: Iterable[Collector] = (), figures: Mapping[str, metrics.Source] | None = None) -> Flask:
    """A Flask app for the service of `root` (its composition root, kind "api") with the common
    machinery and `blueprints`.

    `verifier` checks access tokens (default: with the keys accounts publishes at JWKS_URL);
    `collectors` add the service's own figures to /metrics, and so do `figures` (sources read when
    Prometheus scrapes, see `shared.metrics.ScrapedFigures`) beside those every service reports:
    its outbox backlog and its workers' heartbeats."""
    settings = root.settings
    logs.configure(root.process, settings.log_level)
    app = Flask(settings.service_name)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["floodgate"] = root
    app.extensions["floodgate.readiness"] = {}
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    timeout = settings.metrics_query_timeout_seconds
    registry.register(metrics.ScrapedFigures(root.service, {
        "outbox": outbox_figures(root.service, root.engine, timeout),
        "heartbeats": heartbeat_figures(root.service, root.engine, timeout),
        **(figures or {}),
    }))
    app.extensions["floodgate.metrics"] = registry
    app.extensions["floodgate.cors"] = allowed_origins(settings)
    errors.init_app(app)
    auth.init_app(app, verifier or auth.jwks_verifier(settings), settings.service_key)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_blueprint(_probes)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    app.config["OPENAPI_TITLE"] = title
    # Here, in each gunicorn worker (the app factory runs after the fork): see shared/tracing.py.
    tracing.configure(root.process, settings, engines=[root.engine], app=app)
    return app


def root() -> Root:
    """The current app's composition root: its settings, unit of work and clients."""
    return current_app.extensions["floodgate"]


def unit_of_work() -> db.UnitOfWork:
    """A unit of work on the current service's database: the service's own unit of work, with
    its repositories."""
    return root().unit_of_work()


def load(schema: Schema, data: Any = None, *, allow_empty: bool = False) -> dict:
    """The request's JSON body (or `data`) validated by `schema`; 400 for non-JSON, 422 for invalid.

    With `allow_empty`, an empty body is taken as `{}` (an operation whose body is optional).
    A document nested deeper than Python's recursion allows (about 1,000 levels; no operation
    takes more than a few) is malformed too, not a RecursionError and a 500."""
    try:
        return _load(schema, data, allow_empty)
    except RecursionError:
        raise errors.MalformedRequest("The request body is nested too deeply.") from None


def _load(schema: Schema, data: Any, allow_empty: bool) -> dict:
    if data is None:
        if allow_empty and not request.get_data(cache=True):
            data = {}
        else:
            data = request.get_json(silent=True)
        if data is None:
            raise errors.MalformedRequest("The request body must be a JSON document.")
    unstorable = unstorable_text(_declared(schema, data))
    if unstorable:
        raise errors.InvalidRequest(
            "Text must be valid UTF-8 without NUL characters.", errors={unstorable: ["Invalid characters."]}
        )
    return schema.load(data)


def public_answer(cache: AnswerCache, key: Hashable, render: Callable[[], tuple[Any, float | None]]) -> Response:
    """A public JSON answer kept in `cache` (see `shared.answer_cache`): `render` returns the
    document and the seconds until it changes by the clock (None: not by the clock).

    It tells a CDN in front it may keep it too (`Cache-Control: public, max-age`): the cache's
    seconds, or 0 when the answer changes by the clock within them, so a CDN never serves it past
    that change. A request with the service key (another service, the tests' and tools' client)
    gets it rendered afresh; a browser's `Cache-Control: no-cache` does not, since every
    `fetch(..., {cache: "no-store"})` sends one."""
    fresh = auth.presents_service_key()

    def rendered() -> tuple[bytes, float | None]:
        document, changes_in = render()
        return current_app.json.dumps(document).encode(), changes_in

    answer = cache.get(key, rendered, fresh=fresh)
    response = current_app.response_class(answer.body, mimetype="application/json")
    max_age = int(max(0.0, min(cache.seconds, answer.changes_at - cache.now())))
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


def _declared(schema: Schema, data: Any) -> Any:
    """`data` without the members `schema` ignores (unknown ones, where it excludes them): what
    is not kept need not be storable."""
    if not isinstance(data, dict):
        return data
    declared = {field.data_key or name: field for name, field in schema.fields.items()}
    return {
        key: _declared_value(declared[key], value) if key in declared else value
        for key, value in data.items()
        if key in declared or schema.unknown != EXCLUDE
    }


def _declared_value(field: fields.Field, value: Any) -> Any:
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        if field.many and isinstance(value, list):
            return [_declared(field.schema, item) for item in value]
        return _declared(field.schema, value)
    if isinstance(field, fields.List) and isinstance(value, list):
        return [_declared_value(field.inner, item) for item in value]
    return value


def unstorable_text(value: Any, path: str = "body") -> str | None:
    """The path of the first string (or key) in `value` that PostgreSQL cannot store (lone
    surrogates, NUL), if any."""
    if isinstance(value, str):
        return None if storable(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and unstorable_text(key, path):
            return path
        found = unstorable_text(item, f"{path}.{key}" if path != "body" else str(key))
        if found:
            return found
    return None


# Where a WSGI layer in front of Flask notes when a request reached it (`time.perf_counter()`):
# checkout's order gate, where a pass holder's order may wait up to 2 s for a slot. The request's
# time (its log line, `floodgate_http_request_seconds`) counts from then, so what the
# buyer waited at the gate is in POST /orders' latency and in the alert that reads it.
ARRIVED_AT = "floodgate.arrived_at"


def _start_request() -> None:
    presented = request.headers.get("X-Request-ID", "")
    g.request_id = presented if _REQUEST_ID.fullmatch(presented) else logs.new_request_id()
    logs.request_id_var.set(g.request_id)
    logs.order_id_var.set(None)
    g.started = request.environ.get(ARRIVED_AT) or time.perf_counter()
    g.cpu_started = time.thread_time()


_CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Line-Pass, X-Request-ID",
    "Access-Control-Expose-Headers": "Location, Retry-After, X-Request-ID, Idempotent-Replayed",
    "Access-Control-Max-Age": "600",
}


_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_origins(settings) -> frozenset:
    """The origins CORS_ALLOWED_ORIGINS names (comma-separated), written as a browser sends them
    (scheme and host in lower case, no default port, no trailing slash), or ConfigError for one
    that is not an origin (`*`, a path): set as typed, `https://Shop.example.com` or
    `https://shop.example.com:443` matched no browser's, and the drop page failed with nothing
    in the service's logs."""
    return frozenset(_origin(part.strip()) for part in settings.cors_allowed_origins.split(",") if part.strip())


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]*:[0-9a-f:.]*")  # a name in its ASCII form, or an IPv6 address


def _origin(written: str) -> str:
    """`written` as a browser's Origin header says it: an app's own scheme (`capacitor://localhost`)
    as it is, a host of other scripts in its ASCII form (`bücher.example` is `xn--bcher-kva.example`)."""
    try:
        parts = urlsplit(written.rstrip("/"))
        port = parts.port
        host = parts.hostname
        if host and not host.isascii():  # IDNA 2008, as browsers: faß.de is xn--fa-hia.de, not fass.de
            host = idna.encode(host, uts46=True).decode("ascii")
    except (ValueError, UnicodeError, idna.IDNAError):
        parts, port, host = None, None, None
    if (parts is None or not _SCHEME.fullmatch(parts.scheme.lower()) or not host or not _HOST.fullmatch(host.lower())
            or parts.path or parts.query or parts.fragment or parts.username or parts.password):
        raise ConfigError(f"CORS_ALLOWED_ORIGINS={written!r}: not an origin (scheme://host[:port], no path; "
                          "list each one, * is not taken)")
    scheme, host = parts.scheme.lower(), host.lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}" + ("" if port is None or port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def cors_headers(origin: str | None, allowed: frozenset) -> list[tuple[str, str]]:
    """The CORS headers of an answer to `origin`, when CORS_ALLOWED_ORIGINS allows it."""
    if not origin or origin not in allowed:
        return []
    return [("Access-Control-Allow-Origin", origin), *_CORS_HEADERS.items()]


def _allow_origin(response: Response) -> None:
    """CORS for the origins CORS_ALLOWED_ORIGINS names (the drop page calls every service)."""
    allowed = current_app.extensions["floodgate.cors"]
    for name, value in cors_headers(request.headers.get("Origin"), allowed):
        response.headers[name] = value
    if allowed:
        response.vary.add("Origin")


def _finish_request(response: Response) -> Response:
    _allow_origin(response)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    # this thread's CPU time on the request (waits for the database, the network and the GIL
    # excluded): what each kind of request costs, read off the log of a rehearsal or a drop
    cpu = time.thread_time() - g.get("cpu_started", time.thread_time())
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    service = root().service
    method = request.method if request.method in _METHODS else "other"
    metrics.HTTP_REQUESTS.labels(service, method, route, response.status_code).inc()
    metrics.HTTP_LATENCY.labels(service, method, route).observe(elapsed)
    if route not in ("/healthz", "/readyz", "/metrics"):
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "cpu_ms": round(cpu * 1000, 2),
            },
        )
    return response


_probes = Blueprint("probes", __name__)


@_probes.get("/healthz")
def healthz():
    """Liveness: the process answers. Never checks dependencies."""
    return jsonify(status="ok")


@_probes.get("/readyz")
def readyz():
    """Readiness: this service's database answers (cached for two seconds).

    Not the broker: an API only writes events to its outbox, in its own database, and the relays
    publish them whenever the broker is there; a broker restart must not take the storefront out
    of its Service. The broker's health is the relays' and the consumers' (their heartbeats)."""
    cached = current_app.extensions["floodgate.readiness"]
    if time.monotonic() - cached.get("at", float("-inf")) > READINESS_CACHE_SECONDS:
        checks = {}
        try:
            db.ping(root().engine)
            checks["database"] = "ok"
        except Exception as error:
            checks["database"] = f"unavailable: {type(error).__name__}"
        cached.update(at=time.monotonic(), checks=checks)
    checks = cached["checks"]
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), (200 if ready else 503)


@_probes.get("/metrics")
def prometheus():
    """Prometheus metrics of every worker of this service, then the service's own figures."""
    body, content_type = metrics.exposition()
    return Response(body + generate_latest(current_app.extensions["floodgate.metrics"]), content_type=content_type)


@_probes.get("/openapi.json")
def openapi_document():
    """This service's OpenAPI description, built once per process (it describes the code)."""
    built = current_app.extensions.get("floodgate.openapi")
    if built is None:
        built = current_app.extensions["floodgate.openapi"] = current_app.json.dumps(
            openapi.build_spec(current_app, current_app.config["OPENAPI_TITLE"]))
    return current_app.response_class(built, mimetype="application/json")

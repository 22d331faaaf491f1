"""OpenAPI descriptions generated from the marshmallow schemas the views already use.

A view declares its contract with `@operation(...)`; `build_spec` walks the app's routes. What
every document states without a view having to say it: a request body that is not JSON is a 400,
a body or query that fails its schema a 422, a bearer endpoint without a valid token a 401, an
admin endpoint called with a buyer's token a 403, a path or query too long for gunicorn a 414, and
any endpoint whose database is not answering a 503 (every one has a database); request text
carries no NUL character.
"""
from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask

PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "object", "description": "field-level messages, for validation problems"},
    },
}
# What `shared.web.load` refuses in any string of a body or query (422): PostgreSQL cannot store
# NUL, and a lone surrogate has no UTF-8 encoding (JSON Schema cannot say that part; the info
# description does).
STORABLE_TEXT = r"^[^\x00]*$"
DESCRIPTION = (
    "Errors are `application/problem+json` (RFC 9457). Request text is Unicode without NUL characters "
    "or lone surrogates (422 otherwise)."
)
RULES_PREAMBLE = "breaks a rule the schema cannot state"
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": "An access token from accounts' `POST /sessions` (a buyer's or an admin's)."},
    "admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
              "description": "An admin's access token; a buyer's token answers 403."},
    "service": {"type": "apiKey", "in": "header", "name": "X-Service-Key",
                "description": "The key Floodgate's services share; never a buyer's token."},
}


def operation(
    summary: str,
    *,
    request: Any = None,
    request_required: bool = True,
    query: Any = None,
    response: Any = None,
    status: int | tuple[int, ...] = 200,
    errors: tuple[int, ...] = (),
    auth: str | None = None,
    headers: dict[str, dict] | None = None,
    description: str | None = None,
    rules: tuple[str, ...] = (),
):
    """Describe a view: request, query and response schemas, success statuses, problem statuses, auth.

    `status` is the success status, or all of them (the first is the usual one); `auth` names a
    security scheme (`bearer`, `admin` or `service`); `headers` maps a required header's name to its
    parameter object (`description`, `schema`); `request_required=False` says an empty body is
    taken as `{}`; `rules` are what the request must also satisfy that JSON Schema cannot say
    (across fields, against the clock or stored data), each answered by a 422."""

    def decorate(view):
        view.openapi = {
            "summary": summary,
            "description": description,
            "request": request,
            "request_required": request_required,
            "query": query,
            "response": response,
            "statuses": (status,) if isinstance(status, int) else tuple(status),
            "errors": errors,
            "auth": auth,
            "headers": headers or {},
            "rules": rules,
        }
        return view

    return decorate


def build_spec(app: Flask, title: str, version: str = "1.0.0") -> dict:
    """The OpenAPI 3 document for every documented route of `app`."""
    plugin = MarshmallowPlugin()
    spec = APISpec(title=title, version=version, openapi_version="3.0.3", plugins=[plugin],
                   info={"description": DESCRIPTION})
    plugin.converter.add_attribute_function(_storable_text)
    spec.components.schema("Problem", PROBLEM)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        meta = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if meta is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(meta, rule.arguments)
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _storable_text(self, field, ret: dict, **kwargs) -> dict:
    # apispec attribute function: a string without a pattern, format or enum of its own is held
    # to STORABLE_TEXT, as every string of a request is.
    if ret.get("type") == "string" and not {"pattern", "format", "enum"} & ret.keys():
        return {"pattern": STORABLE_TEXT}
    return {}


def _problem_description(status: int, rules: tuple[str, ...]) -> str:
    if status == 400:
        return "The body is not a JSON document."
    if status == 401:
        return "The credentials are missing, malformed, expired or not Floodgate's."
    if status == 414:
        return "The request line (path and query) is longer than 4094 bytes."
    if status == 422 and rules:
        return f"The request fails its schema, or {RULES_PREAMBLE}: " + "; ".join(rules) + "."
    if status == 422:
        return "The request fails its schema."
    if status == 503:
        return "A dependency (the service's database, ...) is not answering; retry after `Retry-After` seconds."
    return "Problem"


def _operation(meta: dict, arguments) -> dict:
    op: dict[str, Any] = {"summary": meta["summary"], "responses": {}}
    if meta["description"]:
        op["description"] = meta["description"]
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in sorted(arguments)]
    params += [{"name": name, "in": "header", "required": True, "schema": {"type": "string"}, **parameter}
               for name, parameter in meta["headers"].items()]
    if meta["query"] is not None:
        params.append({"in": "query", "schema": meta["query"]})
    if params:
        op["parameters"] = params
    if meta["request"] is not None:
        op["requestBody"] = {"required": meta["request_required"],
                             "content": {"application/json": {"schema": meta["request"]}}}
    for status in meta["statuses"]:
        success: dict[str, Any] = {"description": "OK"}
        if meta["response"] is not None and status != 204:
            success["content"] = {"application/json": {"schema": meta["response"]}}
        op["responses"][str(status)] = success
    problems = set(meta["errors"]) | {503}
    if meta["request"] is not None:
        problems |= {400, 422}  # not JSON / fails the schema
    if meta["query"] is not None or meta["rules"]:
        problems.add(422)
    if arguments or meta["query"] is not None:
        problems.add(414)  # gunicorn's `limit_request_line`
    if meta["auth"]:
        problems.add(401)
    if meta["auth"] == "admin":
        problems.add(403)
    for status in sorted(problems):
        op["responses"][str(status)] = {
            "description": _problem_description(status, meta["rules"]),
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    if meta["auth"]:
        op["security"] = [{meta["auth"]: []}]
    return op

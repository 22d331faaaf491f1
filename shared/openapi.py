"""OpenAPI descriptions generated from the marshmallow schemas the views already use.

A view declares its contract with `@operation(...)`; `build_spec` walks the app's routes.
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


def operation(
    summary: str,
    *,
    request: Any = None,
    query: Any = None,
    response: Any = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    auth: str | None = None,
    headers: dict[str, str] | None = None,
):
    """Describe a view: request, query and response schemas, success status, problem statuses, auth."""

    def decorate(view):
        view.openapi = {
            "summary": summary,
            "request": request,
            "query": query,
            "response": response,
            "status": status,
            "errors": errors,
            "auth": auth,
            "headers": headers or {},
        }
        return view

    return decorate


def build_spec(app: Flask, title: str, version: str = "1.0.0") -> dict:
    """The OpenAPI 3 document for every documented route of `app`."""
    spec = APISpec(title=title, version=version, openapi_version="3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Problem", PROBLEM)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.security_scheme("service", {"type": "apiKey", "in": "header", "name": "X-Service-Key"})
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


def _operation(meta: dict, arguments) -> dict:
    op: dict[str, Any] = {"summary": meta["summary"], "responses": {}}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in sorted(arguments)]
    params += [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}, "description": text}
        for name, text in meta["headers"].items()
    ]
    if meta["query"] is not None:
        params.append({"in": "query", "schema": meta["query"]})
    if params:
        op["parameters"] = params
    if meta["request"] is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": meta["request"]}}}
    success: dict[str, Any] = {"description": "OK"}
    if meta["response"] is not None:
        success["content"] = {"application/json": {"schema": meta["response"]}}
    op["responses"][str(meta["status"])] = success
    for status in sorted(set(meta["errors"]) | ({401} if meta["auth"] else set()) | ({422} if meta["request"] else set())):
        op["responses"][str(status)] = {
            "description": "Problem",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    if meta["auth"]:
        op["security"] = [{meta["auth"]: []}]
    return op

"""What a service's OpenAPI document states on its own, and the request bodies `shared.web.load` takes."""
from __future__ import annotations

import pytest
from flask import Flask, jsonify
from marshmallow import EXCLUDE, Schema, fields, validate

from shared import errors
from shared.openapi import RULES_PREAMBLE, STORABLE_TEXT, build_spec, operation
from shared.web import load


class Thing(Schema):
    name = fields.String(required=True)
    code = fields.String(validate=validate.Regexp(r"^[A-Z]{2}$"))


class Lenient(Schema):
    class Meta:
        unknown = EXCLUDE

    note = fields.String(load_default="")


class Page(Schema):
    limit = fields.Integer(load_default=10)


@pytest.fixture
def app():
    app = Flask("things")
    errors.init_app(app)

    @app.post("/things")
    @operation("Add a thing", request=Thing, response=Thing, status=(201, 200), auth="admin",
               rules=("`name` is not taken",))
    def add():
        return jsonify(load(Thing())), 201

    @app.get("/things/<thing_id>")
    @operation("One thing", response=Thing, errors=(404,), auth="bearer")
    def show(thing_id):
        return jsonify({})

    @app.get("/things")
    @operation("Things", query=Page, response=Thing(many=True))
    def index():
        return jsonify([])

    @app.post("/notes")
    @operation("Take a note; an empty body is {}", request=Lenient, request_required=False, response=Lenient)
    def note():
        return jsonify(load(Lenient(), allow_empty=True))

    return app


@pytest.fixture
def document(app):
    return build_spec(app, "Things")


def statuses(document, path, method):
    return sorted(document["paths"][path][method]["responses"])


def test_a_body_may_be_malformed_or_invalid_an_admin_endpoint_refuses_buyers_and_rules_are_listed(document):
    assert statuses(document, "/things", "post") == ["200", "201", "400", "401", "403", "422", "503"]
    post = document["paths"]["/things"]["post"]
    assert post["security"] == [{"admin": []}]
    assert RULES_PREAMBLE in post["responses"]["422"]["description"]
    assert "`name` is not taken" in post["responses"]["422"]["description"]


def test_a_query_may_be_invalid_and_a_url_too_long(document):
    assert statuses(document, "/things", "get") == ["200", "414", "422", "503"]
    assert statuses(document, "/things/{thing_id}", "get") == ["200", "401", "404", "414", "503"]


def test_text_without_a_pattern_of_its_own_is_stated_without_nul(document):
    properties = document["components"]["schemas"]["Thing"]["properties"]
    assert properties["name"]["pattern"] == STORABLE_TEXT
    assert properties["code"]["pattern"] == "^[A-Z]{2}$"


def test_an_optional_body_is_stated_and_taken_empty(app, document):
    assert document["paths"]["/notes"]["post"]["requestBody"]["required"] is False
    client = app.test_client()
    assert client.post("/notes").get_json() == {"note": ""}
    assert client.post("/notes", data="not json", content_type="application/json").status_code == 400


def test_a_missing_body_is_a_400_and_nul_in_kept_text_a_422(app):
    client = app.test_client()
    assert client.post("/things").status_code == 400
    assert client.post("/things", json={"name": "a\x00b"}).status_code == 422


def test_members_an_excluding_schema_ignores_are_not_checked(app):
    answer = app.test_client().post("/notes", json={"note": "fine", "extra\x00": "also\x00"})
    assert answer.status_code == 200 and answer.get_json() == {"note": "fine"}


@pytest.mark.parametrize("depth", [900, 960, 990, 5000, 100_000])
def test_a_body_nested_beyond_any_operation_is_refused_never_a_500(app, depth):
    """Deep enough, and either the JSON parser or the check of stored text runs out of stack:
    the malformed body's 400 whichever does; less deep, the schema's 422."""
    nested = '{"name": ' + "[" * depth + "]" * depth + "}"
    answer = app.test_client().post("/things", data=nested, content_type="application/json")
    assert answer.status_code in (400, 422), answer.get_data(as_text=True)
    assert answer.content_type == "application/problem+json"
    if depth >= 5000:
        assert answer.get_json()["type"].endswith("/malformed")

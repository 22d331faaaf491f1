"""Bad requests get a problem and never reach the database (the app is given one it cannot reach)."""
import uuid

import pytest
from marshmallow import ValidationError

from services.inventory import config
from services.inventory.app import create_app
from services.inventory.commands import ReserveStock
from services.inventory.schemas import NewDropSchema, ReservationRequestSchema
from shared.config import DEV_SERVICE_KEY

SERVICE = {"X-Service-Key": DEV_SERVICE_KEY}


@pytest.fixture()
def client():
    settings = config.Settings.from_env(
        {}, database_url="postgresql+psycopg://nobody@127.0.0.1:1/unreachable", jwks_url="http://127.0.0.1:1/jwks"
    )
    return create_app(settings).test_client()


def reservation(**changes) -> dict:
    body = {"order_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()), "buyer_id": "buyer-1", "quantity": 1}
    body.update(changes)
    return body


def test_a_valid_reservation_request_becomes_a_command():
    body = reservation(quantity=2, coupon="ignored")
    command = ReservationRequestSchema().load(body)
    assert command == ReserveStock(uuid.UUID(body["order_id"]), uuid.UUID(body["drop_id"]), "buyer-1", 2)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"order_id": "not-a-uuid"}, "order_id"),
        ({"drop_id": 42}, "drop_id"),
        ({"buyer_id": ""}, "buyer_id"),
        ({"buyer_id": "x" * 129}, "buyer_id"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": "1"}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"quantity": 10**9}, "quantity"),
    ],
)
def test_invalid_reservation_requests_name_the_field(changes, field):
    with pytest.raises(ValidationError) as invalid:
        ReservationRequestSchema().load(reservation(**changes))
    assert field in invalid.value.messages


def test_a_drop_window_needs_explicit_offsets_and_must_not_be_empty():
    base = {"product_id": str(uuid.uuid4()), "quantity": 10}
    with pytest.raises(ValidationError) as naive:
        NewDropSchema().load({**base, "opens_at": "2030-01-01T15:00:00", "closes_at": "2030-01-01T16:00:00Z"})
    assert "opens_at" in naive.value.messages
    with pytest.raises(ValidationError) as empty:
        NewDropSchema().load({**base, "opens_at": "2030-01-01T15:00:00Z", "closes_at": "2030-01-01T16:00:00+01:00"})
    assert "closes_at" in empty.value.messages
    command = NewDropSchema().load({**base, "opens_at": "2030-01-01T15:00:00Z", "closes_at": "2030-01-01T16:00:00Z"})
    assert command.per_buyer_limit == 1


def test_reservations_need_the_service_key(client):
    response = client.post("/reservations", json=reservation())
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"


def test_an_invalid_reservation_is_a_422_problem(client):
    response = client.post("/reservations", json=reservation(quantity=-1), headers=SERVICE)
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert response.get_json()["type"].endswith("/validation")
    assert "quantity" in response.get_json()["errors"]


def test_a_body_that_is_not_json_is_a_400_problem(client):
    response = client.post("/reservations", data="{", headers={**SERVICE, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "method, path, slug",
    [
        ("get", "/drops/not-a-uuid", "drop-not-found"),
        ("get", "/products/1", "product-not-found"),
        ("post", "/reservations/%zz/release", "reservation-not-found"),
    ],
)
def test_malformed_ids_are_not_found(client, method, path, slug):
    response = getattr(client, method)(path, headers=SERVICE)
    assert response.status_code == 404
    assert response.get_json()["type"].endswith("/" + slug)

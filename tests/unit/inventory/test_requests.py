"""Bad requests get a problem and never reach the database (the app is given one it cannot reach)."""
import logging
import time
import uuid

import pytest
from marshmallow import ValidationError

from services.inventory import config
from services.inventory.app import create_app
from services.inventory.commands import ReserveStock
from services.inventory.commands import ChangeDrop
from services.inventory.schemas import ChangeDropSchema, NewDropSchema, ReservationRequestSchema
from shared.auth import Principal
from shared.config import DEV_SERVICE_KEY
from shared.web import ARRIVED_AT

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


def test_a_reservation_may_carry_the_buyer_tier_and_shipping_country():
    command = ReservationRequestSchema().load(reservation(buyer_tier="early", shipping_country="CA"))
    assert (command.buyer_tier, command.shipping_country) == ("early", "CA")
    assert ReservationRequestSchema().load(reservation()).shipping_country is None


@pytest.mark.parametrize("changes, field", [
    ({"shipping_country": "Canada"}, "shipping_country"),
    ({"shipping_country": "ca"}, "shipping_country"),
    ({"buyer_tier": ""}, "buyer_tier"),
    ({"buyer_tier": "t" * 65}, "buyer_tier"),
])
def test_invalid_tier_or_country_names_the_field(changes, field):
    with pytest.raises(ValidationError) as invalid:
        ReservationRequestSchema().load(reservation(**changes))
    assert field in invalid.value.messages


DROP = {"product_id": str(uuid.uuid4()), "quantity": 10, "opens_at": "2030-01-01T15:00:00Z",
        "closes_at": "2030-01-01T16:00:00Z"}


def test_a_drop_may_have_an_invite_phase_countries_shards_and_hold_ttl():
    command = NewDropSchema().load({**DROP, "invite_only_until": "2030-01-01T15:10:00Z", "invite_tier": "early",
                                    "shipping_countries": ["US", "CA", "CA"], "stock_shards": 4,
                                    "hold_ttl_seconds": 30})
    assert command.invite_tier == "early" and command.shipping_countries == ("CA", "US")
    assert (command.stock_shards, command.hold_ttl_seconds) == (4, 30)


@pytest.mark.parametrize("changes, field", [
    ({"invite_tier": "early"}, "invite_only_until"),
    ({"invite_only_until": "2030-01-01T15:10:00Z"}, "invite_tier"),
    ({"invite_only_until": "2030-01-01T14:00:00Z", "invite_tier": "early"}, "invite_only_until"),
    ({"shipping_countries": ["Canada"]}, "shipping_countries"),
    ({"shipping_countries": "CA"}, "shipping_countries"),
    ({"shipping_countries": ["CA", "UK"]}, "shipping_countries"),  # no address is in "UK": the kingdom is GB
    ({"shipping_countries": ["XX"]}, "shipping_countries"),
    ({"stock_shards": 0}, "stock_shards"),
    ({"stock_shards": 65}, "stock_shards"),
    ({"hold_ttl_seconds": 0}, "hold_ttl_seconds"),
    ({"quantity": -5}, "quantity"),
    ({"quantity": 10**7}, "quantity"),
])
def test_invalid_drops_name_the_field(changes, field):
    with pytest.raises(ValidationError) as invalid:
        NewDropSchema().load({**DROP, **changes})
    assert field in invalid.value.messages


BAD_TIERS = ["Early-Access", "early-access ", " early-access", "early access", "early_access", "-early",
             "early-access\n", "ëarly", "", "t" * 65]


@pytest.mark.parametrize("tier", BAD_TIERS)
def test_a_drop_names_its_invite_tier_as_accounts_spells_tiers_or_is_refused(tier):
    # Compared exactly with the buyer's tier: "Early-Access" would lock every buyer out.
    with pytest.raises(ValidationError) as invalid:
        NewDropSchema().load({**DROP, "invite_only_until": "2030-01-01T15:10:00Z", "invite_tier": tier})
    assert list(invalid.value.messages) == ["invite_tier"]


@pytest.mark.parametrize("tier", ["early-access", "vip", "2026-q4", "a", "a" * 64, *BAD_TIERS])
def test_a_drop_accepts_exactly_the_tiers_accounts_issues(tier):
    from services.accounts.schemas import InviteRequestSchema

    def accepted(schema, body):
        try:
            schema.load(body)
        except ValidationError:
            return False
        return True

    issued = accepted(InviteRequestSchema(), {"tier": tier})
    named = accepted(NewDropSchema(), {**DROP, "invite_only_until": "2030-01-01T15:10:00Z", "invite_tier": tier})
    assert issued == named == (tier not in BAD_TIERS)


def test_over_http_a_drop_with_a_tier_no_buyer_can_hold_is_a_422_problem_naming_the_field(client):
    client.application.extensions["floodgate.auth"] = (AdminEverywhere(), DEV_SERVICE_KEY)

    response = client.post("/drops", headers={"Authorization": "Bearer admin"},
                           json={**DROP, "invite_only_until": "2030-01-01T15:10:00Z", "invite_tier": "Early-Access"})

    assert response.status_code == 422 and response.content_type == "application/problem+json"
    assert "invite_tier" in response.get_json()["errors"]


class AdminEverywhere:
    """A verifier that takes any token for an admin's: the test is about the body, not the token."""

    def verify(self, token):
        return Principal(subject="admin-1", role="admin")


def test_a_drop_change_moves_the_close_and_or_adds_stock():
    assert ChangeDropSchema().load({"add_quantity": 5}) == ChangeDrop(add_quantity=5)
    assert ChangeDropSchema().load({"invite_tier": "early-access"}) == ChangeDrop(invite_tier="early-access")
    both = ChangeDropSchema().load({"closes_at": "2030-01-01T18:00:00Z", "add_quantity": 1})
    assert both.closes_at.hour == 18 and both.add_quantity == 1


@pytest.mark.parametrize("body, field", [
    ({}, "_schema"),
    ({"add_quantity": 0}, "add_quantity"),
    ({"add_quantity": -3}, "add_quantity"),
    ({"add_quantity": 10**9}, "add_quantity"),
    ({"closes_at": "2030-01-01T18:00:00"}, "closes_at"),
    ({"quantity": 5}, "quantity"),
    ({"invite_tier": "Early-Access"}, "invite_tier"),
    ({"invite_tier": ""}, "invite_tier"),
])
def test_invalid_drop_changes_name_the_field(body, field):
    with pytest.raises(ValidationError) as invalid:
        ChangeDropSchema().load(body)
    assert field in invalid.value.messages


def test_changing_a_drop_needs_an_admin(client):
    response = client.patch(f"/drops/{uuid.uuid4()}", json={"add_quantity": 1})
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"


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


def test_a_database_that_does_not_answer_is_a_retryable_503_never_a_500(client):
    answer = client.post("/reservations", json=reservation(), headers=SERVICE)
    assert answer.status_code == 503
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.headers["Retry-After"]
    assert answer.get_json()["type"].endswith("/database-unavailable")


def test_readiness_is_the_database_alone(client):
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert set(answer.get_json()["checks"]) == {"database"}


def test_every_request_is_logged_with_its_time_and_its_cpu(client, caplog):
    """What each kind of request costs is read off these lines (docs/performance.md)."""
    with caplog.at_level(logging.INFO, logger="floodgate.http"):
        response = client.post("/reservations", json=reservation(quantity=0), headers=SERVICE)
    assert response.status_code == 422
    [line] = [record for record in caplog.records if record.getMessage() == "request"]
    assert (line.method, line.path, line.route, line.status) == ("POST", "/reservations", "/reservations", 422)
    assert 0 <= line.cpu_ms <= line.duration_ms


def test_a_request_that_waited_in_front_of_flask_counts_its_wait_in_its_time(client, caplog):
    """A WSGI layer in front of Flask (checkout's order gate) notes when the request reached it:
    the request's time, in its log line and its latency histogram, counts from then."""
    with caplog.at_level(logging.INFO, logger="floodgate.http"):
        client.post("/reservations", json=reservation(quantity=0), headers=SERVICE,
                    environ_base={ARRIVED_AT: time.perf_counter() - 1.5})
    [line] = [record for record in caplog.records if record.getMessage() == "request"]
    assert line.duration_ms >= 1500

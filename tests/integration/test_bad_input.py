"""Bad input on every endpoint of the order path: a problem+json 4xx, and nothing changes."""
from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import PREVIOUS_WEBHOOK_SECRET
from tests.integration.database import scalar

ADDRESS = {"name": "A", "street_address": "1 Main St", "city": "Ottawa", "postal_code": "K1A 0B1",
           "country_area": "ON", "country_code": "CA"}


def assert_problem(response, status: int, slug: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")
    if slug:
        assert body["type"].endswith("/" + slug), body["type"]
    return body


def forged_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "intruder", "role": "admin", "iss": "floodgate-accounts", "aud": "floodgate",
              "iat": now, "exp": now + 600}
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    stranger = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "stranger"})
    hs256 = jwt.encode(claims, "a-guessable-shared-secret-of-32-bytes!", algorithm="HS256")
    return {"alg-none": unsigned, "unknown-key": stranger, "hs256": hs256, "garbage": "not.a.jwt"}


@pytest.mark.parametrize("name", ["alg-none", "unknown-key", "hs256", "garbage"])
def test_forged_tokens_are_refused_everywhere(floodgate, stack, open_drop, name):
    token = forged_tokens()[name]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}
    body = {"drop_id": open_drop["id"], "quantity": 1, "shipping_address": ADDRESS}
    assert_problem(floodgate.http.post(stack.url("checkout") + "/orders", json=body, headers=headers), 401)
    assert_problem(floodgate.http.get(stack.url("checkout") + "/orders", headers=headers), 401)
    assert_problem(floodgate.http.post(stack.url("inventory") + "/products", headers=headers,
                                       json={"sku": "X", "name": "X", "price": {"amount": 1, "currency": "EUR"}}), 401)
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"]


def test_buyers_cannot_use_admin_or_service_endpoints(floodgate, stack, buyer, open_drop):
    _, token = buyer
    auth = {"Authorization": f"Bearer {token}"}
    assert_problem(floodgate.http.post(stack.url("inventory") + "/products", headers=auth,
                                       json={"sku": "X", "name": "X", "price": {"amount": 1, "currency": "EUR"}}), 403)
    reservation = {"order_id": str(uuid.uuid4()), "drop_id": open_drop["id"], "buyer_id": "me", "quantity": 1}
    assert_problem(floodgate.http.post(stack.url("inventory") + "/reservations", headers=auth, json=reservation), 401)
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"]


ORDER_CASES = {
    "missing drop": ({"quantity": 1, "shipping_address": ADDRESS}, 422),
    "drop not a uuid": ({"drop_id": "abc", "quantity": 1, "shipping_address": ADDRESS}, 422),
    "quantity as string": ({"drop_id": "DROP", "quantity": "1", "shipping_address": ADDRESS}, 422),
    "quantity zero": ({"drop_id": "DROP", "quantity": 0, "shipping_address": ADDRESS}, 422),
    "quantity absurd": ({"drop_id": "DROP", "quantity": 10**12, "shipping_address": ADDRESS}, 422),
    "missing address": ({"drop_id": "DROP", "quantity": 1}, 422),
    "address without postal code": ({"drop_id": "DROP", "quantity": 1,
                                     "shipping_address": {k: v for k, v in ADDRESS.items() if k != "postal_code"}}, 422),
    "US address with a Canadian postal code": ({"drop_id": "DROP", "quantity": 1, "shipping_address": dict(
        ADDRESS, country_code="US", country_area="CA", city="Mountain View")}, 422),
    "province that is not Canadian": ({"drop_id": "DROP", "quantity": 1,
                                       "shipping_address": dict(ADDRESS, country_area="TX")}, 422),
    "body is a list": ([1, 2], 422),
    "unknown drop": ({"drop_id": str(uuid.uuid4()), "quantity": 1, "shipping_address": ADDRESS}, 404),
}


@pytest.mark.parametrize("case", ORDER_CASES)
def test_bad_orders_are_refused_and_change_nothing(floodgate, stack, buyer, open_drop, case):
    _, token = buyer
    body, status = ORDER_CASES[case]
    body = json.loads(json.dumps(body).replace("DROP", open_drop["id"]))
    answer = floodgate.http.post(stack.url("checkout") + "/orders", json=body,
                                 headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())})
    problem = assert_problem(answer, status)
    if status == 422 and case != "body is a list":
        assert problem["errors"]
    listed = floodgate.http.get(stack.url("checkout") + "/orders", headers={"Authorization": f"Bearer {token}"})
    assert listed.json()["orders"] == []
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"]


def test_non_json_and_missing_idempotency_key(floodgate, stack, buyer, open_drop):
    _, token = buyer
    url = stack.url("checkout") + "/orders"
    body = {"drop_id": open_drop["id"], "quantity": 1, "shipping_address": ADDRESS}
    assert_problem(floodgate.http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}), 422)
    assert_problem(floodgate.http.post(url, data="{not json", headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": "k", "Content-Type": "application/json"}), 400)
    nested = '{"drop_id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_problem(floodgate.http.post(url, data=nested, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": "k2", "Content-Type": "application/json"}), 400)
    assert_problem(floodgate.get_order(token, "not-a-uuid"), 404)
    assert_problem(floodgate.get_order(token, str(uuid.uuid4())), 404)
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"]


def test_another_buyers_order_is_not_found(floodgate, buyer, open_drop):
    _, owner = buyer
    order = floodgate.place_order(owner, open_drop["id"]).json()
    _, stranger = floodgate.register()
    assert_problem(floodgate.get_order(stranger, order["id"]), 404)


def test_forged_stale_and_malformed_webhooks_are_refused(floodgate, stack, buyer, open_drop):
    from services.checkout.payments import sign
    from shared.config import DEV_WEBHOOK_SECRET

    _, token = buyer
    order = floodgate.place_order(token, open_drop["id"]).json()
    event = {"id": f"WH-{uuid.uuid4()}", "event_type": "PAYMENT.CAPTURE.COMPLETED",
             "resource": {"id": "CAP-1", "order_id": order["id"], "amount": order["total"]["amount"],
                          "currency": order["total"]["currency"]}}
    payload = json.dumps(event).encode()
    url = stack.url("checkout") + "/payments/webhook"

    def send(body: bytes, signature: str | None):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Provider-Signature"] = signature
        return floodgate.http.post(url, data=body, headers=headers)

    now = int(time.time())
    assert_problem(send(payload, None), 401, "invalid-signature")
    assert_problem(send(payload, sign("someone else's secret", payload, now)), 401, "invalid-signature")
    assert_problem(send(payload, sign(DEV_WEBHOOK_SECRET, payload, now - 3600)), 401, "invalid-signature")
    assert_problem(send(payload, f"t={now},v1=\xe9"), 401, "invalid-signature")  # sent as the byte 0xE9
    assert_problem(send(payload, "t=1" + "0" * 400 + ",v1=ab"), 401, "invalid-signature")  # not an overflow's 500
    tampered = payload.replace(b'"amount": ', b'"amount": 1')
    assert_problem(send(tampered, sign(DEV_WEBHOOK_SECRET, payload, now)), 401, "invalid-signature")
    garbage = b'{"id": 5}'
    assert_problem(send(garbage, sign(DEV_WEBHOOK_SECRET, garbage, now)), 422)
    # mid-rotation the secret before the current one is taken too (and only it: someone else's is not, above)
    approved = json.dumps({**event, "event_type": "CHECKOUT.ORDER.APPROVED"}).encode()
    noted = send(approved, sign(PREVIOUS_WEBHOOK_SECRET, approved, now))
    assert noted.status_code == 200 and noted.json() == {"result": "noted"}
    # a refund or a reversal that does not say which capture it gives back
    given_back = json.dumps({**event, "event_type": "PAYMENT.CAPTURE.REVERSED"}).encode()
    assert_problem(send(given_back, sign(DEV_WEBHOOK_SECRET, given_back, now)), 422)
    assert floodgate.get_order(token, order["id"]).json()["status"] == "awaiting_payment"


ACCOUNT_CASES = {
    "missing password": ({"email": "a@example.com"}, 422),
    "email wrong type": ({"email": 5, "password": "long enough password"}, 422),
    "not an email": ({"email": "nope", "password": "long enough password"}, 422),
    "short password": ({"email": "short@example.com", "password": "x"}, 422),
}


@pytest.mark.parametrize("case", ACCOUNT_CASES)
def test_bad_registrations_are_refused(floodgate, stack, case):
    body, status = ACCOUNT_CASES[case]
    accounts_before = scalar(stack, "accounts", "SELECT count(*) FROM accounts")
    assert_problem(floodgate.http.post(stack.url("accounts") + "/accounts", json=body), status)
    assert scalar(stack, "accounts", "SELECT count(*) FROM accounts WHERE email = :email", email=str(body["email"])) == 0
    assert scalar(stack, "accounts", "SELECT count(*) FROM accounts") == accounts_before


def test_bad_logins_get_one_generic_answer(floodgate, stack, buyer):
    email, _ = buyer
    wrong_password = floodgate.http.post(stack.url("accounts") + "/sessions", json={"email": email, "password": "wrong one!"})
    no_account = floodgate.http.post(stack.url("accounts") + "/sessions",
                                     json={"email": "nobody-" + email, "password": "wrong one!"})
    assert assert_problem(wrong_password, 401)["detail"] == assert_problem(no_account, 401)["detail"]
    assert_problem(floodgate.http.post(stack.url("accounts") + "/sessions", json={"email": email}), 422)


def test_bad_drops_are_refused(floodgate, stack, admin_token):
    auth = {"Authorization": f"Bearer {admin_token}"}
    url = stack.url("inventory") + "/drops"
    product = floodgate.http.post(stack.url("inventory") + "/products", headers=auth, json={
        "sku": f"BAD-{uuid.uuid4().hex[:6]}", "name": "X", "price": {"amount": 100, "currency": "EUR"}}).json()
    good = {"product_id": product["id"], "quantity": 10,
            "opens_at": "2030-01-01T10:00:00+00:00", "closes_at": "2030-01-01T11:00:00+00:00"}
    assert_problem(floodgate.http.post(url, headers=auth, json=dict(good, quantity=-5)), 422)
    assert_problem(floodgate.http.post(url, headers=auth, json=dict(good, closes_at="2030-01-01T09:00:00+00:00")), 422)
    assert_problem(floodgate.http.post(url, headers=auth, json=dict(good, opens_at="not a date")), 422)
    unknown = floodgate.http.post(url, headers=auth, json=dict(good, product_id=str(uuid.uuid4())))
    assert unknown.status_code in (404, 422)
    assert_problem(unknown, unknown.status_code)
    assert_problem(floodgate.http.get(stack.url("inventory") + "/drops/not-a-uuid"), 404)
    assert_problem(floodgate.http.get(stack.url("inventory") + f"/drops/{uuid.uuid4()}"), 404)


@pytest.mark.parametrize("sku, currency", [
    ("NL-{run}", "EUR\n"),  # once a 500: the currency's varchar(3) overflowed
    ("NL-{run}\n", "EUR"),  # once stored: a second product beside "NL-..."
], ids=["currency", "sku"])
def test_a_code_with_a_trailing_newline_is_refused(floodgate, stack, admin_token, sku, currency):
    sku = sku.replace("{run}", uuid.uuid4().hex[:8])
    body = {"sku": sku, "name": "X", "price": {"amount": 100, "currency": currency}}
    answer = floodgate.http.post(stack.url("inventory") + "/products", json=body,
                                 headers={"Authorization": f"Bearer {admin_token}"})
    assert_problem(answer, 422)
    assert scalar(stack, "inventory", "SELECT count(*) FROM products WHERE sku LIKE :s", s=sku.strip()[:20] + "%") == 0


def test_a_body_beyond_the_limit_is_refused_unread_and_a_service_call_that_needs_more_gets_it(
        floodgate, stack, open_drop):
    # about 1.8 MB of JSON that would become millions of Python objects: once read in full by anyone
    huge = b"[" + b"{}," * 600_000 + b"{}]"
    for url in (stack.url("accounts") + "/sessions", stack.url("checkout") + "/payments/webhook"):
        answer = floodgate.http.post(url, data=huge, headers={"Content-Type": "application/json"})
        assert_problem(answer, 413)
    # the admitter's question names up to 100,000 buyers: more than the limit, and it is allowed
    many = {"buyer_ids": [f"buyer-{n:0120d}" for n in range(10_000)]}
    answer = floodgate.http.post(stack.url("inventory") + f"/drops/{open_drop['id']}/holders", json=many,
                                 headers=stack.service_headers())
    assert answer.status_code == 200 and answer.json()["holding"] == 0, answer.text


def test_a_made_up_http_method_adds_no_metric_series(floodgate, stack):
    method = f"X{uuid.uuid4().hex[:12].upper()}"
    answer = floodgate.http.request(method, stack.url("checkout") + "/orders")
    assert answer.status_code in (400, 404, 405, 501)
    exposition = floodgate.http.get(stack.url("checkout") + "/metrics").text
    assert method not in exposition and 'method="other"' in exposition

"""The thin path of a drop, end to end: order, payment, sale, email."""
from __future__ import annotations

import concurrent.futures
import uuid

import jwt

from devtools.client import CANADIAN_ADDRESS, poll
from tests.integration.database import scalar


def test_a_paid_order_is_confirmed_sold_once_and_emailed_once(floodgate, stack, buyer, open_drop):
    email, token = buyer
    placed = floodgate.place_order(token, open_drop["id"])
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "awaiting_payment"
    assert order["shipping_address"]["country_code"] == "CA"

    assert floodgate.pay(order).status_code == 200
    confirmed = floodgate.wait_for_status(token, order["id"], "confirmed")
    assert [step["status"] for step in confirmed["history"]] == ["awaiting_payment", "confirmed"]

    poll(lambda: scalar(stack, "inventory", "SELECT status FROM reservations WHERE order_id = :id", id=order["id"]) == "sold",
         what="the hold to become a sale")
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"] - 1

    mails = poll(lambda: floodgate.confirmations_of(order["id"]), what="the confirmation email")
    assert len(mails) == 1
    [mail] = mails
    assert mail["to"] == [email]
    assert "K1A 0B1" in mail["text"] and "ottawa" in mail["text"].lower()
    assert "Canada" in mail["text"] and "United States" not in mail["text"]
    shown = poll(lambda: (lambda o: o if o["email"]["confirmation_sent"] else None)(
        floodgate.get_order(token, order["id"]).json()), what="the order to show its email went out")
    assert shown["email"]["sent_at"]


def test_the_last_unit_sells_once_and_the_next_buyer_hears_sold_out(floodgate, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=2)
    answers = [floodgate.place_order(floodgate.register()[1], drop["id"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert answers[2].headers["Content-Type"] == "application/problem+json"
    assert answers[2].json()["type"].endswith("/sold-out")
    assert floodgate.get_drop(drop["id"])["remaining"] == 0


def test_one_idempotency_key_makes_one_order_sequentially_and_concurrently(floodgate, stack, buyer, open_drop):
    _, token = buyer
    key = str(uuid.uuid4())
    first = floodgate.place_order(token, open_drop["id"], key=key)
    second = floodgate.place_order(token, open_drop["id"], key=key)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == second.json()

    other_address = dict(first.json()["shipping_address"], city="Toronto")
    refused = floodgate.place_order(token, open_drop["id"], key=key, address=other_address)
    assert refused.status_code == 422
    assert refused.json()["type"].endswith("/idempotency-key-reused")

    _, racer = floodgate.register()
    race_key = str(uuid.uuid4())
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: floodgate.place_order(racer, open_drop["id"], key=race_key), range(12)))
    # Checkout may shed some of the burst (429 + Retry-After); retrying them gets the same answer.
    assert {a.status_code for a in answers} <= {201, 429}
    assert all(a.headers.get("Retry-After") for a in answers if a.status_code == 429)
    answers = [a if a.status_code == 201 else floodgate.place_order(racer, open_drop["id"], key=race_key) for a in answers]
    assert {a.status_code for a in answers} == {201}
    assert len({a.text for a in answers}) == 1

    for token_ in (token, racer):
        listed = floodgate.http.get(stack.url("checkout") + "/orders", headers={"Authorization": f"Bearer {token_}"})
        assert len(listed.json()["orders"]) == 1
    assert scalar(stack, "inventory", "SELECT count(*) FROM reservations WHERE order_id IN (:a, :b)",
                  a=first.json()["id"], b=answers[0].json()["id"]) == 2


def test_a_burst_of_one_key_that_is_refused_leaves_no_unit_held(floodgate, stack, admin_token):
    """Each request of the burst asks inventory for the key's hold before the first has answered
    (no transaction is open across that call); the first's refusal (its address has its two
    units already) is every request's answer, and the hold they shared goes back."""
    drop = floodgate.create_drop(admin_token, quantity=4, per_buyer_limit=2)
    _, neighbour = floodgate.register()
    _, racer = floodgate.register()
    address = dict(CANADIAN_ADDRESS, street_address="7 Rideau Gate")
    assert floodgate.place_order(neighbour, drop["id"], quantity=2, address=address).status_code == 201
    key = str(uuid.uuid4())
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: floodgate.place_order(racer, drop["id"], key=key, address=address),
                                range(12)))
    answers = [a if a.status_code != 429 else floodgate.place_order(racer, drop["id"], key=key, address=address)
               for a in answers]
    assert {a.status_code for a in answers} == {409}, [a.text for a in answers]
    assert len({a.json()["type"] for a in answers}) == 1 and answers[0].json()["type"].endswith("/address-limit-exceeded")
    assert floodgate.get_drop(drop["id"])["remaining"] == 2
    racer_id = jwt.decode(racer, options={"verify_signature": False})["sub"]
    assert scalar(stack, "inventory", "SELECT count(*) FROM reservations WHERE buyer_id = :buyer AND status <> 'released'",
                  buyer=racer_id) == 0


US_ADDRESS = {"name": "Sam Doe", "street_address": "1600 Amphitheatre Pkwy", "city": "Mountain View",
              "country_area": "CA", "postal_code": "94043", "country_code": "US"}


def test_one_key_sent_at_once_with_an_address_the_drop_ships_to_and_one_it_does_not_never_ships_there(
        floodgate, stack, admin_token):
    """Inventory answers an order id it holds with that hold, whatever the request: while the
    order id came from the key alone, the American body, refused at inventory, got the Canadian
    body's hold and, claiming the key first (about one race in two), an order shipping to the US."""
    drop = floodgate.create_drop(admin_token, quantity=20, shipping_countries=["CA"])
    rounds = 8
    buyers = [floodgate.register()[1] for _ in range(rounds)]

    def both_at_once(token):
        key = str(uuid.uuid4())
        send = lambda address: floodgate.place_order(token, drop["id"], key=key, address=address)  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pair = list(pool.map(send, (None, US_ADDRESS)))  # None: the buyer's own Canadian address
        # a request shed (429) is sent again, as a client does: the key's stored answer decides it
        return [answer if answer.status_code != 429 else send(address) for answer, address in zip(pair, (None, US_ADDRESS))]

    with concurrent.futures.ThreadPoolExecutor(rounds) as pool:
        pairs = list(pool.map(both_at_once, buyers))

    for canadian, american in pairs:
        # the key went to one body: the other is told the key was used for another request, and
        # the one it went to is an order shipping to Canada, or refused for shipping to the US
        kinds = sorted(answer.json().get("type", "order").rsplit("/", 1)[-1] if answer.status_code != 201 else "order"
                       for answer in (canadian, american))
        assert kinds in (["idempotency-key-reused", "order"], ["country-not-allowed", "idempotency-key-reused"]), (
            canadian.text, american.text)
    placed = [answer.json() for pair in pairs for answer in pair if answer.status_code == 201]
    assert all(order["shipping_address"]["country_code"] == "CA" for order in placed), placed
    # every unit not ordered is back: no hold of a refused body is left behind
    assert floodgate.get_drop(drop["id"])["remaining"] == 20 - len(placed)

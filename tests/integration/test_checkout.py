"""Checkout to depth: webhooks in any order, limits under concurrency, late payments, outages, cancels."""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import time
import uuid

import jwt
import sqlalchemy as sa
from sqlalchemy import orm

from devtools.client import CANADIAN_ADDRESS, poll
from services.checkout.repository import CheckoutUnitOfWork, purge_refused_keys
from tests.integration.database import scalar

# checkout's transactions left open (waiting on something outside the database) for over 0.5 s
WAITING_IN_TRANSACTION = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND state LIKE 'idle in transaction%' AND now() - xact_start > interval '0.5 seconds'")


def _while_inventory_is_frozen(stack, request, then_killed: bool = False):
    """`request()`'s answer, made while inventory's API is stopped (SIGSTOP), and checkout's
    transactions left open for over 0.5 s, sampled until it answers. Inventory's API then
    carries on, or with `then_killed` is killed, so the calls it had not read yet are never
    answered (the caller starts it again)."""
    inventory = stack.processes["inventory-api"]
    os.killpg(inventory.pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answering = pool.submit(request)
            seen = []
            while not answering.done():
                seen.append(scalar(stack, "checkout", WAITING_IN_TRANSACTION))
            return answering.result(), seen
    finally:
        if then_killed:
            stack.kill("inventory-api")
        else:
            os.killpg(inventory.pid, signal.SIGCONT)


@contextlib.contextmanager
def provider_behaviour(floodgate, **control):
    url = floodgate.stack.url("payments") + "/control"
    floodgate.http.post(url, json=control).raise_for_status()
    try:
        yield
    finally:
        floodgate.http.post(url, json={}).raise_for_status()


@contextlib.contextmanager
def stopped(stack, name: str):
    """Process `name` stopped for the block, started again after it whatever happens."""
    stack.stop(name)
    try:
        yield
    finally:
        stack.start(name)


@contextlib.contextmanager
def restarted(stack, name: str, **env):
    """Run process `name` with extra environment for the block, then as before."""
    stack.stop(name)
    stack.start(name, {k.upper(): str(v) for k, v in env.items()})
    try:
        if name.endswith("-api"):
            stack.wait_until_ready()
        yield
    finally:
        stack.stop(name)
        stack.start(name)
        if name.endswith("-api"):
            stack.wait_until_ready()


@contextlib.contextmanager
def holds_expiring_in_seconds(stack):
    """Inventory's holds last 2 s and its sweeper releases them every 0.5 s, for the block."""
    with restarted(stack, "inventory-api", hold_ttl_seconds=2), \
            restarted(stack, "inventory-sweeper", sweep_interval_seconds=0.5):
        yield


def expired_order(floodgate, admin_token, quantity: int) -> tuple[dict, str, dict]:
    """A new drop of `quantity` units, a buyer's token, and their order once it expired unpaid
    (holds expiring in seconds)."""
    drop = floodgate.create_drop(admin_token, quantity=quantity)
    _, token = floodgate.register()
    order = floodgate.place_order(token, drop["id"]).json()
    floodgate.wait_for_status(token, order["id"], "expired", timeout=30)
    return drop, token, order


def test_a_refused_key_is_answered_alike_until_its_retention_and_afresh_after(floodgate, stack, admin_token):
    """A lineless drop's crowd leaves one refused key per buyer (sold out), which was kept for
    ever. Past its retention the consumer's housekeeping deletes it (here asked at once, with a
    retention of 0), and a request with the key is then handled as a new one."""
    drop = floodgate.create_drop(admin_token, quantity=1, hold_ttl_seconds=3)
    _, first = floodgate.register()
    held = floodgate.place_order(first, drop["id"])
    assert held.status_code == 201, held.text
    _, late = floodgate.register()
    key = str(uuid.uuid4())
    refused = definitive(floodgate, late, drop["id"], key)
    assert refused.status_code == 409 and refused.json()["type"].endswith("/sold-out"), refused.text
    floodgate.wait_for_status(first, held.json()["id"], "expired", timeout=30)  # the unit is back

    again = definitive(floodgate, late, drop["id"], key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (409, "true")  # within its retention
    engine = sa.create_engine(stack.infra.database_url("checkout"), poolclass=sa.pool.NullPool)
    try:
        purged = purge_refused_keys(functools.partial(CheckoutUnitOfWork, orm.sessionmaker(engine), "checkout"),
                                    retention_seconds=0, batch_size=10_000)
    finally:
        engine.dispose()
    assert purged >= 1
    afresh = definitive(floodgate, late, drop["id"], key)
    assert afresh.status_code == 201 and "Idempotent-Replayed" not in afresh.headers, afresh.text


def definitive(floodgate, token, drop_id, key, address=None):
    """Place an order, retrying while checkout sheds load, as a well-behaved client does."""
    for _ in range(50):
        answer = floodgate.place_order(token, drop_id, key=key, address=address)
        if answer.status_code != 429:
            return answer
        time.sleep(float(answer.headers["Retry-After"]) / 10)
    return answer


def test_webhooks_replayed_and_out_of_order_confirm_once_and_sell_once(floodgate, stack, admin_token, buyer):
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=5)
    order = floodgate.place_order(token, drop["id"]).json()
    with provider_behaviour(floodgate, duplicates=4, reorder=True):
        paid = floodgate.pay(order).json()
    assert paid["webhook_statuses"] == [200] * 10  # 2 events x 5 deliveries, completion first
    confirmed = floodgate.wait_for_status(token, order["id"], "confirmed")
    assert [s["status"] for s in confirmed["history"]].count("confirmed") == 1
    assert confirmed["payment"]["status"] == "captured"
    poll(lambda: scalar(stack, "inventory", "SELECT status FROM reservations WHERE order_id = :id",
                        id=order["id"]) == "sold", what="one sale")
    assert floodgate.get_drop(drop["id"])["remaining"] == 4
    assert scalar(stack, "checkout", "SELECT count(*) FROM outbox WHERE event_type = 'order.confirmed' "
                                     "AND envelope->'data'->>'order_id' = :id", id=order["id"]) == 1


def test_a_restarted_checkout_gets_the_next_webhooks_at_the_first_attempt(floodgate, stack, admin_token, buyer):
    """The provider keeps its connection to checkout open between webhooks. A checkout restarted
    meanwhile (a deploy, a crash) has closed it: the next payment's webhooks go over a new one at
    once, not after a failed delivery and the provider's back-off."""
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=2, per_buyer_limit=2)
    first = floodgate.place_order(token, drop["id"]).json()
    assert floodgate.pay(first).json()["webhook_statuses"] == [200, 200]
    stack.stop("checkout-api")
    stack.start("checkout-api")
    stack.wait_until_ready()
    log = stack.log_path("payments")
    failures_before = log.read_text().count("webhook delivery failed")
    second = floodgate.place_order(token, drop["id"]).json()
    assert floodgate.pay(second).json()["webhook_statuses"] == [200, 200]
    assert log.read_text().count("webhook delivery failed") == failures_before
    for order in (first, second):
        floodgate.wait_for_status(token, order["id"], "confirmed")


def test_a_declined_payment_fails_the_order_and_frees_the_unit(floodgate, admin_token, buyer):
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=1)
    order = floodgate.place_order(token, drop["id"]).json()
    with provider_behaviour(floodgate, outcome="decline"):
        floodgate.pay(order)
    failed = floodgate.wait_for_status(token, order["id"], "payment_failed")
    assert failed["payment"]["status"] == "declined"
    poll(lambda: floodgate.get_drop(drop["id"])["remaining"] == 1, what="the unit back on sale")
    # the buyer is told: not left to wonder whether they have an order
    [told] = poll(lambda: floodgate.mails_about(order["id"], "declined"), what="the email saying the payment was declined")
    assert "Nothing was charged" in told["text"]


def test_the_per_buyer_limit_holds_under_50_concurrent_orders(floodgate, stack, admin_token, buyer):
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=100, per_buyer_limit=2)
    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(lambda i: definitive(floodgate, token, drop["id"], f"limit-{i}"), range(50)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) == 2, codes
    assert all(a.json()["type"].endswith("/limit-exceeded") for a in answers if a.status_code == 409)
    assert set(codes) == {201, 409}
    assert floodgate.get_drop(drop["id"])["remaining"] == 98


def test_the_per_address_limit_holds_across_buyers_sharing_an_address(floodgate, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=100, per_buyer_limit=1)
    shared_address = dict(CANADIAN_ADDRESS, street_address="1 Reseller Lane")
    buyers = [floodgate.register()[1] for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: definitive(floodgate, t, drop["id"], str(uuid.uuid4()), shared_address), buyers))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201, 201] + [409] * 6, codes
    assert all(a.json()["type"].endswith("/address-limit-exceeded") for a in answers if a.status_code == 409)
    # The refused orders held nothing: only the two accepted units left the drop.
    poll(lambda: floodgate.get_drop(drop["id"])["remaining"] == 98, what="refused holds released")
    respelled = dict(shared_address, street_address="1  RESELLER lane")
    assert definitive(floodgate, floodgate.register()[1], drop["id"], "x", respelled).status_code == 409


def test_late_payments_are_kept_while_stock_lasts_and_refunded_after(floodgate, stack, admin_token):
    with holds_expiring_in_seconds(stack):
        drop = floodgate.create_drop(admin_token, quantity=1)
        _, early = floodgate.register()
        first = floodgate.place_order(early, drop["id"]).json()
        floodgate.wait_for_status(early, first["id"], "expired", timeout=30)
        floodgate.pay(first)
        kept = floodgate.wait_for_status(early, first["id"], "confirmed")
        assert "late payment" in kept["history"][-1]["reason"]

        _, later = floodgate.register()
        other_drop = floodgate.create_drop(admin_token, quantity=1)
        second = floodgate.place_order(later, other_drop["id"]).json()
        floodgate.wait_for_status(later, second["id"], "expired", timeout=30)
        _, rival = floodgate.register()
        rival_order = floodgate.place_order(rival, other_drop["id"])
        assert rival_order.status_code == 201
        floodgate.pay(second)
        refunded = poll(lambda: (lambda o: o if o["payment"]["status"] == "refunded" else None)(
            floodgate.get_order(later, second["id"]).json()), timeout=30, what="the late payment refunded")
        assert refunded["status"] == "expired"
        assert floodgate.get_drop(other_drop["id"])["remaining"] == 0
        at_provider = floodgate.http.get(stack.url("payments") + f"/v1/payments/{second['id']}").json()
        assert at_provider["status"] == "REFUNDED"


def test_with_inventory_down_buyers_get_fast_answers_and_ordering_resumes(floodgate, stack, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=20)
    tokens = [floodgate.register()[1] for _ in range(10)]
    stack.kill("inventory-api")
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            # a buyer's client that gives up after 5 s: a buyer left hanging fails the test
            answers = list(pool.map(lambda token: floodgate.place_order(token, drop["id"], timeout=5), tokens))
        for answer in answers:
            assert answer.status_code in (429, 503), answer.text
            assert answer.headers["Content-Type"] == "application/problem+json"
            assert int(answer.headers["Retry-After"]) >= 1
    finally:
        stack.start("inventory-api")
        stack.wait_until_ready()
    answer = poll(lambda: (lambda a: a if a.status_code == 201 else None)(floodgate.place_order(tokens[0], drop["id"])),
                  timeout=30, what="ordering to resume")
    assert answer.json()["status"] == "awaiting_payment"


def test_no_checkout_transaction_stays_open_while_inventory_holds_an_order(floodgate, stack, admin_token):
    """Behind PgBouncer's transaction pooling an open transaction is a server connection taken: one
    kept across the hold's HTTP call makes every order queue for connections as soon as inventory
    slows, and time out as 503s. Inventory frozen: the order waits out its 2 s timeout with no
    transaction of checkout's open meanwhile."""
    drop = floodgate.create_drop(admin_token, quantity=5)
    _, token = floodgate.register()
    key = str(uuid.uuid4())
    answer, seen = _while_inventory_is_frozen(stack, lambda: floodgate.place_order(token, drop["id"], key=key))
    assert answer.status_code == 503 and answer.json()["type"].endswith("/inventory-unavailable"), answer.text
    assert len(seen) > 10 and max(seen) == 0, f"transactions open across the hold, sampled: {sorted(set(seen))}"
    # the buyer's retry (same key) gets the order, with the hold the frozen inventory made late or a new one
    assert poll(lambda: floodgate.place_order(token, drop["id"], key=key).status_code == 201, timeout=10,
                what="the retry's order once inventory answers again")
    assert floodgate.get_drop(drop["id"])["remaining"] == 4


def test_no_checkout_transaction_stays_open_while_inventory_sells_a_paid_order(floodgate, stack, admin_token):
    """The payment webhook makes the paid hold a sale at inventory: with its transaction (and the
    order's row lock) open across that call, a slow inventory once kept a server connection per
    payment. Inventory's API frozen: the webhook confirms the order and waits out the sale's
    timeout with no transaction of checkout's open. The API is then killed, its sale never made:
    inventory's consumer of order.confirmed makes it."""
    drop = floodgate.create_drop(admin_token, quantity=5)
    _, token = floodgate.register()
    order = floodgate.place_order(token, drop["id"]).json()
    try:
        paid, seen = _while_inventory_is_frozen(stack, lambda: floodgate.pay(order), then_killed=True)
        assert paid.status_code == 200 and paid.json()["webhook_status"] == 200, paid.text
        assert len(seen) > 10 and max(seen) == 0, f"transactions open across the sale, sampled: {sorted(set(seen))}"
        assert floodgate.get_order(token, order["id"]).json()["status"] == "confirmed"
        poll(lambda: scalar(stack, "inventory", f"SELECT status FROM reservations WHERE order_id = '{order['id']}'")
             == "sold", timeout=30, what="order.confirmed to sell the paid unit while inventory's API is down")
    finally:
        stack.start("inventory-api")
        stack.wait_until_ready()
    assert floodgate.get_drop(drop["id"])["remaining"] == 4


def test_no_checkout_transaction_stays_open_while_inventory_renews_a_late_payment(floodgate, stack, admin_token):
    """A payment after the hold ran out asks inventory to hold the units again, and what it
    answers decides the order: that call once ran inside the webhook's transaction. Inventory's
    API frozen: the webhook waits out the renewal's timeout with no transaction of checkout's
    open and answers 503, changing nothing; the provider's next delivery keeps the order."""
    with holds_expiring_in_seconds(stack):
        drop, token, order = expired_order(floodgate, admin_token, quantity=5)
        deliver = _signed_capture(floodgate, stack, order)
        answer, seen = _while_inventory_is_frozen(stack, deliver)
        assert answer.status_code == 503 and answer.json()["type"].endswith("/inventory-unavailable"), answer.text
        assert int(answer.headers["Retry-After"]) >= 1
        assert len(seen) > 10 and max(seen) == 0, f"transactions open across the renewal, sampled: {sorted(set(seen))}"
        unchanged = floodgate.get_order(token, order["id"]).json()
        assert (unchanged["status"], unchanged["payment"]["capture_id"]) == ("expired", None)
        # the provider's next delivery of the same event, once inventory answers again
        kept = poll(lambda: (lambda a: a.json() if a.status_code == 200 else None)(deliver()), timeout=30,
                    what="the late payment applied once inventory answers")
        assert kept["result"] == "late-confirmed"
        confirmed = floodgate.wait_for_status(token, order["id"], "confirmed")
        assert "late payment" in confirmed["history"][-1]["reason"]
        poll(lambda: scalar(stack, "inventory", f"SELECT status FROM reservations WHERE order_id = '{order['id']}'")
             == "sold", timeout=30, what="the late payment's unit sold")
    assert floodgate.get_drop(drop["id"])["remaining"] == 4


def test_a_late_payment_made_while_inventory_is_down_is_kept_once_it_is_back(floodgate, stack, admin_token):
    """A payment after the hold ran out needs inventory to hold the units again. With inventory's
    API down, the rush's failed orders open checkout's circuit breaker, and checkout answers the
    provider's capture 503: it must still be applied once inventory is back, from the provider's
    later deliveries (the simulator keeps redelivering, as PayPal does), never left captured at
    the provider with the order expired and no refund."""
    with holds_expiring_in_seconds(stack):
        drop, token, order = expired_order(floodgate, admin_token, quantity=3)
        _, crowd = floodgate.register()
        with stopped(stack, "inventory-api"):
            refused = [floodgate.place_order(crowd, drop["id"]).status_code for _ in range(8)]
            assert set(refused) == {503}, refused
            paid = floodgate.pay(order).json()
            assert paid["webhook_statuses"] == [200, None], paid  # approved noted; the capture not applied yet
        stack.wait_until_ready()
        kept = floodgate.wait_for_status(token, order["id"], "confirmed", timeout=60)
        assert "late payment" in kept["history"][-1]["reason"]
        assert kept["payment"]["capture_id"] == paid["capture_id"]


def _signed_capture(floodgate, stack, order: dict):
    """A function that delivers the provider's capture of `order` (one event, the same each time)
    to checkout's webhook, signed as the provider signs it, and returns checkout's answer."""
    from services.checkout.payments import SIGNATURE_HEADER, sign
    from shared.config import DEV_WEBHOOK_SECRET

    payload = json.dumps({"id": f"WH-{uuid.uuid4()}", "event_type": "PAYMENT.CAPTURE.COMPLETED",
                          "resource": {"id": f"CAP-{uuid.uuid4().hex[:12]}", "order_id": order["id"],
                                       "amount": order["total"]["amount"], "currency": order["total"]["currency"]}})
    return lambda: floodgate.http.post(
        stack.url("checkout") + "/payments/webhook", data=payload,
        headers={"Content-Type": "application/json",
                 SIGNATURE_HEADER: sign(DEV_WEBHOOK_SECRET, payload.encode(), int(time.time()))})


def _one_unit_paid_for(floodgate, admin_token) -> tuple[dict, dict, tuple[str, str], tuple[str, str]]:
    """A drop of one unit, the order a first buyer paid for it, that buyer and a second one
    (email and token each), whom the drop turns away."""
    drop = floodgate.create_drop(admin_token, quantity=1)
    first, second = floodgate.register(), floodgate.register()
    order = floodgate.place_order(first[1], drop["id"]).json()
    floodgate.pay(order)
    floodgate.wait_for_status(first[1], order["id"], "confirmed")
    assert floodgate.place_order(second[1], drop["id"]).status_code == 409
    return drop, order, first, second


def test_a_cancelled_unit_goes_to_the_next_buyer_and_both_get_the_right_email(floodgate, stack, admin_token):
    drop, mine, (first_email, first), (second_email, second) = _one_unit_paid_for(floodgate, admin_token)

    cancel = floodgate.http.post(stack.url("checkout") + f"/orders/{mine['id']}/cancel",
                                 headers={"Authorization": f"Bearer {first}"})
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    poll(lambda: floodgate.get_drop(drop["id"])["remaining"] == 1, what="the unit back on sale")
    theirs = floodgate.place_order(second, drop["id"])
    assert theirs.status_code == 201
    floodgate.pay(theirs.json())
    floodgate.wait_for_status(second, theirs.json()["id"], "confirmed")
    poll(lambda: floodgate.get_order(first, mine["id"]).json()["payment"]["status"] == "refunded",
         what="the refund")

    poll(lambda: floodgate.mails_about(mine["id"], "cancel"), what="the cancellation email")
    poll(lambda: floodgate.confirmations_of(theirs.json()["id"]), what="the second buyer's confirmation")
    assert all(m["to"] == [first_email] for m in floodgate.mails_about(mine["id"]))
    assert all(m["to"] == [second_email] for m in floodgate.mails_about(theirs.json()["id"]))


def test_a_payment_given_back_at_the_provider_cancels_the_order_and_puts_its_unit_back_on_sale(
        floodgate, stack, admin_token):
    """A chargeback the buyer won (or the merchant's refund in the provider's dashboard) left the
    order confirmed, to be shipped with the money gone, and its unit sold."""
    drop, mine, (first_email, first), (_, second) = _one_unit_paid_for(floodgate, admin_token)

    with provider_behaviour(floodgate, duplicates=1):  # sent twice, as PayPal may
        reversed_ = floodgate.give_back_payment(mine, "reverse")
    assert reversed_.status_code == 201 and reversed_.json()["webhook_statuses"] == [200, 200]

    order = floodgate.get_order(first, mine["id"]).json()
    assert order["status"] == "cancelled"
    assert order["history"][-1]["reason"] == "payment reversed at the provider"
    assert (order["payment"]["status"], order["payment"]["refund_id"]) == ("refunded", reversed_.json()["refund_id"])
    poll(lambda: floodgate.get_drop(drop["id"])["remaining"] == 1, what="the unit back on sale")
    assert floodgate.place_order(second, drop["id"]).status_code == 201
    [mail] = poll(lambda: floodgate.mails_about(mine["id"], "cancel"), what="the cancellation email")
    assert mail["to"] == [first_email] and "reversed at the payment provider" in mail["text"]
    # cancelled once, and nothing refunded: the money is back already
    for event_type, count in (("order.cancelled", 1), ("payment.refund_requested", 0)):
        assert scalar(stack, "checkout", "SELECT count(*) FROM outbox WHERE event_type = :type "
                                         "AND envelope->'data'->>'order_id' = :id", type=event_type, id=mine["id"]) == count


def test_an_order_for_more_units_than_are_left_is_told_how_many_it_may_have(floodgate, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=3, per_buyer_limit=2)
    (_, first), (_, second) = floodgate.register(), floodgate.register()
    assert floodgate.place_order(first, drop["id"], quantity=2).status_code == 201
    too_many = floodgate.place_order(second, drop["id"], quantity=2)
    assert too_many.status_code == 409 and too_many.json()["type"].endswith("/not-enough-stock"), too_many.text
    assert too_many.json()["remaining"] == 1 and "order 1 or fewer" in too_many.json()["detail"]
    assert floodgate.place_order(second, drop["id"], quantity=1).status_code == 201


def test_shipping_is_for_admins_and_ends_cancellation(floodgate, stack, admin_token, buyer):
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=2)
    order = floodgate.place_order(token, drop["id"]).json()
    url = stack.url("checkout") + f"/orders/{order['id']}"
    as_buyer, as_admin = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {admin_token}"}
    not_yet = floodgate.http.post(url + "/ship", headers=as_admin)
    assert not_yet.status_code == 409 and not_yet.json()["type"].endswith("/invalid-transition")
    floodgate.pay(order)
    floodgate.wait_for_status(token, order["id"], "confirmed")
    assert floodgate.http.post(url + "/ship", headers=as_buyer).status_code == 403
    shipped = floodgate.http.post(url + "/ship", headers=as_admin)
    assert shipped.status_code == 200 and shipped.json()["status"] == "shipped"
    too_late = floodgate.http.post(url + "/cancel", headers=as_buyer)
    assert too_late.status_code == 409
    assert floodgate.get_order(token, order["id"]).json()["status"] == "shipped"

    # what admins did to buyers' orders is on record, with who did it; what was refused is not
    _, other_buyer = floodgate.register()
    other = floodgate.place_order(other_buyer, drop["id"]).json()
    floodgate.pay(other)
    floodgate.wait_for_status(other_buyer, other["id"], "confirmed")
    assert floodgate.http.post(stack.url("checkout") + f"/orders/{other['id']}/cancel", headers=as_admin).status_code == 200
    actions = floodgate.http.get(stack.url("checkout") + "/admin-actions", params={"drop_id": drop["id"]},
                                 headers=as_admin).json()
    admin_email = jwt.decode(admin_token, options={"verify_signature": False})["email"]
    assert [(a["method"], a["path"], a["outcome"], a["admin"]["email"]) for a in actions] == [
        ("POST", f"/orders/{other['id']}/cancel", {"order_id": other["id"], "status": "cancelled", "was": "confirmed"},
         admin_email),
        ("POST", f"/orders/{order['id']}/ship", {"order_id": order["id"], "status": "shipped"}, admin_email),
    ]


def test_a_claim_left_by_a_dead_worker_is_taken_over_by_the_retry(floodgate, stack, admin_token, buyer):
    """A worker killed mid-request leaves its Idempotency-Key claimed and unanswered; the buyer's
    retry, once the claim is old, finishes the same order instead of hearing "in progress" forever."""
    import sqlalchemy as sa

    from devtools.client import home_of
    from services.checkout.handlers import PlaceOrder
    from shared.addresses import normalise

    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=3)
    key = str(uuid.uuid4())
    address = home_of(token)
    abandoned = PlaceOrder(jwt.decode(token, options={"verify_signature": False})["sub"], "", key,
                           drop["id"], 1, normalise(address))
    engine = sa.create_engine(stack.infra.database_url("checkout"), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO idempotency_keys (buyer_id, key, fingerprint, created_at) "
                             "VALUES (:buyer, :key, :fingerprint, now() - interval '1 minute')"),
                     {"buyer": abandoned.buyer_id, "key": key, "fingerprint": abandoned.fingerprint})
    engine.dispose()

    retry = floodgate.place_order(token, drop["id"], key=key, address=address)
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] == str(abandoned.order_id)
    assert floodgate.place_order(token, drop["id"], key=key, address=address).json() == retry.json()
    assert floodgate.get_drop(drop["id"])["remaining"] == 2


def test_an_order_paid_in_time_keeps_its_unit_while_inventory_consumer_is_down(floodgate, stack, admin_token, buyer):
    """The sale is made as the payment is confirmed, not only when `order.confirmed` is consumed,
    so the sweeper cannot give a paid unit to someone else while inventory's consumer lags."""
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=2)
    with stopped(stack, "inventory-consumer"):
        order = floodgate.place_order(token, drop["id"]).json()
        floodgate.pay(order)
        floodgate.wait_for_status(token, order["id"], "confirmed")
        # sold with nobody consuming order.confirmed: the sweeper, which releases holds, cannot touch it
        assert scalar(stack, "inventory", "SELECT status FROM reservations WHERE order_id = :id", id=order["id"]) == "sold"
    assert floodgate.get_drop(drop["id"])["remaining"] == 1


def test_a_refund_parked_by_a_provider_outage_is_listed_and_replayed_by_an_admin(floodgate, stack, admin_token, buyer):
    """A refund that failed every attempt is money owed to a buyer: it is parked in checkout's
    dead-letter queue, where the admin API and the command both find it, and a replay pays it."""
    import json
    import subprocess
    import sys

    from devtools.stack import ROOT

    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=1)
    order = floodgate.place_order(token, drop["id"]).json()
    floodgate.pay(order)
    floodgate.wait_for_status(token, order["id"], "confirmed")
    admin = {"Authorization": f"Bearer {admin_token}"}
    dead_letters = stack.url("notifications") + "/dead-letters"

    def parked_refund():
        letters = floodgate.http.get(dead_letters, headers=admin, params={"service": "checkout"}).json()
        return next((letter for letter in letters
                     if letter["type"] == "payment.refund_requested" and order["id"] in letter["body"]), None)

    with provider_behaviour(floodgate, refunds="fail"):
        assert floodgate.http.post(f"{stack.url('checkout')}/orders/{order['id']}/cancel",
                                   headers={"Authorization": f"Bearer {token}"}).status_code == 200
        letter = poll(parked_refund, timeout=30, what="the failed refund to be parked")
    assert letter["service"] == "checkout" and letter["attempts"] >= 1
    everywhere = floodgate.http.get(dead_letters, headers=admin).json()
    assert letter["message_id"] in {parked["message_id"] for parked in everywhere if parked["service"] == "checkout"}
    assert floodgate.http.get(dead_letters, headers=admin, params={"service": "nowhere"}).status_code == 422
    listed = subprocess.run([sys.executable, "-m", "shared.messaging.dead_letters", "list", "--service", "checkout"],
                            cwd=ROOT, env=stack.env(), capture_output=True, text=True, check=True).stdout
    assert letter["message_id"] in {json.loads(line)["message_id"] for line in listed.splitlines()}
    assert floodgate.get_order(token, order["id"]).json()["payment"]["status"] != "refunded"

    replayed = floodgate.http.post(dead_letters + "/replay", headers=admin,
                                   json={"service": "checkout", "message_id": letter["message_id"]})
    assert replayed.json() == {"replayed": 1}, replayed.text
    refunded = poll(lambda: (lambda o: o if o["payment"]["status"] == "refunded" else None)(
        floodgate.get_order(token, order["id"]).json()), timeout=30, what="the replayed refund")
    assert refunded["payment"]["refund_id"]
    assert parked_refund() is None
    # the buyer hears of the refund once: the parked attempts sent nothing
    [email] = poll(lambda: floodgate.mails_about(order["id"], "refunded"), what="the refund email")
    assert email["event"] == "payment.refunded"
    poll(lambda: scalar(stack, "notifications", "SELECT count(*) FROM deliveries WHERE event_type = 'payment.refunded' "
                        "AND status = 'sent' AND event_id::text = ANY(:ids)",
                        ids=_refunded_event_ids(stack, order["id"])) == 1,
         what="notifications to have logged the refund email")
    assert len(floodgate.mails_about(order["id"], "refunded")) == 1


def test_a_refund_for_an_order_nobody_knows_is_parked_at_once(floodgate, stack, admin_token):
    """Retrying cannot make an unknown order appear: the event goes to checkout.dead on its first
    attempt, where an admin reads why, instead of going through every retry tier."""
    from shared.messaging.envelope import Envelope
    from tests.integration.events import publish

    event = Envelope(type="payment.refund_requested", source="tests", data={
        "order_id": str(uuid.uuid4()), "capture_id": "CAP-unknown", "amount": 100, "currency": "CAD", "reason": "test"})
    publish(stack, [event])
    admin = {"Authorization": f"Bearer {admin_token}"}

    def parked():
        letters = floodgate.http.get(stack.url("notifications") + "/dead-letters", headers=admin,
                                     params={"service": "checkout"}).json()
        return [letter for letter in letters if letter["message_id"] == event.id]

    [letter] = poll(parked, timeout=30, what="the refund for an unknown order to be parked")
    assert letter["attempts"] == 1 and "unknown order" in letter["last_error"]


def _refunded_event_ids(stack, order_id: str) -> list[str]:
    return scalar(stack, "checkout", "SELECT coalesce(array_agg(event_id::text), '{}') FROM outbox "
                  "WHERE event_type = 'payment.refunded' AND envelope->'data'->>'order_id' = :id", id=order_id)


def _handled_by_inventory(stack, message_ids) -> bool:
    return scalar(stack, "inventory", "SELECT count(*) FROM inbox WHERE message_id = ANY(:ids)",
                  ids=[m for _, m in message_ids]) == len(message_ids)


def test_a_confirmation_delivered_after_its_cancellation_takes_no_unit(floodgate, stack, admin_token, buyer):
    """Inventory acts only on an order's newest state: a retried `order.confirmed` that reaches it
    after the order's `order.cancelled` is stale, so the cancelled unit stays on sale."""
    from tests.integration.events import redeliver_reversed

    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=1)
    with stopped(stack, "inventory-consumer"):
        order = floodgate.place_order(token, drop["id"]).json()
        floodgate.pay(order)
        floodgate.wait_for_status(token, order["id"], "confirmed")
        cancel = floodgate.http.post(stack.url("checkout") + f"/orders/{order['id']}/cancel",
                                     headers={"Authorization": f"Bearer {token}"})
        assert cancel.status_code == 200
        delivered = redeliver_reversed(stack, "inventory.events", order["id"], 2)
        assert [event_type for event_type, _ in delivered] == ["order.cancelled", "order.confirmed"]
    poll(lambda: _handled_by_inventory(stack, delivered), what="both events handled")
    assert scalar(stack, "inventory", "SELECT status FROM reservations WHERE order_id = :id", id=order["id"]) == "released"
    assert floodgate.get_drop(drop["id"])["remaining"] == 1


def test_an_expiry_delivered_after_a_late_payment_kept_the_unit_leaves_it_sold(floodgate, stack, admin_token, buyer):
    """A payment after the hold ran out holds the unit again and confirms the order; the order's
    earlier `order.expired`, delivered after that confirmation, is stale and must not give the
    paid unit back to the drop (a refund for the buyer, an oversell risk for the shop)."""
    from tests.integration.events import redeliver_reversed

    _, token = buyer
    with holds_expiring_in_seconds(stack):
        drop = floodgate.create_drop(admin_token, quantity=1)
        with stopped(stack, "inventory-consumer"):
            order = floodgate.place_order(token, drop["id"]).json()
            floodgate.wait_for_status(token, order["id"], "expired", timeout=30)
            floodgate.pay(order)
            kept = floodgate.wait_for_status(token, order["id"], "confirmed")
            assert "late payment" in kept["history"][-1]["reason"]
            delivered = redeliver_reversed(stack, "inventory.events", order["id"], 2)
            assert [event_type for event_type, _ in delivered] == ["order.confirmed", "order.expired"]
        poll(lambda: _handled_by_inventory(stack, delivered), what="both events handled")
    assert scalar(stack, "inventory", "SELECT status FROM reservations WHERE order_id = :id", id=order["id"]) == "sold"
    assert floodgate.get_drop(drop["id"])["remaining"] == 0
    assert floodgate.get_order(token, order["id"]).json()["status"] == "confirmed"

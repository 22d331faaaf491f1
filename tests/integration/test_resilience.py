"""Failures on the way: the email consumer down, the relay crashing, the broker restarting, poison."""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from devtools.client import CANADIAN_ADDRESS, poll
from devtools.stack import SERVICES
from shared.messaging import connection as amqp
from shared.messaging import topology
from shared.messaging.envelope import Envelope
from tests.integration.database import scalar
from tests.integration.events import publish


def place_orders(floodgate, drop_id: str, count: int) -> list[tuple[str, dict]]:
    orders = []
    for _ in range(count):
        _, token = floodgate.register()
        placed = floodgate.place_order(token, drop_id)
        assert placed.status_code == 201, placed.text
        orders.append((token, placed.json()))
    return orders


def pay_each(floodgate, orders) -> None:
    """Each buyer pays, with a client that waits 10 s for the answer (the approval waits for
    the provider's webhook to checkout): a webhook waiting on anything slow fails the test."""
    for _, order in orders:
        answer = floodgate.pay(order, timeout=10)
        assert answer.status_code == 200 and answer.json()["webhook_status"] == 200, answer.text


def queue_depth(stack, queue: str) -> int:
    connection = amqp.connect(stack.infra.amqp_url, "tests")
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def settled(stack) -> bool:
    """Every committed event published and every notification handled."""
    return (
        scalar(stack, "checkout", "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        and not any(queue_depth(stack, queue) for queue in topology.waiting_queues("notifications"))
    )


def test_orders_confirm_while_the_email_consumer_is_dead_and_mail_follows(floodgate, stack, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=40)

    stack.kill("notifications-consumer")
    orders = place_orders(floodgate, drop["id"], 20)
    pay_each(floodgate, orders)  # the webhook answers without the email consumer
    for token, order in orders:
        floodgate.wait_for_status(token, order["id"], "confirmed")
    assert all(not floodgate.confirmations_of(order["id"]) for _, order in orders)

    stack.start("notifications-consumer")
    poll(lambda: all(floodgate.confirmations_of(order["id"]) for _, order in orders), timeout=60,
         what="20 emails after the consumer restarted")
    poll(lambda: settled(stack), what="queues to drain")
    assert [len(floodgate.confirmations_of(order["id"])) for _, order in orders] == [1] * 20


def test_relay_crash_after_publish_and_a_broker_restart_lose_and_double_nothing(floodgate, stack, admin_token, infra):
    drop = floodgate.create_drop(admin_token, quantity=40)
    stack.stop("checkout-relay")
    relay = stack.start("checkout-relay", {"FAULT_RELAY_EXIT_AFTER_PUBLISH": "1"})
    crashed = place_orders(floodgate, drop["id"], 5)
    pay_each(floodgate, crashed)
    poll(lambda: relay.poll() is not None, what="the relay to crash after publishing")
    assert relay.returncode == 3
    stack.start("checkout-relay")

    during_restart = place_orders(floodgate, drop["id"], 10)
    pay_each(floodgate, during_restart[:5])
    infra.restart_broker()
    pay_each(floodgate, during_restart[5:])

    everything = crashed + during_restart
    for token, order in everything:
        floodgate.wait_for_status(token, order["id"], "confirmed", timeout=60)
    poll(lambda: all(floodgate.confirmations_of(order["id"]) for _, order in everything), timeout=90,
         what="every confirmation email")
    poll(lambda: settled(stack), timeout=30, what="queues to drain")
    assert [len(floodgate.confirmations_of(order["id"])) for _, order in everything] == [1] * 15


def test_checkout_answers_201_and_every_api_stays_ready_while_the_broker_restarts(floodgate, stack, admin_token, infra):
    """Buyers keep ordering before, during and after a broker restart: every answer is a 201,
    every API's /readyz a 200, and every order's "pay for" email arrives once."""
    drop = floodgate.create_drop(admin_token, quantity=5000, per_buyer_limit=5000)
    tokens = [floodgate.register()[1] for _ in range(3)]
    phase, done = ["before"], threading.Event()
    street_numbers = itertools.count(100)
    orders: list[tuple[str, str]] = []  # (phase, order id)
    placed: list[tuple[str, int]] = []  # (phase, status) of every POST /orders
    ready: list[tuple[str, str, int]] = []  # (phase, service, status) of every GET /readyz

    def keep_ordering(token: str) -> None:
        while not done.is_set():
            # a new address each time: the per-address limit is not what this test is about
            address = dict(CANADIAN_ADDRESS, street_address=f"{next(street_numbers)} Sussex Drive")
            answer = floodgate.place_order(token, drop["id"], address=address)
            placed.append((phase[0], answer.status_code))
            if answer.status_code == 201:
                orders.append((phase[0], answer.json()["id"]))

    def keep_probing() -> None:
        while not done.is_set():
            for service in SERVICES:
                ready.append((phase[0], service, floodgate.http.get(f"{stack.url(service)}/readyz").status_code))
            done.wait(0.1)

    with ThreadPoolExecutor(len(tokens) + 1) as pool:
        running = [pool.submit(keep_ordering, token) for token in tokens] + [pool.submit(keep_probing)]
        try:
            poll(lambda: len(orders) >= 5, what="orders before the restart")
            witness = amqp.connect(stack.infra.amqp_url, "restart-witness")
            phase[0] = "during"
            infra.restart_broker()
            phase[0] = "after"
            with pytest.raises(amqp.RECOVERABLE):  # the broker did restart: its old connections are gone
                witness.process_data_events(time_limit=0)
            placed_during = len(orders)
            poll(lambda: len(orders) >= placed_during + 5, what="orders after the restart")
        finally:
            done.set()
            for future in running:
                future.result()

    assert {status for _, status in placed} == {201}
    assert {status for _, _, status in ready} == {200}
    assert sum(when == "during" for when, _ in placed) >= 1
    assert {service for when, service, _ in ready if when == "during"} == set(SERVICES)

    ids = {order_id for _, order_id in orders}

    def asked_to_pay() -> Counter:
        subjects = [mail.get("subject") or "" for mail in floodgate.mails()]
        return Counter(order_id for order_id in (s.split()[3] for s in subjects if s.startswith("Pay for order "))
                       if order_id in ids)

    poll(lambda: len(asked_to_pay()) == len(ids), timeout=90, what=f"the {len(ids)} orders' emails")
    poll(lambda: settled(stack), timeout=30, what="queues to drain")
    assert set(asked_to_pay().values()) == {1}


def test_a_poison_message_is_parked_after_its_attempts_while_others_flow(floodgate, stack, admin_token):
    poison = Envelope(type="order.confirmed", data={"order_id": str(uuid.uuid4())}, source="tests")
    publish(stack, [poison])

    drop = floodgate.create_drop(admin_token, quantity=5)
    [(token, order)] = place_orders(floodgate, drop["id"], 1)
    pay_each(floodgate, [(token, order)])
    poll(lambda: floodgate.confirmations_of(order["id"]), what="the healthy order's email")

    admin = {"Authorization": f"Bearer {admin_token}"}
    letters_url = stack.url("notifications") + "/dead-letters"

    def parked():
        letters = floodgate.http.get(letters_url, headers=admin, params={"service": "notifications"}).json()
        items = letters if isinstance(letters, list) else letters.get("dead_letters", letters.get("items", []))
        return [letter for letter in items if letter["message_id"] == poison.id]

    [letter] = poll(parked, timeout=30, what="the poison message in the dead-letter queue")
    assert letter["attempts"] == 3


def test_a_database_restart_mid_rush_costs_no_buyer_and_no_unit(floodgate, stack, admin_token, infra):
    """PostgreSQL restarts while 20 buyers order 10 units: every answer is an order, "sold out" or
    a retryable 503/429 (never a 500), each buyer's retry with the same key ends with a definitive
    answer, and every held unit has its order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    units, crowd = 10, 20
    drop = floodgate.create_drop(admin_token, quantity=units)
    tokens = [floodgate.register()[1] for _ in range(crowd)]
    started = threading.Barrier(crowd + 1)
    answers: list[tuple[int, str | None]] = []  # (status, Retry-After)
    cut: list[str] = []  # requests that got no answer at all (a connection reset, a worker gone)

    def buyer(token: str) -> int:
        key, deadline = str(uuid.uuid4()), time.monotonic() + 90
        started.wait()
        while time.monotonic() < deadline:
            try:
                answer = floodgate.place_order(token, drop["id"], key=key)
            except requests.RequestException as error:
                cut.append(repr(error))
                continue
            answers.append((answer.status_code, answer.headers.get("Retry-After")))
            if answer.status_code not in (429, 503):
                return answer.status_code
            time.sleep(min(2.0, float(answer.headers["Retry-After"])))  # as the answer asks
        return 0

    witness = sa.create_engine(f"{infra.postgres_url}/postgres", poolclass=sa.pool.NullPool).connect()
    witness.execute(sa.text("SELECT 1"))
    with ThreadPoolExecutor(crowd) as pool:
        finals = [pool.submit(buyer, token) for token in tokens]
        started.wait()
        infra.restart_database()
        finals = [future.result() for future in finals]

    with pytest.raises(sa.exc.DBAPIError):  # the database did restart: its old connections are gone
        witness.execute(sa.text("SELECT 1"))
    assert cut == []
    assert [status for status, _ in answers if status >= 500 and status != 503] == []
    assert all(retry_after for status, retry_after in answers if status in (429, 503))
    assert sorted(finals) == [201] * units + [409] * (crowd - units)
    held = scalar(stack, "inventory", "SELECT count(*) FROM reservations WHERE drop_id = :d AND status = 'held'",
                  d=drop["id"])
    ordered = scalar(stack, "checkout", "SELECT count(*) FROM orders WHERE drop_id = :d", d=drop["id"])
    assert held == ordered == units

    def remaining():
        # a worker that has not used its pool since the restart answers its first request 503
        answer = floodgate.http.get(f"{stack.url('inventory')}/drops/{drop['id']}")
        assert answer.status_code in (200, 503), answer.text
        return answer.status_code == 200 and {"remaining": answer.json()["remaining"]}

    assert poll(remaining, timeout=30, what="the drop to answer")["remaining"] == 0
    stack.wait_until_ready()

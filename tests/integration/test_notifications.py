"""Email that may be slow, down or broken without costing a single order.

The real SMTP server of the stack (aiosmtpd) is told through its control API to refuse
connections, stall, or answer 550; every test puts it back to normal in a `finally` block.

For this module the notifications consumer runs with a 3 s AMQP heartbeat (so a 10 s SMTP stall
would cost it the broker connection if heartbeats stopped while it waits), a 30 s SMTP timeout (a
message's own reply waits 60 s) and retries that outlast an outage of a minute (the stack's
default for tests parks after 3 attempts).
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devtools.client import CANADIAN_ADDRESS, poll
from services.notifications.config import Settings as NotificationSettings
from shared.messaging import topology
from shared.messaging import connection as amqp
from shared.messaging.deferral import OthersShare
from shared.messaging.envelope import Envelope
from tests.integration.database import scalar
from tests.integration.events import publish

HEARTBEAT_SECONDS = 3
PATIENT_CONSUMER = {"RETRY_DELAYS_MS": "300,1000", "MAX_ATTEMPTS": "100", "SMTP_TIMEOUT_SECONDS": "30",
                    "AMQP_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)}
ORDER = {
    "buyer_id": "b-42",
    "drop_id": "5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40",
    "status": "confirmed",
    "items": [{"sku": "OPO-64-BLK", "name": "OnePlus One 64GB", "quantity": 1, "unit_price": {"amount": 29900, "currency": "CAD"}}],
    "total": {"amount": 29900, "currency": "CAD"},
    "shipping_address": {
        "name": "Alex Tremblay", "street_address": "24 Sussex Drive", "city": "Ottawa",
        "postal_code": "K1A 0B1", "country_area": "ON", "country_code": "CA",
    },
}


def start_consumer(stack, name: str, **env) -> subprocess.Popen:
    """A notifications consumer process, registered with the stack so stop/kill work on it."""
    return stack.start("notifications-consumer", {**PATIENT_CONSUMER, **env}, as_name=name)


@pytest.fixture(scope="module", autouse=True)
def patient_consumer(stack):
    stack.stop("notifications-consumer")
    start_consumer(stack, "notifications-consumer")
    poll(lambda: consumers_on_work_queue(stack) == 1, what="the consumer to subscribe")
    yield
    set_fault(stack, "none")
    stack.stop("notifications-consumer")
    stack.start("notifications-consumer")


# --- the SMTP server's control API -------------------------------------------------------------

def set_fault(stack, mode: str, seconds: float = 0, recipients: tuple[str, ...] = ()) -> None:
    answer = requests.post(f"http://127.0.0.1:{stack.ports['smtp-control']}/faults",
                           json={"mode": mode, "seconds": seconds, "recipients": list(recipients)}, timeout=5)
    assert answer.status_code == 200, answer.text


def smtp_fault(stack) -> dict:
    return requests.get(f"http://127.0.0.1:{stack.ports['smtp-control']}/faults", timeout=5).json()


def mails_by_message_id(floodgate, message_ids: set[str]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for mail in floodgate.mails():
        if mail["message_id"] in message_ids:
            found.setdefault(mail["message_id"], []).append(mail)
    return found


# --- the broker --------------------------------------------------------------------------------

def _work_queue(stack):
    connection = amqp.connect(stack.infra.amqp_url, "tests")
    try:
        return connection.channel().queue_declare(topology.work_queue("notifications"), passive=True).method
    finally:
        connection.close()


def consumers_on_work_queue(stack) -> int:
    return _work_queue(stack).consumer_count


def order_confirmed(recipient: str) -> Envelope:
    order_id = str(uuid.uuid4())
    data = copy.deepcopy(ORDER)
    data.update(order_id=order_id, buyer_email=recipient, status_url=f"http://127.0.0.1:8003/orders/{order_id}",
                confirmed_at="2014-10-27T15:03:00+00:00")
    return Envelope(type="order.confirmed", data=data, source="tests")


def message_id(envelope: Envelope) -> str:
    return f"<{envelope.id}@floodgate>"


HANDLED = ("email sent", "email not sent: this event's was sent before")


def handlings(stack, consumers: tuple[str, ...], message_ids: set[str]) -> dict[str, list[str]]:
    """What the consumers' logs say they did with each delivery of these emails' events: mailed
    it, or found it mailed before (a duplicate leaves the delivery log's row as it was, and the
    broker's queue depth counts no message a consumer holds unacknowledged)."""
    said: dict[str, list[str]] = {}
    for consumer in consumers:
        for entry in stack.log_entries(consumer):
            if entry.get("message") in HANDLED and entry.get("message_id") in message_ids:
                said.setdefault(entry["message_id"], []).append(entry["message"])
    return said


# --- the admin API -----------------------------------------------------------------------------

def admin_get(floodgate, stack, admin_token, path: str, **params):
    return floodgate.http.get(stack.url("notifications") + path, params=params,
                              headers={"Authorization": f"Bearer {admin_token}"})


def deliveries(floodgate, stack, admin_token, **params) -> list[dict]:
    answer = admin_get(floodgate, stack, admin_token, "/notifications", **params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def email_metrics(floodgate, stack) -> dict[str, float]:
    text = floodgate.http.get(stack.url("notifications") + "/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("floodgate_notifications"):
            for sample in family.samples:
                key = sample.name + "".join(f"[{v}]" for v in sample.labels.values())
                values[key] = sample.value
    return values


# --- orders through checkout -------------------------------------------------------------------

def place_and_pay(floodgate, drop_id: str, buyers, timeout: float | None = None) -> list[tuple[str, dict]]:
    """Each buyer orders and pays; `timeout`: seconds each buyer's client waits for an answer."""
    orders = []
    for _, token in buyers:
        # a street of its own: checkout limits the units per shipping address
        address = dict(CANADIAN_ADDRESS, street_address=f"{uuid.uuid4().int % 9000 + 100} Sussex Drive")
        placed = floodgate.place_order(token, drop_id, address=address, timeout=timeout)
        assert placed.status_code == 201, placed.text
        paid = floodgate.pay(placed.json(), timeout=timeout)
        assert paid.status_code == 200 and paid.json()["webhook_status"] == 200, paid.text
        orders.append((token, placed.json()))
    return orders


def order_mails(floodgate, order_ids: set[str]) -> dict[tuple[str, str], int]:
    """How many emails arrived per (order id, event type)."""
    counts: dict[tuple[str, str], int] = {}
    for mail in floodgate.mails():
        for order_id in order_ids:
            if order_id in (mail.get("text") or ""):
                counts[(order_id, mail.get("event"))] = counts.get((order_id, mail.get("event")), 0) + 1
    return counts


def every_confirmation_and_no_late_pay_by(floodgate, stack, admin_token, order_ids: set[str],
                                          timeout: float = 30) -> list[dict]:
    """Wait until every order's emails are settled; assert each confirmation was mailed once and
    each "pay by" email either once, before its confirmation, or never (logged `superseded`: it
    came after the confirmation). The orders' delivery rows."""
    confirmations = {(order_id, "order.confirmed") for order_id in order_ids}
    poll(lambda: set(order_mails(floodgate, order_ids)) >= confirmations, timeout=timeout,
         what="the confirmation emails")
    settled = poll(lambda: (rows := [row for order_id in order_ids
                                     for row in deliveries(floodgate, stack, admin_token, order_id=order_id)])
                   and all(row["status"] in ("sent", "superseded") for row in rows) and rows,
                   what="every delivery logged as sent or superseded")
    mailed = order_mails(floodgate, order_ids)
    assert {key: mailed.get(key) for key in confirmations} == {key: 1 for key in confirmations}
    # the SMTP server's list is in the order the mail arrived (the log's sent_at is stamped
    # before an email waits for its order's other one, so it cannot tell which went first)
    arrived = [(order_id, mail.get("event")) for mail in floodgate.mails()
               for order_id in order_ids if order_id in (mail.get("text") or "")]
    for order_id in order_ids:
        rows = {row["event_type"]: row for row in settled if row["order_id"] == order_id}
        placed = rows["order.placed"]
        if placed["status"] == "sent":
            assert mailed[(order_id, "order.placed")] == 1
            assert arrived.index((order_id, "order.placed")) < arrived.index((order_id, "order.confirmed"))
        else:
            assert placed["status"] == "superseded" and (order_id, "order.placed") not in mailed
    return settled


# --- the must-show behaviours ------------------------------------------------------------------

def test_smtp_down_for_a_whole_drop_costs_no_order_and_every_email_follows_once_it_is_back(floodgate, stack,
                                                                                           admin_token):
    """While no SMTP session can be opened the consumer pauses: the emails wait in the work queue,
    no attempt spent (they once went through the retry tiers, the last an hour apart), and go out
    within a pause (15 s at most) of the server's return."""
    drop = floodgate.create_drop(admin_token, quantity=5)
    buyers = [floodgate.register() for _ in range(5)]
    # read from the delivery log, which a scrape just after a database restart may not reach
    [retries_before] = poll(lambda: [value for key, value in email_metrics(floodgate, stack).items()
                                     if key == "floodgate_notifications_retries_total"],
                            what="the delivery log's count of retries")
    set_fault(stack, "refuse")
    try:
        orders = place_and_pay(floodgate, drop["id"], buyers)
        for token, order in orders:
            floodgate.wait_for_status(token, order["id"], "confirmed")
        order_ids = {order["id"] for _, order in orders}
        work_queue = f"floodgate_notifications_queue_messages[{topology.work_queue('notifications')}]"
        # every event of the five orders waits (some may be in the consumer's hands at a sample)
        poll(lambda: email_metrics(floodgate, stack).get(work_queue, 0) >= 5, timeout=30,
             what="the emails to wait in the work queue")
        assert email_metrics(floodgate, stack)["floodgate_notifications_retries_total"] == retries_before
        assert not order_mails(floodgate, order_ids)
    finally:
        set_fault(stack, "none")

    settled = every_confirmation_and_no_late_pay_by(floodgate, stack, admin_token, order_ids, timeout=30)
    assert [row["attempts"] for row in settled if row["status"] == "sent"] == [1] * sum(
        row["status"] == "sent" for row in settled)
    assert email_metrics(floodgate, stack)["floodgate_notifications_retries_total"] == retries_before


def test_smtp_stalling_10s_per_message_never_holds_an_order_or_a_webhook(floodgate, stack, admin_token):
    drop = floodgate.create_drop(admin_token, quantity=4)
    buyers = [floodgate.register() for _ in range(4)]
    log_path = stack.log_path("notifications-consumer")
    log_offset = log_path.stat().st_size

    set_fault(stack, "stall", seconds=10)
    try:
        # each buyer's client (and so the provider's webhook call, which the approval waits for)
        # gives up after 5 s: an order or a webhook waiting on the 10 s stall would fail here
        orders = place_and_pay(floodgate, drop["id"], buyers, timeout=5)
        poll(lambda: smtp_fault(stack)["stalled"] >= 1, what="the consumer to be held mid-send")
        for token, order in orders:  # confirmed while the email consumer waits on SMTP
            floodgate.wait_for_status(token, order["id"], "confirmed")
    finally:
        set_fault(stack, "none")

    order_ids = {order["id"] for _, order in orders}
    rows = every_confirmation_and_no_late_pay_by(floodgate, stack, admin_token, order_ids, timeout=40)
    # The stalled email waited 10 s on SMTP in one attempt; the broker connection (3 s heartbeat)
    # stayed up meanwhile, so nothing was redelivered or retried.
    assert [row["attempts"] for row in rows] == [1] * len(rows)
    with open(log_path, "rb") as log_file:
        log_file.seek(log_offset)
        assert b"broker connection lost" not in log_file.read()


def test_two_consumers_send_exactly_one_email_per_event_over_500_events(floodgate, stack):
    start_consumer(stack, "notifications-consumer-2")
    consumers = ("notifications-consumer", "notifications-consumer-2")
    try:
        poll(lambda: consumers_on_work_queue(stack) == 2, what="the second consumer to subscribe")
        run = uuid.uuid4().hex[:8]
        envelopes = [order_confirmed(f"buyer-{n}@bulk-{run}.test") for n in range(500)]
        wanted = {message_id(envelope) for envelope in envelopes}
        started = time.perf_counter()
        # Each event twice, one right after the other (as a relay republishes after a crash): the
        # two consumers, four threads each, often take both copies in the same moment.
        publish(stack, [copy for envelope in envelopes for copy in (envelope, envelope)])
        poll(lambda: len(mails_by_message_id(floodgate, wanted)) == 500, timeout=90, interval=0.5,
             what="500 emails")
        print(f"\n500 emails through two consumers in {time.perf_counter() - started:.1f} s")
        # Both copies of every event handled and the work queue drained: nothing more may arrive.
        said = poll(lambda: (said := handlings(stack, consumers, wanted)) and len(said) == 500
                    and all(len(handled) >= 2 for handled in said.values()) and said,
                    timeout=60, interval=0.5, what="both copies of every event handled")
        poll(lambda: _work_queue(stack).message_count == 0, what="the work queue to drain")
        found = mails_by_message_id(floodgate, wanted)
        assert sorted(len(mails) for mails in found.values()) == [1] * 500
        assert all(handled.count(HANDLED[0]) == 1 for handled in said.values())
        poll(lambda: scalar(stack, "notifications",
                            "SELECT count(*) FROM deliveries WHERE status = 'sent' AND to_address LIKE :domain",
                            domain=f"%@bulk-{run}.test") == 500, what="500 deliveries logged")
        workers = scalar(stack, "notifications",
                         "SELECT count(DISTINCT handled_by) FROM deliveries WHERE to_address LIKE :domain",
                         domain=f"%@bulk-{run}.test")
        assert workers == 2
    finally:
        stack.stop("notifications-consumer-2")


def test_a_consumer_killed_mid_send_loses_nothing_and_sends_nothing_twice(floodgate, stack):
    run = uuid.uuid4().hex[:8]
    envelopes = [order_confirmed(f"killed-{n}@{run}.test") for n in range(3)]
    wanted = {message_id(envelope) for envelope in envelopes}
    set_fault(stack, "stall", seconds=30)
    try:
        publish(stack, envelopes)
        poll(lambda: smtp_fault(stack)["stalled"] >= 1, what="the consumer to be mid-send")
        stack.kill("notifications-consumer")
        # The half-sent message dies with its SMTP connection: the server never accepted it.
        poll(lambda: smtp_fault(stack)["stalled"] == 0, timeout=10, what="the server to drop the half-sent message")
    finally:
        set_fault(stack, "none")
    assert not mails_by_message_id(floodgate, wanted)

    start_consumer(stack, "notifications-consumer")
    poll(lambda: len(mails_by_message_id(floodgate, wanted)) == 3, timeout=30, what="the three emails after restart")

    # A redelivered event that was already mailed (the relay's crash window) sends nothing. Counted
    # once the consumer has handled it (its log says so) and the work queue is empty.
    consumer = ("notifications-consumer",)
    duplicate = message_id(envelopes[0])
    poll(lambda: len(handlings(stack, consumer, wanted)) == 3, what="the three emails in the consumer's log")
    before = len(handlings(stack, consumer, {duplicate})[duplicate])
    publish(stack, [envelopes[0]])
    poll(lambda: len(handlings(stack, consumer, {duplicate}).get(duplicate, [])) == before + 1,
         what="the duplicate handled")
    poll(lambda: _work_queue(stack).message_count == 0, what="the work queue to drain")
    assert sorted(len(mails) for mails in mails_by_message_id(floodgate, wanted).values()) == [1, 1, 1]
    assert handlings(stack, consumer, {duplicate})[duplicate][-1] == HANDLED[1]


def test_a_server_slow_to_answer_a_message_it_has_queued_mails_it_once(floodgate, stack, admin_token):
    """The reply to a message waits SMTP_DATA_REPLY_TIMEOUT_SECONDS (60), not the commands'
    SMTP_TIMEOUT_SECONDS (1 here): a server answers a message once it has queued it, which may take
    a while, and a consumer that gave up sooner sent it again, the buyer's second copy."""
    stack.stop("notifications-consumer")
    start_consumer(stack, "notifications-consumer", SMTP_TIMEOUT_SECONDS="1")
    address = f"slow-{uuid.uuid4().hex[:8]}@example.com"
    envelope = order_confirmed(address)
    try:
        poll(lambda: consumers_on_work_queue(stack) == 1, what="the consumer to subscribe")
        set_fault(stack, "late", seconds=3, recipients=(address,))
        publish(stack, [envelope])
        [row] = poll(lambda: [row for row in deliveries(floodgate, stack, admin_token, to=address)
                              if row["status"] == "sent"], timeout=30, what="the email logged as sent")
    finally:
        set_fault(stack, "none")
        stack.stop("notifications-consumer")
        start_consumer(stack, "notifications-consumer")
        poll(lambda: consumers_on_work_queue(stack) == 1, what="the consumer to subscribe")
    assert row["attempts"] == 1
    assert len(mails_by_message_id(floodgate, {message_id(envelope)})[message_id(envelope)]) == 1


def test_a_poison_event_is_parked_shown_to_admins_and_delivered_after_a_replay(floodgate, stack, admin_token):
    run = uuid.uuid4().hex[:8]
    poison_address = f"no-such-mailbox-{run}@example.com"
    poison, healthy = order_confirmed(poison_address), order_confirmed(f"healthy-{run}@example.com")
    set_fault(stack, "550", recipients=(poison_address,))
    try:
        publish(stack, [poison, healthy])
        poll(lambda: mails_by_message_id(floodgate, {message_id(healthy)}), what="the healthy email")

        def parked():
            # inventory parks its copy too (the order does not exist): this test is about the email
            answer = admin_get(floodgate, stack, admin_token, "/dead-letters", service="notifications")
            assert answer.status_code == 200, answer.text
            return [letter for letter in answer.json() if letter["message_id"] == poison.id]

        [letter] = poll(parked, timeout=30, what="the poison event in the dead-letter queue")
        assert "550" in letter["last_error"]
        [row] = deliveries(floodgate, stack, admin_token, to=poison_address.upper(), status="dead")
        assert row["event_id"] == poison.id and row["dead_letters"] == 1 and "550" in row["last_error"]
        assert not mails_by_message_id(floodgate, {message_id(poison)})
    finally:
        set_fault(stack, "none")

    # Only admins see or replay; a bad filter is a 422 problem.
    assert floodgate.http.get(stack.url("notifications") + "/dead-letters").status_code == 401
    bad = admin_get(floodgate, stack, admin_token, "/notifications", status="lost")
    assert bad.status_code == 422 and bad.headers["Content-Type"] == "application/problem+json"

    replay = floodgate.http.post(stack.url("notifications") + "/dead-letters/replay", json={"message_id": poison.id},
                                 headers={"Authorization": f"Bearer {admin_token}"})
    assert replay.status_code == 200 and replay.json() == {"replayed": 1}, replay.text
    poll(lambda: mails_by_message_id(floodgate, {message_id(poison)}), what="the replayed email")
    poll(lambda: deliveries(floodgate, stack, admin_token, to=poison_address)[0]["status"] == "sent",
         what="the delivery logged as sent")
    assert len(mails_by_message_id(floodgate, {message_id(poison)})[message_id(poison)]) == 1
    assert not parked()


def test_internationalised_addresses_get_their_email_and_cost_no_other_buyer_theirs(floodgate, stack):
    # Accounts takes such addresses (email-validator's default); smtplib speaks ASCII. A mailbox
    # name beyond ASCII once left the handler thread's SMTP session mid-transaction, and the
    # next buyers' emails on that thread were refused (503) and parked.
    run = uuid.uuid4().hex[:8]
    # mailboxes in Devanagari and Thai too: marshmallow's Email refused them, and every email to
    # them was parked, though accounts had taken them
    international = [order_confirmed(f"josé-{run}@example.com"), order_confirmed(f"ann-{run}@bücher.test"),
                     order_confirmed(f"राम-{run}@example.com"), order_confirmed(f"สมศรี-{run}@example.com")]
    others = [order_confirmed(f"buyer-{n}-{run}@example.com") for n in range(12)]
    publish(stack, [*international, *others])
    everyone = {message_id(envelope) for envelope in [*international, *others]}
    mailed = poll(lambda: (found := mails_by_message_id(floodgate, everyone)) and len(found) == len(everyone) and found,
                  timeout=30, what="every email, the international ones too")
    assert all(len(copies) == 1 for copies in mailed.values())
    assert mailed[message_id(international[0])][0]["to"] == [f"josé-{run}@example.com"]  # with SMTPUTF8
    assert mailed[message_id(international[1])][0]["to"] == [f"ann-{run}@xn--bcher-kva.test"]  # IDNA, plain ASCII
    assert mailed[message_id(international[2])][0]["to"] == [f"राम-{run}@example.com"]
    assert mailed[message_id(international[3])][0]["to"] == [f"สมศรี-{run}@example.com"]


def test_a_pay_by_email_delivered_after_the_orders_confirmation_is_logged_superseded_not_sent(floodgate, stack,
                                                                                              admin_token):
    run = uuid.uuid4().hex[:8]
    confirmation = order_confirmed(f"late-{run}@example.com")
    confirmation.data["version"] = 2
    publish(stack, [confirmation])
    poll(lambda: mails_by_message_id(floodgate, {message_id(confirmation)}), what="the confirmation")

    pay_by = Envelope(type="order.placed", source="tests", data={
        **confirmation.data, "status": "awaiting_payment", "version": 1,
        "hold_expires_at": (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat(),
        "payment_url": "http://127.0.0.1:8010/pay/o-1?amount=29900&sig=abc"})
    publish(stack, [pay_by])
    logged = poll(lambda: [d for d in deliveries(floodgate, stack, admin_token, order_id=confirmation.data["order_id"])
                           if d["event_type"] == "order.placed"], what="the pay-by email in the delivery log")

    assert logged[0]["status"] == "superseded"
    assert not mails_by_message_id(floodgate, {message_id(pay_by)})
    # the next order's pay-by email goes out as ever
    other = Envelope(type="order.placed", source="tests", data={**pay_by.data, "order_id": str(uuid.uuid4())})
    publish(stack, [other])
    poll(lambda: mails_by_message_id(floodgate, {message_id(other)}), what="another order's pay-by email")


def test_sigterm_finishes_the_emails_in_hand_and_returns_the_rest(floodgate, stack):
    run = uuid.uuid4().hex[:8]
    threads = NotificationSettings().consumer_threads
    events = [order_confirmed(f"buyer-{n}@{run}.test") for n in range(threads + 2)]
    ids = {message_id(event) for event in events}
    set_fault(stack, "stall", seconds=3)
    try:
        publish(stack, events)
        poll(lambda: smtp_fault(stack)["stalled"] >= 1, what="the consumer to be mid-send")
        assert stack.stop("notifications-consumer", timeout=20) == 0
    finally:
        set_fault(stack, "none")
    # The emails in hand (one per handler thread at most) were finished before the process left;
    # the others went back to the queue, unsent.
    sent = mails_by_message_id(floodgate, ids)
    assert 1 <= len(sent) <= threads and all(len(copies) == 1 for copies in sent.values())
    # At least those not mailed are back in the work queue (the quorum queue applies the return
    # through its log, a moment after the process left). Not exactly: the stack is shared, and
    # other tests' orders run out meanwhile, their order.expired events queued beside these.
    poll(lambda: _work_queue(stack).message_count >= len(events) - len(sent), timeout=10,
         what="the emails not mailed back in the work queue")

    start_consumer(stack, "notifications-consumer")
    poll(lambda: len(mails_by_message_id(floodgate, ids)) == len(events), what="the returned emails after restart")
    assert all(len(copies) == 1 for copies in mails_by_message_id(floodgate, ids).values())


def smtp_connections_of(stack, process: str) -> int:
    """Open TCP connections from `process` to the SMTP server (its sockets' inodes in /proc)."""
    sockets = set()
    for fd in Path(f"/proc/{stack.processes[process].pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    port = f":{stack.ports['smtp']:04X}"
    established = "01"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(port) and fields[3] == established and fields[9] in sockets:
            count += 1
    return count


def test_a_consumer_cancelled_by_the_broker_comes_back_and_mails_on(floodgate, stack):
    """Deleting the work queue makes the broker cancel its consumer: the consumer must notice,
    reconnect (declaring its queue and bindings again) and go on mailing, on the SMTP
    connections its handler threads already hold (one each, however often it reconnects, and one
    for the thread that handles what it takes from the returned lane)."""
    threads = NotificationSettings.from_env().consumer_threads
    before = [order_confirmed(f"before-cancel-{n}@{uuid.uuid4().hex[:8]}.test") for n in range(4 * threads)]
    publish(stack, before)
    poll(lambda: len(mails_by_message_id(floodgate, {message_id(e) for e in before})) == len(before),
         what="the emails before the cancel")
    connection = amqp.connect(stack.infra.amqp_url, "tests")
    try:
        connection.channel().queue_delete(topology.work_queue("notifications"))
    finally:
        connection.close()

    def consuming_again() -> bool:
        try:
            return consumers_on_work_queue(stack) >= 1
        except pika.exceptions.ChannelClosedByBroker:  # not declared again yet
            return False

    poll(consuming_again, timeout=30, what="the consumer to declare its queue and consume again")
    after = [order_confirmed(f"after-cancel-{n}@{uuid.uuid4().hex[:8]}.test") for n in range(4 * threads)]
    publish(stack, after)
    poll(lambda: len(mails_by_message_id(floodgate, {message_id(e) for e in after})) == len(after), timeout=30,
         what="the emails after the cancel")
    assert 1 <= smtp_connections_of(stack, "notifications-consumer") <= threads + 1


# --- mail waits for the rush (shared/messaging/deferral.py) -------------------------------------

def _spin() -> None:
    while True:
        pass


def test_email_waits_while_the_machine_is_busy_and_follows_once_it_is_not(floodgate, stack):
    """A process per core spinning stands for a drop's rush on the consumer's machine: a new
    event's email waits it out, one older than the bound goes at once all the same, and the
    waiting one follows when the machine is free again."""
    stack.stop("notifications-consumer")
    start_consumer(stack, "notifications-consumer", DEFER_WHILE_BUSY_SECONDS="120")
    burners = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
               for _ in range(os.cpu_count() or 2)]
    try:
        poll(lambda: consumers_on_work_queue(stack) == 1, what="the consumer to subscribe")
        for burner in burners:
            burner.start()
        # busy over a whole second, so the consumer's own samples (every 0.25 s) see it too
        others = OthersShare(window=1.0)
        poll(lambda: (others() or 0) >= 0.9, timeout=30, what="the spinning processes to fill the machine")
        fresh = order_confirmed(f"rush-{uuid.uuid4().hex[:8]}@example.com")
        old = order_confirmed(f"late-{uuid.uuid4().hex[:8]}@example.com")
        old = Envelope(type=old.type, data=old.data, source=old.source,
                       occurred_at=(datetime.now(timezone.utc) - timedelta(seconds=300)).isoformat())
        publish(stack, [fresh, old])
        poll(lambda: mails_by_message_id(floodgate, {message_id(old)}), timeout=30,
             what="the email of an event older than the bound, busy machine or not")
        # the fresh one was delivered to the consumer before the old one and is still held
        assert not mails_by_message_id(floodgate, {message_id(fresh)}), "mailed while the machine was busy"
        assert scalar(stack, "notifications", "SELECT count(*) FROM deliveries WHERE event_id = :id",
                      id=fresh.id) == 0
    finally:
        for burner in burners:
            burner.kill()
            burner.join()
    try:
        poll(lambda: mails_by_message_id(floodgate, {message_id(fresh)}), timeout=30,
             what="the held email once the machine is free")
        assert len(mails_by_message_id(floodgate, {message_id(fresh)})[message_id(fresh)]) == 1
    finally:
        stack.stop("notifications-consumer")
        start_consumer(stack, "notifications-consumer")
        poll(lambda: consumers_on_work_queue(stack) == 1, what="the consumer to subscribe")

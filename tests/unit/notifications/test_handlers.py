import html
import re
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import sqlalchemy as sa

from shared.messaging.consumer import DatabaseAway, PermanentFailure
from services.notifications import handlers
from shared.messaging import topology
from shared.messaging.consumer import current_attempt
from services.notifications.config import Settings
from services.notifications.emails import IncompleteEvent
from services.notifications.mailer import MailNotSent, MailRejected, SmtpUnavailable
from tests.unit.notifications.fakes import FakeDeliveryLog, FakeMailer, FakeUnitOfWork, confirmed, event, order


def deliver(envelope, mailer, deliveries):
    """As the consumer runner does: one unit of work per delivery, committed when the handler returns."""
    with FakeUnitOfWork(deliveries) as uow:
        handlers.send_notification(envelope, uow, mailer)
        uow.commit()


def test_a_confirmed_order_is_mailed_and_logged():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    assert [email.to for email in mailer.sent] == ["emilie@example.ca"]
    [delivery] = deliveries.committed
    assert delivery.event_id == "ev-1"
    assert delivery.order_id == order()["order_id"]
    assert delivery.status == "sent"
    assert delivery.message_id == "<ev-1@floodgate>" == mailer.sent[0].message_id


def test_a_sent_order_email_is_announced_so_checkout_can_show_it():
    uow = FakeUnitOfWork()
    with uow:
        handlers.send_notification(confirmed(event_id="ev-7"), uow, FakeMailer())
        uow.commit()
    [(event_type, data)] = uow.published
    assert event_type == "email.sent"
    assert (data["order_id"], data["event_type"], data["message_id"]) == (order()["order_id"], "order.confirmed", "<ev-7@floodgate>")


def test_a_shipping_email_is_announced_since_it_may_stand_for_a_superseded_confirmation():
    """An email outage that lasted until the order shipped: only the shipping email goes out, and
    checkout shows it as the order's confirmation (it was told of the confirmation alone, so the
    order said "confirmation not sent" for good)."""
    uow = FakeUnitOfWork()
    with uow:
        handlers.send_notification(event("order.shipped", order(status="shipped", version=3), event_id="ev-8"), uow,
                                   FakeMailer())
        uow.commit()
    [(event_type, data)] = uow.published
    assert (event_type, data["event_type"]) == ("email.sent", "order.shipped")


def test_the_same_event_twice_sends_one_email(caplog):
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    with caplog.at_level(logging.INFO, logger="floodgate.notifications"):
        deliver(confirmed(event_id="ev-1"), mailer, deliveries)
        deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    assert len(mailer.sent) == 1
    assert len(deliveries.committed) == 1
    # the second delivery says so: what shows a duplicate handled (the log's row does not change)
    [said] = [record for record in caplog.records
              if record.getMessage() == "email not sent: this event's was sent before"]
    assert said.message_id == "<ev-1@floodgate>"


def test_two_events_for_two_orders_send_two_emails():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    deliver(confirmed(order(order_id="other", buyer_email="sam@example.com"), event_id="ev-2"), mailer, deliveries)
    assert [email.to for email in mailer.sent] == ["emilie@example.ca", "sam@example.com"]


def test_a_rejected_email_is_a_permanent_failure_and_logs_nothing():
    deliveries = FakeDeliveryLog()
    with pytest.raises(PermanentFailure):
        deliver(confirmed(), FakeMailer(MailRejected("550 mailbox unavailable")), deliveries)
    assert deliveries.committed == []


def test_a_deferred_email_is_retried_and_then_sent_once():
    deliveries = FakeDeliveryLog()
    with pytest.raises(MailNotSent) as raised:
        deliver(confirmed(event_id="ev-1"), FakeMailer(MailNotSent("451 try later")), deliveries)
    assert not isinstance(raised.value, PermanentFailure)
    assert deliveries.committed == []
    mailer = FakeMailer()
    deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    assert len(mailer.sent) == 1


def test_an_order_without_buyer_email_sends_nothing_and_is_retried_towards_the_dead_letters():
    data = order()
    del data["buyer_email"]
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    with pytest.raises(IncompleteEvent) as raised:
        deliver(confirmed(data), mailer, deliveries)
    assert not isinstance(raised.value, PermanentFailure)
    assert mailer.sent == [] and deliveries.committed == []


# --- failed attempts in the delivery log, and what the runner does with them ------------------

SETTINGS = Settings(retry_delays_ms=(10_000, 60_000), max_attempts=5, incomplete_event_attempts=3)


@pytest.mark.parametrize(
    "error, attempt, outcome",
    [
        (MailNotSent("421"), 1, "retrying"),
        (MailNotSent("refused"), 4, "retrying"),
        (MailNotSent("refused"), 5, "dead"),
        (MailRejected("550"), 1, "dead"),
        (IncompleteEvent("no buyer_email"), 2, "retrying"),
        (IncompleteEvent("no buyer_email"), 3, "dead"),
        (RuntimeError("database went away"), 1, "retrying"),
    ],
)
def test_a_failure_is_retried_or_parked_as_the_runner_will(error, attempt, outcome):
    assert handlers.failure_outcome(error, attempt, SETTINGS) == outcome


def test_the_production_retry_tiers_wait_about_three_days_before_parking():
    production = Settings()
    tiers = topology.retry_delays("notifications", production.retry_delays_ms)
    assert tiers == (10_000, 60_000, 600_000, 3_600_000)
    waited_ms = sum(tiers[min(n, 4) - 1] for n in range(1, production.max_attempts))
    assert 71 * 3600 < waited_ms / 1000 < 73 * 3600


def run_handler(envelope, mailer, deliveries, attempt, database_away: bool = False):
    """As the runner does: the attempt number is set, the handler runs in a unit of work."""
    handle = handlers.event_handlers(SETTINGS, mailer,
                                     lambda: FakeUnitOfWork(deliveries, database_away=database_away))[envelope.type]
    current_attempt.set(attempt)
    with FakeUnitOfWork(deliveries) as uow:
        handle(envelope, uow)
        uow.commit()


def test_failed_attempts_are_logged_for_admins_and_the_send_after_them_once():
    deliveries = FakeDeliveryLog()
    for attempt in (1, 2):
        with pytest.raises(MailNotSent):
            run_handler(confirmed(event_id="ev-1"), FakeMailer(MailNotSent("421 busy")), deliveries, attempt)
    row = deliveries.for_event("ev-1")
    assert (row.status, row.attempts, row.retries, row.to_address) == ("retrying", 2, 2, "emilie@example.ca")
    assert "421 busy" in row.last_error
    mailer = FakeMailer()
    run_handler(confirmed(event_id="ev-1"), mailer, deliveries, 3)
    run_handler(confirmed(event_id="ev-1"), mailer, deliveries, 1)  # a replay after it was sent
    row = deliveries.for_event("ev-1")
    assert (row.status, row.attempts, row.retries) == ("sent", 3, 2)
    assert len(mailer.sent) == 1


def test_an_smtp_server_out_of_reach_is_no_attempt_of_the_email_and_logs_nothing():
    deliveries = FakeDeliveryLog()
    with pytest.raises(SmtpUnavailable):
        run_handler(confirmed(event_id="ev-1"), FakeMailer(SmtpUnavailable("connection refused")), deliveries, 1)
    row = deliveries.for_event("ev-1")
    assert row is None or row.status not in ("retrying", "dead")  # the runner pauses; nothing failed


def test_a_database_out_of_reach_at_the_last_attempt_leaves_the_email_to_wait_not_parked():
    """The runner makes it wait (`DatabaseAway`); the handler must not park it first."""
    down = sa.exc.OperationalError("INSERT INTO deliveries ...", {}, psycopg.OperationalError("connection refused"))
    deliveries = FakeDeliveryLog()
    with pytest.raises(DatabaseAway):
        run_handler(confirmed(event_id="ev-1"), FakeMailer(down), deliveries, SETTINGS.max_attempts, database_away=True)
    assert deliveries.for_event("ev-1") is None  # no failure logged: nothing failed but the database


def test_a_failure_that_looks_like_an_outage_while_the_database_answers_is_logged_and_parked_at_the_last():
    crashed = sa.exc.OperationalError("INSERT INTO deliveries ...", {}, psycopg.OperationalError("server closed"),
                                      connection_invalidated=True)
    deliveries = FakeDeliveryLog()
    with pytest.raises(PermanentFailure):
        run_handler(confirmed(event_id="ev-1"), FakeMailer(crashed), deliveries, SETTINGS.max_attempts)
    assert deliveries.for_event("ev-1").status == "dead"


def test_a_rejected_email_is_logged_dead_and_parked():
    deliveries = FakeDeliveryLog()
    with pytest.raises(PermanentFailure):
        run_handler(confirmed(event_id="ev-1"), FakeMailer(MailRejected("550 no mailbox")), deliveries, 1)
    row = deliveries.for_event("ev-1")
    assert (row.status, row.dead_letters) == ("dead", 1)


def test_an_incomplete_event_is_parked_after_its_few_attempts_not_after_days():
    data = order()
    del data["buyer_email"]
    deliveries = FakeDeliveryLog()
    with pytest.raises(IncompleteEvent) as first:
        run_handler(confirmed(data, event_id="ev-1"), FakeMailer(), deliveries, 1)
    assert not isinstance(first.value, PermanentFailure)
    with pytest.raises(PermanentFailure):
        run_handler(confirmed(data, event_id="ev-1"), FakeMailer(), deliveries, 3)
    row = deliveries.for_event("ev-1")
    assert (row.status, row.attempts, row.to_address) == ("dead", 2, None)


def test_every_subscribed_event_type_is_handled_and_mailed():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    data = {"account_id": "a-1", "email": "sam@example.com"}
    deliver(replace(confirmed(), type="account.registered", data=data, id="ev-9"), mailer, deliveries)
    assert [(email.to, email.event_type) for email in mailer.sent] == [("sam@example.com", "account.registered")]
    assert deliveries.for_event("ev-9").order_id is None


def test_an_invite_for_nobody_in_particular_mails_nothing_and_is_not_an_error():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    data = {"invite_id": "i-1", "code": "DROP-7Q2X", "email": None, "tier": "early", "expires_at": None}
    deliver(replace(confirmed(), type="invite.issued", data=data, id="ev-10"), mailer, deliveries)
    assert mailer.sent == [] and deliveries.committed == []


@pytest.mark.parametrize("expires_in, mailed", [(-1, False), (600, True), (None, True)])
def test_an_invitation_handled_after_its_code_expired_is_not_sent(expires_in, mailed):
    """Its first attempts met a refusing SMTP server for longer than the code lasts: the email
    sent its reader to a code accounts refuses."""
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    expires_at = None if expires_in is None else (datetime.now(timezone.utc) + timedelta(seconds=expires_in)).isoformat()
    data = {"invite_id": "i-2", "code": "DROP-8R3Y", "email": "sam@example.com", "tier": "early", "expires_at": expires_at}
    deliver(replace(confirmed(), type="invite.issued", data=data, id="ev-11"), mailer, deliveries)
    assert [email.to for email in mailer.sent] == (["sam@example.com"] if mailed else [])
    assert deliveries.for_event("ev-11").status == ("sent" if mailed else "superseded")


@pytest.mark.parametrize("occurred_at, logged", [
    ("9999-12-31T23:59:59-05:00", None), ("0001-01-01T00:00:00+01:00", None), ("yesterday", None),
    ("2014-10-27T16:03:00+01:00", datetime(2014, 10, 27, 15, 3, tzinfo=timezone.utc)),
])
def test_the_delivery_log_keeps_when_the_event_occurred_only_as_a_moment_it_can_read_back(occurred_at, logged):
    """A moment past year 9999 in UTC was stored (PostgreSQL takes it) and every admin read of
    its delivery row answered 500: no Python datetime holds it."""
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(replace(confirmed(), occurred_at=occurred_at, id="ev-12"), mailer, deliveries)
    assert deliveries.for_event("ev-12").occurred_at == logged and len(mailer.sent) == 1


def test_only_the_confirmation_email_is_announced():
    placed = dict(order(), hold_expires_at=in_ten_minutes(), payment_url="http://pay.example/o")
    uow, mailer = FakeUnitOfWork(), FakeMailer()
    with uow:
        handlers.send_notification(event("order.placed", placed, event_id="ev-8"), uow, mailer)
        uow.commit()
    assert [email.event_type for email in mailer.sent] == ["order.placed"] and uow.published == []


def in_ten_minutes() -> str:
    return (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()


def test_everything_is_written_before_the_mail_goes_out_so_only_the_commit_follows_it():
    uow = FakeUnitOfWork()
    seen_at_send = []

    class WatchingMailer(FakeMailer):
        def send(self, email):
            seen_at_send.append(([d.status for d in uow.deliveries.pending], list(uow.published)))
            super().send(email)

    with uow:
        handlers.send_notification(confirmed(event_id="ev-11"), uow, WatchingMailer())
        uow.commit()
    [(pending, published)] = seen_at_send
    assert pending == ["sent"] and [event_type for event_type, _ in published] == ["email.sent"]


def placed_order(**changes) -> dict:
    return order(**{"status": "awaiting_payment", "version": 1, "hold_expires_at": in_ten_minutes(),
                    "payment_url": "http://127.0.0.1:8010/pay/o-1?amount=134999&sig=abc", **changes})


def test_a_pay_by_email_retried_past_the_orders_confirmation_is_not_sent():
    """The 2014 failure the other way round: a buyer told "pay by 15:15" after "confirmed"."""
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(confirmed(order(version=2), event_id="ev-confirmed"), mailer, deliveries)
    deliver(event("order.placed", placed_order(), event_id="ev-placed"), mailer, deliveries)  # its retry, late

    assert [email.event_type for email in mailer.sent] == ["order.confirmed"]
    late = deliveries.for_event("ev-placed")
    assert (late.status, late.order_version) == ("superseded", 1)


def test_a_pay_by_email_handled_after_its_pay_by_time_is_not_sent():
    """After an SMTP or consumer outage the queue holds the drop's "pay by" emails ahead of their
    confirmations: a buyer who had paid was told to pay again, by a time already gone, with a
    payment link. Only the order's next state is mailed."""
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    gone = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    deliver(event("order.placed", placed_order(hold_expires_at=gone), event_id="ev-placed"), mailer, deliveries)
    deliver(confirmed(order(version=2), event_id="ev-confirmed"), mailer, deliveries)

    assert [email.event_type for email in mailer.sent] == ["order.confirmed"]
    assert deliveries.for_event("ev-placed").status == "superseded"
    # its redelivery sends nothing either
    deliver(event("order.placed", placed_order(hold_expires_at=gone), event_id="ev-placed"), mailer, deliveries)
    assert [email.event_type for email in mailer.sent] == ["order.confirmed"]


def test_an_expiry_retried_past_the_late_payments_confirmation_is_not_sent_but_a_refund_always_is():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(event("order.placed", placed_order(), event_id="ev-1"), mailer, deliveries)
    deliver(confirmed(order(version=3), event_id="ev-3"), mailer, deliveries)  # paid after its expiry
    deliver(event("order.expired", order(status="expired", version=2), event_id="ev-2"), mailer, deliveries)
    deliver(event("payment.refunded", order(version=2, refund={"amount": 134999, "currency": "EUR"}), event_id="ev-r"),
            mailer, deliveries)

    assert [email.event_type for email in mailer.sent] == ["order.placed", "order.confirmed", "payment.refunded"]
    assert deliveries.for_event("ev-2").status == "superseded"


@pytest.mark.parametrize("newer, mention", [
    (None, "still waits for its payment of 1,349.99 EUR"),
    ("order.confirmed", "Your order's page below shows where it stands now."),
])
def test_a_refund_mailed_after_its_orders_newer_state_does_not_say_the_order_still_waits_for_payment(newer, mention):
    """A payment of the wrong amount is refunded while the order waits for its payment; the buyer
    then pays right and their confirmation goes out first (the refund's first attempt met a full
    SMTP server). The refund email said the order "still waits for its payment": the buyer, told
    they were confirmed, was asked to pay again."""
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    if newer:
        deliver(confirmed(order(version=2), event_id="ev-confirmed"), mailer, deliveries)
    refund = order(version=1, status="awaiting_payment", of_order_payment=False, confirmed_at=None,
                   refund={"amount": 100, "currency": "EUR"})
    deliver(event("payment.refunded", refund, event_id="ev-r"), mailer, deliveries)

    [email] = [email for email in mailer.sent if email.event_type == "payment.refunded"]
    assert mention in email.text and mention in html.unescape(re.sub(r"<[^>]+>", "", email.html))
    assert ("still waits" in email.text) is (newer is None)


def test_an_order_emailed_in_the_order_of_its_states_gets_every_email():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(event("order.placed", placed_order(), event_id="ev-1"), mailer, deliveries)
    deliver(confirmed(order(version=2), event_id="ev-2"), mailer, deliveries)
    deliver(event("order.cancelled", order(status="cancelled", version=3), event_id="ev-3"), mailer, deliveries)
    # another order's newer state is no reason to hold this one's back, nor is an event without a version
    deliver(confirmed(order(order_id="other", version=9), event_id="ev-4"), mailer, deliveries)
    deliver(event("order.placed", placed_order(order_id="other", version=None), event_id="ev-5"), mailer, deliveries)

    assert [email.event_type for email in mailer.sent] == [
        "order.placed", "order.confirmed", "order.cancelled", "order.confirmed", "order.placed"]

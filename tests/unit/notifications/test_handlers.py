import pytest

from shared.messaging.consumer import PermanentFailure
from services.notifications import handlers
from services.notifications.emails import IncompleteOrder
from services.notifications.mailer import MailNotSent, MailRejected
from tests.unit.notifications.fakes import FakeDeliveryLog, FakeMailer, FakeUnitOfWork, confirmed, order


def deliver(envelope, mailer, deliveries):
    """As the consumer runner does: one unit of work per delivery, committed when the handler returns."""
    with FakeUnitOfWork(deliveries) as uow:
        handlers.on_order_confirmed(envelope, uow, mailer=mailer)
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


def test_the_same_event_twice_sends_one_email():
    mailer, deliveries = FakeMailer(), FakeDeliveryLog()
    deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    deliver(confirmed(event_id="ev-1"), mailer, deliveries)
    assert len(mailer.sent) == 1
    assert len(deliveries.committed) == 1


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
    with pytest.raises(IncompleteOrder) as raised:
        deliver(confirmed(data), mailer, deliveries)
    assert not isinstance(raised.value, PermanentFailure)
    assert mailer.sent == [] and deliveries.committed == []

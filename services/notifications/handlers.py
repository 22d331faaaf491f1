"""Notifications' operations: mailing confirmed orders, the delivery log, dead letters."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pika

from shared import logs
from shared.messaging import connection as amqp
from shared.messaging.consumer import peek_dead_letters, replay_dead_letters
from shared.messaging.envelope import Envelope
from services.notifications import emails
from services.notifications.config import Settings
from services.notifications.errors import BrokerUnavailable
from services.notifications.mailer import Mailer
from services.notifications.models import Delivery

log = logging.getLogger("floodgate.notifications")
NOT_FOUND = 404


def on_order_confirmed(envelope: Envelope, uow, mailer: Mailer) -> None:
    """Mail the buyer their confirmation, once per event, and log the delivery in `uow`.

    The mail goes out before the transaction commits: should the commit fail, the event is
    retried and mailed again with the same Message-ID. The reverse order could lose the email.
    """
    if uow.deliveries.for_event(envelope.id) is not None:
        return
    order = emails.read_confirmed_order(envelope.data)
    with logs.log_context(order_id=order["order_id"]):
        email = emails.order_confirmation(order, envelope.id)
        mailer.send(email)
        uow.deliveries.add(
            Delivery(
                event_id=envelope.id,
                event_type=envelope.type,
                order_id=order["order_id"],
                to_address=email.to,
                subject=email.subject,
                status="sent",
                message_id=email.message_id,
                sent_at=datetime.now(timezone.utc),
            )
        )
        log.info("confirmation email sent", extra={"message_id": email.message_id})


EVENT_HANDLERS = {"order.confirmed": on_order_confirmed}


def find_deliveries(query: dict, uow) -> list[Delivery]:
    """Deliveries matching the admin's filters, newest first."""
    return uow.deliveries.search(**query)


def dead_letters(settings: Settings) -> list[dict]:
    """The events parked in notifications' dead-letter queue, left in place."""
    try:
        return peek_dead_letters(settings.amqp_url, settings.service_name)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:  # no consumer has declared the queues yet: nothing parked
            return []
        raise BrokerUnavailable(f"The broker refused: {error.reply_text}") from error
    except amqp.RECOVERABLE as error:
        raise BrokerUnavailable("The broker is not answering; try again shortly.") from error


def replay(message_id: str | None, settings: Settings) -> int:
    """Send one parked event (or all of them) back to the work queue; how many went back."""
    try:
        return replay_dead_letters(
            settings.amqp_url, settings.service_name, None if message_id is None else {message_id}
        )
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            return 0
        raise BrokerUnavailable(f"The broker refused: {error.reply_text}") from error
    except amqp.RECOVERABLE as error:
        raise BrokerUnavailable("The broker is not answering; try again shortly.") from error

"""Notifications' operations: mailing events, the delivery log, dead letters."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import datetime, timezone
from typing import Callable

import pika

from shared import db, logs
from shared.admin_actions import AdminAction
from shared.messaging import connection as amqp
from shared.messaging import dead_letters as parked_letters
from shared.messaging.consumer import DatabaseAway, DependencyDown, PermanentFailure, current_attempt, retry_or_park
from shared.messaging.envelope import Envelope
from services.notifications import emails
from services.notifications.config import Settings
from services.notifications.errors import BrokerUnavailable, ReplayNotRecorded
from services.notifications.mailer import Mailer
from services.notifications.models import DEAD, RETRYING, SUPERSEDED, Delivery

log = logging.getLogger("floodgate.notifications")
WORKER = f"{socket.gethostname()}:{os.getpid()}"


# The emails whose sending checkout records on the order: the confirmation, and the shipping email
# (it stands for a confirmation it superseded: an email outage that lasted until the order
# shipped; sent days after the drop, never in its rush). Announcing every email cost an outbox
# row, a publish and a checkout transaction per order for nothing shown.
ANNOUNCED_EMAILS = frozenset({"order.confirmed", "order.shipped"})
# The emails that tell the buyer what state their order is in. Each is sent only while no email
# of a newer state of the order has gone out: a "pay by 16:00" email retried past the order's
# confirmation (its first attempt met a full SMTP server), or the expiry of an order the buyer
# paid late, would tell them the opposite of the truth. A refund is news whenever it comes.
ORDER_STATE_EMAILS = frozenset({"order.placed", "order.confirmed", "order.cancelled", "order.expired",
                                "order.payment_failed", "order.shipped"})
# The emails that mention their order's state beside their own news: a refund of a payment the
# order did not take says whether the order still waits for its payment. When a newer state of
# the order was mailed first (the buyer paid the right amount and was confirmed before the refund
# went out), the mention is left out: "still waits for its payment" would have them pay again.
MENTIONS_ORDER_STATE = frozenset({"payment.refunded"})


# The emails that ask the reader to act by a time (the event's field that holds it): handled after
# it, they are not sent (`_past_its_time`).
ACT_BY = {"order.placed": "hold_expires_at", "invite.issued": "expires_at"}


def _past_its_time(event_type: str, data: dict, now: datetime) -> bool:
    """An email that asks its reader to act by a time (`ACT_BY`) handled after that time.

    A "pay by 16:00" email (`order.placed`) after 16:00: after an SMTP or consumer outage the
    queue holds a drop's order.placed events ahead of their order.confirmed ones, and every buyer
    who had paid meanwhile was first told to pay, by a time already gone, with a payment link; the
    order's next state is mailed instead, its confirmation or its expiry. An invitation whose code
    has expired (its retries met a refusing SMTP server for longer than the code lasts) would
    send its reader to a code accounts refuses. Neither is sent (logged `superseded`)."""
    field = ACT_BY.get(event_type)
    return field is not None and data.get(field) is not None and data[field] <= now


def send_notification(envelope: Envelope, uow, mailer: Mailer) -> None:
    """Mail the email `envelope` asks for, once per event, and log the delivery in `uow`.

    The delivery log is the event's deduplication (the consumer keeps no inbox for
    notifications): an event whose email was already accepted sends nothing, and two deliveries
    of one event at once serialise on its row.

    Everything the transaction writes is written before the mail goes out, so that once the SMTP
    server has accepted it only the commit remains: should that commit fail, the event is retried
    and mailed again with the same Message-ID. Sending after the commit could lose the email.

    An order state's email (`ORDER_STATE_EMAILS`) whose order has had a newer state mailed is
    logged as `superseded` and not sent. Two of one order's emails handled at the same moment on
    two threads go out one after the other, the older state first or not at all
    (`DeliveryLog.record_sent` says how).
    """
    if emails.addressed_to_nobody(envelope.type, envelope.data):
        log.info("event names no recipient; nothing to mail", extra={"message_id": envelope.id, "event_type": envelope.type})
        return
    data = emails.read(envelope.type, envelope.data)
    if envelope.type in MENTIONS_ORDER_STATE and uow.deliveries.newer_state_mailed(data.get("order_id"),
                                                                                    data.get("version")):
        data = {**data, "status": None}
    with logs.log_context(order_id=data.get("order_id")):
        email = emails.render(envelope.type, data, envelope.id)
        sent_at = datetime.now(timezone.utc)
        if _past_its_time(envelope.type, data, sent_at):
            if uow.deliveries.record_not_sent(_attempt(envelope, email, data.get("version")), sent_at) is not None:
                log.info("email not sent: the time it asks its reader to act by has passed",
                         extra={"message_id": email.message_id, "event_type": envelope.type})
            return
        written = uow.deliveries.record_sent(_attempt(envelope, email, data.get("version")), sent_at,
                                             unless_superseded=envelope.type in ORDER_STATE_EMAILS)
        if written is None:  # a redelivered, republished or replayed event whose email went out before
            log.info("email not sent: this event's was sent before",
                     extra={"message_id": email.message_id, "event_type": envelope.type})
            return
        if written == SUPERSEDED:
            log.info("email not sent: a newer state of the order was mailed first",
                     extra={"message_id": email.message_id, "event_type": envelope.type, "order_version": data.get("version")})
            return
        if envelope.type in ANNOUNCED_EMAILS and data.get("order_id"):
            # checkout shows the buyer whether and when their order's confirmation went out
            uow.publish("email.sent", {"order_id": data["order_id"], "event_type": envelope.type,
                                       "sent_at": sent_at.isoformat(), "message_id": email.message_id})
        mailer.send(email)  # a refusal raises: the writes above roll back with the event
        log.info("email sent", extra={"message_id": email.message_id, "event_type": envelope.type})


class ParkedEvent(PermanentFailure):
    """An event the delivery log decided to park before the runner's last attempt."""


def event_handlers(settings: Settings, mailer: Mailer, unit_of_work: Callable[[], object]) -> dict:
    """The consumer's handler of every event notifications mails.

    On top of mailing (`send_notification`): a failure is written to the delivery log with the
    outcome the runner will give it (from the runner's `current_attempt`), in a unit of work of
    its own, and an event that cannot be mailed is parked after a few attempts instead of waiting
    out days of SMTP retries."""

    def handle(envelope: Envelope, uow) -> None:
        attempt = current_attempt.get()
        try:
            send_notification(envelope, uow, mailer)
        except DependencyDown:  # not this event's failure: it waits in the queue, uncounted
            raise
        except Exception as error:
            if db.away(error, unit_of_work):  # the runner's wait, as for SMTP; no log to write it in
                raise DatabaseAway(f"the database is not answering: {error!r}") from error
            # This attempt's own writes (the delivery row it expected to send) hold the row the
            # failure is logged in, from another transaction: give them up first.
            uow.rollback()
            outcome = failure_outcome(error, attempt, settings)
            try:
                record_failure(envelope, error, outcome, unit_of_work())
            except Exception:  # the log is for admins; the broker still holds the event
                log.warning("could not record the failed attempt", exc_info=True, extra={"message_id": envelope.id})
            if outcome == DEAD and not isinstance(error, PermanentFailure):
                raise ParkedEvent(str(error)) from error
            raise

    return {event_type: handle for event_type in emails.KINDS}


def failure_outcome(error: Exception, attempt: int, settings: Settings) -> str:
    """What the consumer runner does with an event whose attempt number `attempt` raised `error`:
    `retrying` (a delay queue) or `dead` (the dead-letter queue). Mirrors the runner's rule."""
    if isinstance(error, PermanentFailure):
        return DEAD
    if isinstance(error, emails.IncompleteEvent) and attempt >= settings.incomplete_event_attempts:
        return DEAD
    step = retry_or_park(attempt, settings, "")
    return RETRYING if step.action == "retry" else DEAD


def record_failure(envelope: Envelope, error: Exception, outcome: str, uow) -> None:
    """Note a failed attempt in the delivery log, in its own transaction (the event's own one
    rolls back), so admins see what is retrying and why."""
    data = envelope.data if isinstance(envelope.data, dict) else {}
    recipient = data.get("buyer_email") or data.get("email")
    attempt = {
        "event_id": envelope.id,
        "event_type": envelope.type,
        "order_id": _text(data.get("order_id"), 64),
        "to_address": _text(recipient, 320),
        "subject": None,
        "message_id": emails.message_id_for(envelope.id),
        "occurred_at": _moment(envelope.occurred_at),
        "handled_by": WORKER,
    }
    with uow:
        uow.deliveries.record_failure(attempt, datetime.now(timezone.utc), outcome, f"{type(error).__name__}: {error}"[:2000])
        uow.commit()


def find_deliveries(query: dict, uow) -> list[Delivery]:
    """Deliveries matching the admin's filters, newest first."""
    return uow.deliveries.search(**query)


def dead_letters(settings: Settings, service: str | None = None) -> list[dict]:
    """The events parked in one service's dead-letter queue, or in every consuming service's,
    left in place; each names its service."""
    with _broker_answers():
        return parked_letters.parked(settings.amqp_url, service)


def replay(message_id: str | None, settings: Settings, uow=None, service: str | None = None,
           action: AdminAction | None = None) -> int:
    """Send one parked event (or all of them) of `service` (default: notifications) back to its
    work queue; how many went back. Notifications' own delivery log shows replayed events as
    `retrying` again, and the admin's `action` is recorded with how many went back, in the same
    transaction (the replay itself is on the broker, before it)."""
    service = service or settings.service_name
    own = uow is not None and service == settings.service_name
    if own:  # before they go back: one a consumer takes at once and parks again stays `dead`
        with uow:
            parked = uow.deliveries.parked(message_id)
    with _broker_answers():
        sent_back = parked_letters.replay(settings.amqp_url, service, message_id)
    replayed = len(sent_back)
    own = own and replayed
    if uow is not None and (own or action is not None):
        try:
            with uow:
                if own:  # exactly those sent back: not those parked since, nor those past a limit
                    uow.deliveries.mark_replayed({event_id: parked[event_id] for event_id in sent_back
                                                  if event_id in parked})
                if action is not None:
                    uow.admin_actions.record(action.ended({"replayed": replayed}))
                uow.commit()
        except Exception as error:
            if not db.unavailable(error):
                raise
            log.error("dead letters replayed, not recorded: the database is away",
                      extra={"service": service, "replayed": replayed, "message_id": message_id})
            raise ReplayNotRecorded(replayed) from error
    log.info("dead letters replayed", extra={"service": service, "replayed": replayed, "message_id": message_id})
    return replayed


@contextlib.contextmanager
def _broker_answers():
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as error:
        raise BrokerUnavailable(f"The broker refused: {error.reply_text}") from error
    except amqp.RECOVERABLE as error:
        raise BrokerUnavailable("The broker is not answering; try again shortly.") from error


def _attempt(envelope: Envelope, email: emails.Email, order_version: int | None = None) -> dict:
    return {
        "event_id": envelope.id,
        "event_type": envelope.type,
        "order_id": email.order_id,
        "order_version": order_version,
        "to_address": email.to,
        "subject": email.subject[:300],
        "message_id": email.message_id,
        "occurred_at": _moment(envelope.occurred_at),
        "handled_by": WORKER,
    }


def _moment(text: str) -> datetime | None:
    """When the event says it occurred, in UTC; None when it says nothing readable, or a moment
    outside the years 1 to 9999 in UTC: PostgreSQL stores "9999-12-31T23:59:59-05:00" (year
    10000 in UTC), but no Python datetime can hold it, and every read of its delivery row (the
    admins' `GET /notifications`) failed with a 500."""
    try:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None


def _text(value, limit: int) -> str | None:
    return str(value)[:limit] if value else None

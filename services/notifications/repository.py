"""The delivery log, and the unit of work that carries it."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm

from shared import db
from shared.admin_actions import AdminActions
from shared.sql import Statement
from services.notifications.models import (DEAD, RETRYING, SENT, SUPERSEDED, Delivery, OrderEmailVersion,
                                           PurgedDeliveryTotals)


class DeliveryLog:
    """Deliveries in the service's database. Writes are upserts keyed by the event id."""

    def __init__(self, session: orm.Session):
        self._session = session

    def record_sent(self, attempt: dict, now: datetime, unless_superseded: bool = False) -> str | None:
        """The email of `attempt` (event_id, event_type, order_id, order_version, to_address,
        subject, message_id, occurred_at, handled_by) is accepted by the SMTP server: `sent`.
        With `unless_superseded`, when an email of a newer version of its order was accepted, it
        is not to be sent: `superseded`. None when an earlier attempt's email was accepted
        (nothing is changed then). Concurrent attempts of one event serialise on its row."""
        return self._upsert(attempt, now, status=SENT, sent_at=now, superseding=unless_superseded)

    def newer_state_mailed(self, order_id: str | None, version: int | None) -> bool:
        """Whether an email of a newer version of the order than `version` was accepted. Waits for
        one being mailed now: its transaction holds the order's row until it commits, and may be
        inserting it (the order's first email mailed: its "pay by" was not, its time gone after an
        outage, or still retrying). A read alone would not see an uncommitted row, nor wait for
        it; an insert of the row does (at version 0, below any order's: nothing is superseded by
        it), and then the read holds it shared, so a newer state's email waits for this one."""
        if order_id is None or version is None:
            return False
        _ORDER_ROW.run(self._session, {"order_id": order_id})
        newest = self._session.scalar(sa.select(OrderEmailVersion.newest_version)
                                      .where(OrderEmailVersion.order_id == order_id).with_for_update(read=True))
        return newest is not None and newest > version

    def record_not_sent(self, attempt: dict, now: datetime) -> str | None:
        """The email of `attempt` is not to be sent (what it says is no longer true): logged
        `superseded`. None when an earlier attempt's email was accepted (nothing changes)."""
        return self._upsert(attempt, now, status=SUPERSEDED)

    def record_failure(self, attempt: dict, now: datetime, outcome: str, error: str) -> None:
        """An attempt failed; `outcome` is `retrying` or `dead`. A sent delivery stays sent."""
        self._upsert(
            attempt,
            now,
            status=outcome,
            last_error=error,
            retries=1 if outcome == RETRYING else 0,
            dead_letters=1 if outcome == DEAD else 0,
        )

    def parked(self, event_id: str | None = None) -> dict[str, int]:
        """The parked deliveries (the one of `event_id`, or all), each with its attempts so far."""
        query = sa.select(Delivery.event_id, Delivery.attempts).where(Delivery.status == DEAD)
        if event_id is not None:
            query = query.where(Delivery.event_id == event_id)
        return dict(self._session.execute(query).all())

    def mark_replayed(self, parked: dict[str, int]) -> None:
        """Parked deliveries sent back for another attempt (event id: its attempts when it was sent
        back, `parked`): those attempted since (taken at once by a consumer, and parked again,
        say) are left as that attempt wrote them."""
        if parked:
            deliveries = Delivery.__table__
            self._session.execute(
                deliveries.update()
                .where(deliveries.c.status == DEAD, deliveries.c.event_id == sa.bindparam("replayed"),
                       deliveries.c.attempts == sa.bindparam("attempts_then"))
                .values(status=RETRYING, updated_at=sa.func.now()),
                [{"replayed": event_id, "attempts_then": attempts} for event_id, attempts in parked.items()])

    def search(
        self, order_id: str | None = None, to: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Delivery]:
        """Newest first."""
        query = sa.select(Delivery).order_by(Delivery.updated_at.desc(), Delivery.id).limit(limit)
        if order_id is not None:
            query = query.where(Delivery.order_id == order_id)
        if to is not None:
            query = query.where(sa.func.lower(Delivery.to_address) == to.lower())
        if status is not None:
            query = query.where(Delivery.status == status)
        return list(self._session.scalars(query))

    def totals(self) -> dict:
        """Counts for /metrics: sent, retries and dead letters so far (the purged deliveries'
        included, read in the same statement, so a purge committing meanwhile is counted once),
        and the oldest pending event."""
        def purged(column) -> sa.ColumnElement:
            return sa.func.coalesce(sa.select(column).where(PurgedDeliveryTotals.id == 1).scalar_subquery(), 0)

        row = self._session.execute(
            sa.select(
                sa.func.count().filter(Delivery.status == SENT) + purged(PurgedDeliveryTotals.sent),
                sa.func.coalesce(sa.func.sum(Delivery.retries), 0) + purged(PurgedDeliveryTotals.retries),
                sa.func.coalesce(sa.func.sum(Delivery.dead_letters), 0) + purged(PurgedDeliveryTotals.dead_letters),
                sa.func.count().filter(Delivery.status == RETRYING),
                sa.func.count().filter(Delivery.status == DEAD),
                sa.func.min(Delivery.occurred_at).filter(Delivery.status == RETRYING),
                sa.func.now(),
            )
        ).one()
        return dict(zip(("sent", "retries", "dead_letters", "retrying", "dead", "oldest_pending", "now"), row))

    def purge_finished(self, retention_seconds: float, batch_size: int) -> int:
        """Delete one batch of deliveries finished (`sent`, `superseded`) more than
        `retention_seconds` ago, adding what they counted to the purged totals in the same
        statement; how many went. Those retrying or parked stay, and so does the latest sent
        (when the last email went out, and how late, is read off it). Rows another purge is
        deleting are skipped (SKIP LOCKED)."""
        return int(_PURGE_FINISHED.scalar(self._session, {"retention": retention_seconds, "batch": batch_size}))

    def _upsert(self, attempt: dict, now: datetime, status: str, **changes) -> str | None:
        values = {
            "id": uuid.uuid4(),
            "event_id": attempt["event_id"],
            "event_type": attempt["event_type"],
            "order_id": attempt.get("order_id"),
            "order_version": attempt.get("order_version"),
            "to_address": attempt.get("to_address"),
            "subject": attempt.get("subject"),
            "message_id": attempt["message_id"],
            "occurred_at": attempt.get("occurred_at"),
            "handled_by": attempt.get("handled_by"),
            "status": status,
            "retries": 0,
            "dead_letters": 0,
            "last_error": None,
            "sent_at": None,
            "updated_at": now,
            "superseding": False,
            **changes,
        }
        return _UPSERT.scalar(self._session, values)


# One statement per email, written once and sent straight to the driver (shared.sql); it returns
# the status written. A sent delivery stays sent (and the statement returns no row then); what a
# failure could not read (recipient, subject, order) stays as an earlier attempt found it.
#
# With `superseding`, the email of an order whose newer version was mailed is written
# `superseded` instead of `sent`. The order's newest mailed version is kept in a row of its own,
# raised in the same statement: a transaction mailing version 2 holds that row until it commits
# (after its SMTP server has accepted the mail), so version 1's attempt meanwhile waits, then
# reads 2 and is superseded; and one mailing version 1 makes version 2's wait, so 1 goes out
# first. ON CONFLICT DO UPDATE reads the row as last committed, whatever the statement's
# snapshot: a check of the deliveries themselves (EXISTS) let two emails of one order handled in
# the same moment both go out in either order, as they do when an SMTP outage ends and their
# retries come back together. One statement: a second one cost the consumer 0.26 ms of CPU an
# email, a fifth of its rate. A rolled-back attempt (the SMTP server refused) leaves the row as
# it was.
_UPSERT = Statement(
    f"""
    WITH newest AS (
        INSERT INTO order_email_versions (order_id, newest_version)
        SELECT CAST(:order_id AS varchar), CAST(:order_version AS integer) WHERE CAST(:superseding AS boolean)
            AND CAST(:order_id AS varchar) IS NOT NULL AND CAST(:order_version AS integer) IS NOT NULL
        ON CONFLICT (order_id) DO UPDATE
            SET newest_version = greatest(order_email_versions.newest_version, EXCLUDED.newest_version)
        RETURNING newest_version > CAST(:order_version AS integer) AS mailed
    )
    INSERT INTO deliveries (id, event_id, event_type, order_id, order_version, to_address, subject, message_id,
                            occurred_at, handled_by, status, attempts, retries, dead_letters, last_error, sent_at,
                            updated_at)
    VALUES (:id, :event_id, :event_type, :order_id, :order_version, :to_address, :subject, :message_id,
            :occurred_at, :handled_by, CASE WHEN (SELECT mailed FROM newest) THEN '{SUPERSEDED}' ELSE :status END, 1,
            :retries, :dead_letters, :last_error,
            CASE WHEN (SELECT mailed FROM newest) THEN NULL ELSE CAST(:sent_at AS timestamptz) END, :updated_at)
    ON CONFLICT (event_id) DO UPDATE SET
        status = EXCLUDED.status,
        attempts = deliveries.attempts + 1,
        retries = deliveries.retries + EXCLUDED.retries,
        dead_letters = deliveries.dead_letters + EXCLUDED.dead_letters,
        updated_at = EXCLUDED.updated_at,
        handled_by = EXCLUDED.handled_by,
        to_address = coalesce(EXCLUDED.to_address, deliveries.to_address),
        subject = coalesce(EXCLUDED.subject, deliveries.subject),
        order_id = coalesce(EXCLUDED.order_id, deliveries.order_id),
        order_version = coalesce(EXCLUDED.order_version, deliveries.order_version),
        last_error = coalesce(EXCLUDED.last_error, deliveries.last_error),
        sent_at = coalesce(EXCLUDED.sent_at, deliveries.sent_at)
    WHERE deliveries.status <> '{SENT}'
    RETURNING status
    """
)


_ORDER_ROW = Statement(
    "INSERT INTO order_email_versions (order_id, newest_version) VALUES (CAST(:order_id AS varchar), 0) "
    "ON CONFLICT (order_id) DO NOTHING"
)


# The sent and superseded rows last updated before the retention (the index deliveries_status
# finds them), but the latest sent, deleted with their counts carried into
# delivery_totals_purged: one statement, so /metrics' totals (read in one statement too) see
# both or neither.
_PURGE_FINISHED = Statement(
    f"""
    WITH aged AS (
        SELECT id FROM deliveries
        WHERE status IN ('{SENT}', '{SUPERSEDED}') AND updated_at < now() - make_interval(secs => :retention)
          AND id IS DISTINCT FROM (SELECT id FROM deliveries WHERE status = '{SENT}'
                                   ORDER BY updated_at DESC, id DESC LIMIT 1)
        LIMIT :batch FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM deliveries WHERE id IN (SELECT id FROM aged) RETURNING status, retries, dead_letters
    ), carried AS (
        INSERT INTO delivery_totals_purged (id, sent, retries, dead_letters)
        SELECT 1, count(*) FILTER (WHERE status = '{SENT}'), coalesce(sum(retries), 0), coalesce(sum(dead_letters), 0)
        FROM gone HAVING count(*) > 0
        ON CONFLICT (id) DO UPDATE SET
            sent = delivery_totals_purged.sent + EXCLUDED.sent,
            retries = delivery_totals_purged.retries + EXCLUDED.retries,
            dead_letters = delivery_totals_purged.dead_letters + EXCLUDED.dead_letters
    )
    SELECT count(*) FROM gone
    """
)


def purge_delivery_log(unit_of_work, retention_seconds: float, batch_size: int) -> int:
    """One batch of the consumer's housekeeping (shared/messaging/housekeeping.py): deliveries
    finished more than `retention_seconds` ago go, their counts carried; how many went."""
    with unit_of_work() as uow:
        deleted = uow.deliveries.purge_finished(retention_seconds, batch_size)
        uow.commit()
    return deleted


class UnitOfWork(db.UnitOfWork):
    """The shared unit of work, with the delivery log and the admins' actions on its session."""

    deliveries: DeliveryLog
    admin_actions: AdminActions

    def __enter__(self) -> "UnitOfWork":
        super().__enter__()
        self.deliveries = DeliveryLog(self.session)
        self.admin_actions = AdminActions(self.session)
        return self

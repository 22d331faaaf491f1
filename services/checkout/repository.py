"""Where orders, idempotency keys, address allowances and payment events are kept, behind the
unit of work the handlers receive.

The order path's statements are written once, here, and sent as they are: `POST /orders` and
the payment webhook are measured per statement, so each method is one round trip (a new order and
the first step of its history are one statement) and nothing goes through the ORM's flush. They
are `shared.sql.Statement`s, sent straight to the driver in the unit of work's transaction.
"""
from __future__ import annotations

import copy
import functools
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.checkout.models import CAPTURE_COMPLETED, AddressAllowance, Line, LineTicket, Order, OrderTransition
from shared import db
from shared.admin_actions import AdminActions
from shared.sql import Json, Statement
from shared.values import utc_now, uuid_or_none


class Orders:
    """An order is read with its history in one statement (after one that locks it, with
    `lock`) and handed out outside the session. An order read with `lock` is watched until the
    transaction ends: what a handler changed in it (columns, steps appended to its history) is
    written by `write_changes` as the unit of work commits. The ORM's loading and flush of an
    order and its history cost a paid order more CPU than its own statements (3.4 ms a payment
    confirmation in-process, 2.2 ms an order read)."""

    def __init__(self, session: orm.Session):
        self._session = session
        self._watched: dict[uuid.UUID, tuple[Order, dict, int]] = {}  # id -> (order, columns read, steps read)

    def get(self, order_id: str | uuid.UUID, lock: bool = False) -> Order | None:
        """The order with its history (locked until the transaction ends with `lock`, and its
        changes written as the unit of work commits); None for an id that names nothing,
        malformed ones included."""
        order_uuid = uuid_or_none(order_id)
        if order_uuid is None:
            return None
        watched = self._watched.get(order_uuid)
        if watched is not None:
            return watched[0]
        if lock and _LOCK_ORDER.first(self._session, {"id": order_uuid}) is None:
            return None
        # After the lock, a statement of its own: one that waited for the lock would still read
        # the history as it was when it started, without the steps of the transaction it waited for.
        row = _READ_ORDER.first(self._session, {"id": order_uuid})
        if row is None:
            return None
        columns = dict(zip(_ORDER_FIELDS, row))
        steps = [OrderTransition(id=step_id, order_id=order_uuid, from_status=from_status, to_status=to_status,
                                 reason=reason, at=at)
                 for step_id, from_status, to_status, reason, at in zip(*row[len(_ORDER_FIELDS):])]
        order = Order(**columns, history=steps)
        if lock:
            self._watched[order_uuid] = (order, _snapshot(order), len(steps))
        return order

    def note_email_sent(self, order_id: str | uuid.UUID, sent_at) -> None:
        """The order's confirmation email went out at `sent_at`, unless one was noted before; an
        id that names no order changes nothing."""
        order_uuid = uuid_or_none(order_id)
        if order_uuid is not None:
            _NOTE_EMAIL_SENT.run(self._session, {"id": order_uuid, "sent_at": sent_at})

    def write_changes(self) -> None:
        """Write what changed in the orders read with `lock`: their changed columns in one
        statement each, the steps added to their histories in one more."""
        for order_id, (order, before, steps_before) in self._watched.items():
            changed = tuple(field for field in _ORDER_FIELDS if getattr(order, field) != before[field])
            if changed:
                values = {field: getattr(order, field) for field in changed}
                values = {field: Json(value) if isinstance(value, dict) else value for field, value in values.items()}
                _update_order(changed).run(self._session, {**values, "id": order_id})
            added = order.history[steps_before:]
            if added:
                for step in added:
                    step.at = step.at or utc_now()
                _ADD_STEPS.run(self._session, {
                    "order_id": order_id, "from_status": [step.from_status for step in added],
                    "to_status": [step.to_status for step in added], "reason": [step.reason for step in added],
                    "at": [step.at for step in added]})

    def forget_changes(self) -> None:
        """The transaction has ended (committed, or abandoned: then nothing read in it is
        written); its orders are no longer locked, and a later `get` reads them again."""
        self._watched.clear()

    def exists(self, order_id: str | uuid.UUID) -> bool:
        """Whether an order has this id (a malformed id names nothing); nothing is loaded or locked."""
        order_uuid = uuid_or_none(order_id)
        return order_uuid is not None and _ORDER_EXISTS.first(self._session, {"id": order_uuid}) is not None

    def add(self, order: Order) -> None:
        """Insert a new order and the first step of its history. `order` stays out of the
        session: Core inserts of it cost less than the ORM's flush of it."""
        first = order.history[0]
        _INSERT_ORDER.run(self._session, {
            **{column: getattr(order, column) for column in _ORDER_COLUMNS},
            "shipping_address": Json(order.shipping_address),
            "from_status": first.from_status, "to_status": first.to_status, "reason": first.reason, "at": first.at,
        })

    def newest_of(self, buyer_id: str, limit: int, offset: int) -> list[Order]:
        """Up to `limit` of the buyer's orders, newest first, skipping the first `offset`."""
        return list(
            self._session.scalars(
                sa.select(Order)
                .where(Order.buyer_id == buyer_id)
                .order_by(Order.created_at.desc(), Order.id)
                .limit(limit)
                .offset(offset)
            )
        )

    def tally(self, drop_id: uuid.UUID, recent_seconds: float) -> dict[str, tuple[int, int]]:
        """The drop's orders per status: how many, and how many of those were placed within the
        last `recent_seconds` (the database's clock)."""
        rows = self._session.execute(_TALLY, {"drop_id": drop_id, "recent": recent_seconds})
        return {row.status: (row.orders, row.recent) for row in rows}


@dataclass(frozen=True)
class KeyHeld:
    """An Idempotency-Key an earlier request took: its body's fingerprint and, once that
    request was answered, the answer."""

    fingerprint: str
    response_status: int | None
    response_body: str | None


class IdempotencyKeys:
    def __init__(self, session: orm.Session):
        self._session = session

    def claim(self, buyer_id: str, key: str, fingerprint: str) -> KeyHeld | None:
        """Take the buyer's key for this transaction (None), or return it as an earlier request
        left it, locked until this transaction ends.

        A concurrent request holding the key makes this wait until it commits (its key is then
        returned) or rolls back (the key is then taken here)."""
        params = {"buyer_id": buyer_id, "key": key, "fingerprint": fingerprint}
        while True:
            if _CLAIM_KEY.first(self._session, params):
                return None
            held = _LOCK_KEY.first(self._session, params)
            if held is not None:
                return KeyHeld(*held)

    def find(self, buyer_id: str, key: str) -> KeyHeld | None:
        """The buyer's key as an earlier request left it, if it was sent before; nothing is locked."""
        held = _FIND_KEY.first(self._session, {"buyer_id": buyer_id, "key": key})
        return None if held is None else KeyHeld(*held)

    def answer(self, buyer_id: str, key: str, status: int, body: str) -> None:
        """Keep `status` and `body` as the key's answer."""
        _REMEMBER_RESPONSE.run(self._session, {"buyer_id": buyer_id, "key": key, "status": status, "body": body})

    def purge_refused(self, retention_seconds: float, batch_size: int) -> int:
        """Delete one batch of keys whose answer was a refusal (4xx) and that were sent more than
        `retention_seconds` ago; how many went. A key that placed an order stays as long as its
        order. Keys another purge is deleting, or a retry holds, are skipped (SKIP LOCKED)."""
        return int(_PURGE_REFUSED_KEYS.scalar(self._session, {"retention": retention_seconds, "batch": batch_size}))


def purge_refused_keys(unit_of_work, retention_seconds: float, batch_size: int) -> int:
    """One batch of checkout's consumer's housekeeping (shared/messaging/housekeeping.py): the
    refused keys past `retention_seconds` go; how many went."""
    with unit_of_work() as uow:
        deleted = uow.idempotency_keys.purge_refused(retention_seconds, batch_size)
        uow.commit()
    return deleted


class AddressAllowances:
    def __init__(self, session: orm.Session):
        self._session = session

    def take(self, drop_id: uuid.UUID, address_key: str, quantity: int, limit: int) -> bool:
        """Count `quantity` more units of the drop for the address, unless that would pass
        `limit`; whether they were counted. Atomic across concurrent orders."""
        taken = _TAKE_ADDRESS_ALLOWANCE.first(
            self._session, {"drop_id": drop_id, "address_key": address_key, "quantity": quantity, "limit": limit})
        return taken is not None

    def give_back(self, drop_id: uuid.UUID, address_key: str, quantity: int) -> None:
        self._session.execute(
            sa.update(AddressAllowance)
            .where(AddressAllowance.drop_id == drop_id, AddressAllowance.address_key == address_key)
            .values(taken=AddressAllowance.taken - quantity)
        )


class PaymentEvents:
    def __init__(self, session: orm.Session):
        self._session = session

    def record(self, provider_event_id: str, order_id: uuid.UUID | None, event_type: str) -> bool:
        """Note the provider's event; False when it was noted before (its effect is done)."""
        first_time = _RECORD_PAYMENT_EVENT.first(
            self._session, {"provider_event_id": provider_event_id, "order_id": order_id, "event_type": event_type})
        return first_time is not None

    def captured_for(self, order_id: uuid.UUID) -> bool:
        """Whether the provider captured any payment for the order (its own, or one refunded on
        its own: of the wrong amount, a second one)."""
        return _CAPTURED_FOR.first(self._session, {"order_id": order_id}) is not None


# An order and its history (each column of its steps as an array, in order), one round trip.
_ORDER_FIELDS = tuple(column.key for column in Order.__table__.columns)
_READ_ORDER = Statement(
    f"SELECT {', '.join('o.' + field for field in _ORDER_FIELDS)}, "
    + ", ".join(f"ARRAY(SELECT t.{field} FROM order_transitions t WHERE t.order_id = o.id ORDER BY t.id)"
                for field in ("id", "from_status", "to_status", "reason", "at"))
    + " FROM orders o WHERE o.id = :id"
)
_LOCK_ORDER = Statement("SELECT 1 FROM orders WHERE id = :id FOR UPDATE")
# the partial index payment_events_captures finds them
_CAPTURED_FOR = Statement(
    f"SELECT 1 FROM payment_events WHERE order_id = :order_id AND event_type = '{CAPTURE_COMPLETED}' LIMIT 1")
_NOTE_EMAIL_SENT = Statement("UPDATE orders SET email_sent_at = :sent_at WHERE id = :id AND email_sent_at IS NULL")
_ADD_STEPS = Statement(
    "INSERT INTO order_transitions (order_id, from_status, to_status, reason, at) "
    "SELECT :order_id, * FROM unnest(CAST(:from_status AS text[]), CAST(:to_status AS text[]), CAST(:reason AS text[]), "
    "CAST(:at AS timestamptz[]))"
)


def _snapshot(order: Order) -> dict:
    """The order's columns as read, its documents (the address, the captures given back) copied:
    a handler changing one in place must still be seen as a change."""
    return {field: copy.deepcopy(value) if isinstance(value, dict) else value
            for field, value in ((field, getattr(order, field)) for field in _ORDER_FIELDS)}


@functools.lru_cache(maxsize=None)
def _update_order(fields: tuple[str, ...]) -> Statement:
    """The update of these columns of an order (a handler changes two or three of them)."""
    return Statement(f"UPDATE orders SET {', '.join(f'{field} = :{field}' for field in fields)} WHERE id = :id")


# The order path's statements. Upserts were plain SQL already: SQLAlchemy cannot cache a compiled
# ON CONFLICT statement, and compiling them on every order cost more CPU than running them.
_ORDER_EXISTS = Statement("SELECT 1 FROM orders WHERE id = :id")
_CLAIM_KEY = Statement(
    "INSERT INTO idempotency_keys (buyer_id, key, fingerprint) VALUES (:buyer_id, :key, :fingerprint) "
    "ON CONFLICT DO NOTHING RETURNING key"
)
_FIND_KEY = Statement(
    "SELECT fingerprint, response_status, response_body FROM idempotency_keys WHERE buyer_id = :buyer_id AND key = :key"
)
_LOCK_KEY = Statement(_FIND_KEY.sql + " FOR UPDATE")
# no index on created_at, as the inbox has none (shared/messaging/housekeeping.py): one would be written by every order
_PURGE_REFUSED_KEYS = Statement(
    """
    WITH aged AS (
        SELECT buyer_id, key FROM idempotency_keys
        WHERE created_at < now() - make_interval(secs => :retention) AND response_status >= 400
        LIMIT :batch FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM idempotency_keys AS k USING aged WHERE k.buyer_id = aged.buyer_id AND k.key = aged.key
        RETURNING 1
    )
    SELECT count(*) FROM gone
    """
)
_REMEMBER_RESPONSE = Statement(
    "UPDATE idempotency_keys SET response_status = :status, response_body = :body WHERE buyer_id = :buyer_id AND key = :key"
)
_RECORD_PAYMENT_EVENT = Statement(
    "INSERT INTO payment_events (provider_event_id, order_id, event_type) "
    "VALUES (:provider_event_id, :order_id, :event_type) ON CONFLICT DO NOTHING RETURNING provider_event_id"
)
_ORDER_COLUMNS = ("id", "buyer_id", "buyer_email", "drop_id", "sku", "product_name", "quantity", "unit_amount",
                  "currency", "shipping_address", "status", "hold_expires_at", "approval_url", "address_key",
                  "created_at")
# The order and the first step of its history, one round trip. The history row's foreign key is
# checked at the end of the statement, when the order row is there.
_INSERT_ORDER = Statement(
    f"WITH placed AS (INSERT INTO orders ({', '.join(_ORDER_COLUMNS)}) "
    f"VALUES ({', '.join(':' + column for column in _ORDER_COLUMNS)})) "
    "INSERT INTO order_transitions (order_id, from_status, to_status, reason, at) "
    "VALUES (:id, :from_status, :to_status, :reason, :at)"
)
_TAKE_ADDRESS_ALLOWANCE = Statement(
    "INSERT INTO address_allowances (drop_id, address_key, taken) VALUES (:drop_id, :address_key, :quantity) "
    "ON CONFLICT (drop_id, address_key) DO UPDATE SET taken = address_allowances.taken + :quantity "
    "WHERE address_allowances.taken + :quantity <= :limit RETURNING taken"
)


class Lines:
    """Drops' waiting rooms and their tickets (services/checkout/line.py)."""

    def __init__(self, session: orm.Session):
        self._session = session

    def get(self, drop_id: uuid.UUID, lock: bool = False) -> Line | None:
        return self._session.get(Line, drop_id, with_for_update=lock)

    def lock_next_due(self, states: tuple[str, ...], placing: bool = False) -> list[Line]:
        """The lines in `states` (and, with `placing`, those whose pre-queue's positions are still
        being written, whatever their state), each locked; one another admitter holds is
        skipped (replicas share the lines, never the same one at once). The lock (FOR NO KEY
        UPDATE) lets joins (FOR KEY SHARE) go on meanwhile."""
        wanted = Line.state.in_(states)
        if placing:
            wanted = sa.or_(wanted, Line.placed < Line.pre_queue_size)
        return list(self._session.scalars(
            sa.select(Line).where(wanted).order_by(Line.opens_at).with_for_update(skip_locked=True, key_share=True)
        ))

    def lock_to_open(self, drop_id: uuid.UUID) -> Line | None:
        """The line, locked as `lock_next_due` locks it, when it is still to open, its opening has
        come (an admin may have moved it since the turn looked) and no other admitter holds it."""
        return self._session.scalars(
            sa.select(Line).where(Line.drop_id == drop_id, Line.state == "pre_queue", Line.opens_at <= sa.func.now())
            .with_for_update(skip_locked=True, key_share=True).execution_options(populate_existing=True)
        ).first()

    def placing(self) -> list:
        """The opened lines whose pre-queue's positions are still being written: drop_id,
        opened_at, seed, pre_queue_size and pre_queue_last_arrival of each (read without a lock)."""
        return list(self._session.execute(_PLACING))

    def wait_for_joins(self, drop_id: uuid.UUID) -> None:
        """Lock the line against joins (FOR UPDATE): returns once every join in flight has
        committed, and holds later ones back until this transaction ends (the opening)."""
        self._session.execute(_LOCK_AGAINST_JOINS, {"drop_id": drop_id})

    def add(self, line: Line) -> None:
        """Put `line` on its drop unless the drop has one: one another admin is putting on at the
        same moment is waited for, and kept if it commits. Read the drop's line afterwards, with
        `get(drop_id, lock=True)`."""
        values = {column.key: getattr(line, column.key) for column in sa.inspect(Line).column_attrs
                  if getattr(line, column.key) is not None}
        self._session.execute(pg.insert(Line).values(**values).on_conflict_do_nothing(index_elements=[Line.drop_id]))

    def has_line(self, drop_id: uuid.UUID) -> bool:
        return _HAS_LINE.first(self._session, {"drop_id": drop_id}) is not None

    def ticket_and_line(self, drop_id: uuid.UUID, buyer_id: str):
        """A poll's one read: the buyer's ticket and what of its line a poll shows, as one row
        (attributes of both; `line.ticket_view` reads it), or None."""
        return self._session.execute(_TICKET_AND_LINE, {"drop_id": drop_id, "buyer_id": buyer_id}).first()

    def join_many(self, wanted: list) -> dict:
        """Insert a ticket for each (ticket id, line.JoinRequest), in one statement: ticket id ->
        the row `ticket_and_line` reads, for those made. A request is left out when its line
        is missing or closed or refuses the account's age, or the account has a ticket already.
        Joins share the line's row (FOR KEY SHARE) instead of queueing on it: the arrival
        number comes from a sequence and the admitter gives the position; the opening (FOR
        UPDATE) waits for the joins in flight, so it sees every join before it."""
        if not wanted:
            return {}
        rows = self._session.execute(_JOIN_MANY, {
            "ids": [ticket_id for ticket_id, _ in wanted],
            "drop_ids": [request.drop_id for _, request in wanted],
            "buyer_ids": [request.buyer_id for _, request in wanted],
            "created": [request.account_created_at for _, request in wanted],
        })
        return {row.id: row for row in rows}

    def joined(self, line: Line) -> int:
        """The tickets the line has taken: once it has opened, its pre-queue as counted then and
        the arrivals since (an index range of them, however big the pre-queue)."""
        if line.pre_queue_last_arrival is None:  # not opened yet, nobody in its pre-queue, or opened before 0009
            return self._session.execute(_COUNT, {"drop_id": line.drop_id}).scalar_one()
        return line.pre_queue_size + self._session.execute(
            _COUNT_ARRIVALS, {"drop_id": line.drop_id, "after": line.pre_queue_last_arrival}).scalar_one()

    def place_arrivals(self, drop_id: uuid.UUID, after: int, most: int) -> int:
        """Give the first `most` tickets without a position the next ones (`after` + 1, ...),
        in arrival order; returns how many were placed."""
        return len(self._session.execute(_PLACE_ARRIVALS, {"drop_id": drop_id, "after": after, "most": most}).all())

    def pre_queue_bounds(self, drop_id: uuid.UUID) -> tuple[int, int | None]:
        """At the opening, under the lock against joins: how many tickets joined, and the last
        arrival number among them (None: nobody joined)."""
        return tuple(self._session.execute(_PRE_QUEUE_BOUNDS, {"drop_id": drop_id}).one())

    def pre_queue(self, drop_id: uuid.UUID, last_arrival: int) -> list[uuid.UUID]:
        """The pre-queue's tickets (those that joined before the opening), placed or not."""
        return list(self._session.scalars(_PRE_QUEUE, {"drop_id": drop_id, "last_arrival": last_arrival}))

    def opening_within(self, seconds: float) -> list:
        """The lines still to open whose opening comes within `seconds` (or has come), the soonest
        first: drop_id and seed of each (read without a lock)."""
        return list(self._session.execute(_OPENING_WITHIN, {"seconds": seconds}))

    def arrivals_drawn(self) -> int:
        """The last arrival number drawn so far, by any line's join (committed or not)."""
        return self._session.execute(_ARRIVALS_DRAWN).scalar_one()

    def pre_queue_ahead(self, drop_id: uuid.UUID, after: int, most: int | None) -> list:
        """Up to `most` (None: all) of the line's tickets with an arrival number above `after`, in
        arrival order: id and arrival of each. Once the line has opened (in the statement's own
        snapshot), only its pre-queue's: those up to its last pre-queue arrival (a line opened
        with nobody in its pre-queue has none, and is never read ahead)."""
        return list(self._session.execute(_PRE_QUEUE_AHEAD, {"drop_id": drop_id, "after": after, "most": most}))

    def place(self, positions: list[tuple[uuid.UUID, int]]) -> None:
        if positions:
            self._session.execute(_PLACE, {"ids": [ticket_id for ticket_id, _ in positions],
                                           "positions": [position for _, position in positions]})

    def admission_order(self, drop_id: uuid.UUID, limit: int, offset: int) -> list[uuid.UUID]:
        """The pre-queue's tickets by position (the order anyone can recompute from the seed)."""
        line = self.get(drop_id)
        return list(self._session.scalars(
            sa.select(LineTicket.id)
            .where(LineTicket.drop_id == drop_id, LineTicket.position <= (line.pre_queue_size if line else 0))
            .order_by(LineTicket.position).limit(limit).offset(offset)
        ))

    def active_pass_holders(self, drop_id: uuid.UUID, now) -> list[str]:
        """The admitted buyers whose pass is neither used nor expired."""
        return list(self._session.scalars(_ACTIVE_PASS_HOLDERS, {"drop_id": drop_id, "now": now}))

    def admitted_after(self, drop_id: uuid.UUID, after: int, through: int) -> list[str]:
        """The buyers admitted at a position past `after`, up to `through`, the line's last
        admitted position (admissions go by position: none beyond it), their pass used, expired
        or not. Without that bound each turn read every waiting ticket of the line."""
        return list(self._session.scalars(_ADMITTED_AFTER, {"drop_id": drop_id, "after": after, "through": through}))

    def admit_next(self, drop_id: uuid.UUID, after: int, count: int, now, expires_at) -> list[int]:
        """Admit the next `count` waiting positions past `after`, the line's last admitted one;
        returns the positions admitted."""
        if count <= 0:
            return []
        return list(self._session.scalars(_ADMIT_NEXT, {"drop_id": drop_id, "after": after, "count": count,
                                                        "now": now, "expires_at": expires_at}))

    def lengthen_passes(self, drop_id: uuid.UUID, closes_at: datetime, ttl_seconds: int, now) -> int:
        """Passes still running that were cut short by an earlier close of the drop run their
        whole time again, up to `closes_at`, the close now: how many."""
        return self._session.execute(_LENGTHEN_PASSES, {"drop_id": drop_id, "closes_at": closes_at,
                                                        "ttl": ttl_seconds, "now": now}).rowcount

    def clock(self) -> datetime:
        """The database's time at this transaction's start: one clock for every admitter replica,
        whatever their own clocks say (the lines' pace is kept by it)."""
        return self._session.execute(_TRANSACTION_TIME).scalar_one()

    def checkout_refusals(self) -> dict[str, int]:
        """Each live checkout API process's refusals so far (load_shedding.LoadReport)."""
        return dict(self._session.execute(_CHECKOUT_REFUSALS).all())

    def use_pass(self, ticket_id: uuid.UUID, drop_id: uuid.UUID, buyer_id: str) -> str | None:
        """Use the pass up for an order: None when done, else why not ("used" or "expired")."""
        used = self._session.execute(_USE_PASS, {"ticket_id": ticket_id, "drop_id": drop_id, "buyer_id": buyer_id}).first()
        if used is not None:
            return None
        ticket = self._session.get(LineTicket, ticket_id)
        return "used" if ticket is not None and ticket.used_at is not None else "expired"


class CheckoutUnitOfWork(db.UnitOfWork):
    """The shared unit of work plus checkout's repositories on its session."""

    orders: Orders
    idempotency_keys: IdempotencyKeys
    address_allowances: AddressAllowances
    payment_events: PaymentEvents
    lines: Lines
    admin_actions: AdminActions

    def __enter__(self) -> "CheckoutUnitOfWork":
        super().__enter__()
        self.orders = Orders(self.session)
        self.idempotency_keys = IdempotencyKeys(self.session)
        self.address_allowances = AddressAllowances(self.session)
        self.payment_events = PaymentEvents(self.session)
        self.lines = Lines(self.session)
        self.admin_actions = AdminActions(self.session)
        return self

    def commit(self) -> None:
        try:
            self.orders.write_changes()
            super().commit()
        finally:
            self.orders.forget_changes()

    def rollback(self) -> None:
        self.orders.forget_changes()
        super().rollback()


# A drop's orders are found by their index on drop_id (the control room asks every 2 s).
_TALLY = sa.text(
    "SELECT status, count(*) AS orders, "
    "count(*) FILTER (WHERE created_at > now() - make_interval(secs => :recent)) AS recent "
    "FROM orders WHERE drop_id = :drop_id GROUP BY status"
).bindparams(sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)))

# The waiting room's statements (services/checkout/line.py).
_UUIDS = (sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)),)
_HAS_LINE = Statement("SELECT 1 FROM lines WHERE drop_id = :drop_id")
_POLLED = ("line_tickets.id, line_tickets.drop_id, line_tickets.buyer_id, line_tickets.position, "
           "line_tickets.admitted_at, line_tickets.pass_expires_at, line_tickets.used_at")
_LINE_SHOWN = ("lines.state, lines.opens_at, lines.remaining_units, lines.admitted_through, lines.observed_rate, "
               "lines.placed, lines.pre_queue_size, lines.joined")
_TICKET_AND_LINE = sa.text(
    f"SELECT {_POLLED}, {_LINE_SHOWN} FROM line_tickets JOIN lines ON lines.drop_id = line_tickets.drop_id "
    "WHERE line_tickets.drop_id = :drop_id AND line_tickets.buyer_id = :buyer_id"
).bindparams(*_UUIDS)
_JOIN_MANY = sa.text(
    "WITH wanted AS ("
    " SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:drop_ids AS uuid[]), CAST(:buyer_ids AS text[]),"
    " CAST(:created AS timestamptz[])) AS wanted(id, drop_id, buyer_id, account_created_at)),"
    " lines AS ("
    " SELECT drop_id, state, opens_at, remaining_units, admitted_through, observed_rate, placed, pre_queue_size,"
    " joined, accounts_created_before"
    " FROM lines WHERE drop_id IN (SELECT drop_id FROM wanted) AND state <> 'closed' FOR KEY SHARE),"
    " line_tickets AS ("
    " INSERT INTO line_tickets (id, drop_id, buyer_id, arrival)"
    " SELECT wanted.id, wanted.drop_id, wanted.buyer_id, nextval('line_arrivals') FROM wanted"
    " JOIN lines ON lines.drop_id = wanted.drop_id"
    " WHERE lines.accounts_created_before IS NULL OR wanted.account_created_at <= lines.accounts_created_before"
    " ON CONFLICT (drop_id, buyer_id) DO NOTHING"
    " RETURNING id, drop_id, buyer_id, position, admitted_at, pass_expires_at, used_at)"
    f" SELECT {_POLLED}, {_LINE_SHOWN} FROM line_tickets JOIN lines ON lines.drop_id = line_tickets.drop_id"
)
_PLACING = sa.text(
    "SELECT drop_id, opened_at, seed, pre_queue_size, pre_queue_last_arrival FROM lines WHERE placed < pre_queue_size")
_LOCK_AGAINST_JOINS = sa.text("SELECT 1 FROM lines WHERE drop_id = :drop_id FOR UPDATE").bindparams(*_UUIDS)
_COUNT = sa.text("SELECT count(*) FROM line_tickets WHERE drop_id = :drop_id").bindparams(*_UUIDS)
_COUNT_ARRIVALS = sa.text(
    "SELECT count(*) FROM line_tickets WHERE drop_id = :drop_id AND arrival > :after").bindparams(*_UUIDS)
_PRE_QUEUE_BOUNDS = sa.text(
    "SELECT count(*), max(arrival) FROM line_tickets WHERE drop_id = :drop_id").bindparams(*_UUIDS)
_PRE_QUEUE = sa.text(
    "SELECT id FROM line_tickets WHERE drop_id = :drop_id AND arrival <= :last_arrival").bindparams(*_UUIDS)
_OPENING_WITHIN = sa.text(
    "SELECT drop_id, seed FROM lines WHERE state = 'pre_queue' AND opens_at <= now() + make_interval(secs => :seconds)"
    " ORDER BY opens_at")
_ARRIVALS_DRAWN = sa.text("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM line_arrivals")
# the bound is a scalar subquery, so the read is a range of the (drop_id, arrival) index
_PRE_QUEUE_AHEAD = sa.text(
    "SELECT id, arrival FROM line_tickets WHERE drop_id = :drop_id AND arrival > :after"
    " AND arrival <= coalesce((SELECT pre_queue_last_arrival FROM lines WHERE drop_id = :drop_id), 2147483647)"
    " ORDER BY arrival LIMIT :most"
).bindparams(*_UUIDS)
_PLACE_ARRIVALS = sa.text(
    "UPDATE line_tickets SET position = :after + newcomers.n FROM ("
    " SELECT id, row_number() OVER (ORDER BY arrival) AS n FROM line_tickets"
    " WHERE drop_id = :drop_id AND position IS NULL ORDER BY arrival LIMIT :most) AS newcomers"
    " WHERE line_tickets.id = newcomers.id RETURNING line_tickets.position"
).bindparams(*_UUIDS)
_PLACE = sa.text(
    "UPDATE line_tickets SET position = placed.position "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:positions AS integer[])) AS placed(id, position) "
    "WHERE line_tickets.id = placed.id"
)
_ACTIVE_PASS_HOLDERS = sa.text(
    "SELECT buyer_id FROM line_tickets WHERE drop_id = :drop_id AND used_at IS NULL "
    "AND pass_expires_at > :now"
).bindparams(*_UUIDS)
_TRANSACTION_TIME = sa.text("SELECT now()")
_ADMITTED_AFTER = sa.text(
    "SELECT buyer_id FROM line_tickets WHERE drop_id = :drop_id AND position > :after AND position <= :through "
    "AND admitted_at IS NOT NULL"
).bindparams(*_UUIDS)
_ADMIT_NEXT = sa.text(
    "UPDATE line_tickets SET admitted_at = :now, pass_expires_at = :expires_at WHERE id IN ("
    " SELECT id FROM line_tickets WHERE drop_id = :drop_id AND admitted_at IS NULL AND position > :after"
    " ORDER BY position LIMIT :count FOR UPDATE) RETURNING position"
).bindparams(*_UUIDS)
# over the index line_tickets_active: the passes still running, a few per unit left
_LENGTHEN_PASSES = sa.text(
    "UPDATE line_tickets SET pass_expires_at = LEAST(admitted_at + make_interval(secs => :ttl), :closes_at) "
    "WHERE drop_id = :drop_id AND used_at IS NULL AND pass_expires_at > :now "
    "AND pass_expires_at < LEAST(admitted_at + make_interval(secs => :ttl), :closes_at)"
).bindparams(*_UUIDS)
_USE_PASS = sa.text(
    "UPDATE line_tickets SET used_at = now() WHERE id = :ticket_id AND drop_id = :drop_id AND buyer_id = :buyer_id "
    "AND used_at IS NULL AND pass_expires_at > now() RETURNING id"
).bindparams(sa.bindparam("ticket_id", type_=pg.UUID(as_uuid=True)), *_UUIDS)
_CHECKOUT_REFUSALS = sa.text("SELECT process, refused FROM checkout_load WHERE updated_at > now() - interval '30 seconds'")

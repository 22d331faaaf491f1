"""Where orders, idempotency keys, address allowances and payment events are kept, behind the
unit of work the handlers receive.

The order path's statements are written once, here, and sent as they are: `POST /orders` and
the payment webhook are measured per statement, so each method is one round trip (two for a new
order: the order and the first step of its history) and nothing goes through the ORM's flush.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.checkout.models import AddressAllowance, Order, OrderTransition
from shared import db
from shared.values import uuid_or_none


class Orders:
    def __init__(self, session: orm.Session):
        self._session = session

    def get(self, order_id: str | uuid.UUID, lock: bool = False) -> Order | None:
        """The order with its history (locked until the transaction ends with `lock`); None for
        an id that names nothing, malformed ones included."""
        order_uuid = uuid_or_none(order_id)
        if order_uuid is None:
            return None
        return self._session.get(Order, order_uuid, with_for_update=lock)

    def add(self, order: Order) -> None:
        """Insert a new order and the first step of its history. `order` stays out of the
        session: Core inserts of it cost less than the ORM's flush of it."""
        self._session.execute(_INSERT_ORDER, {column: getattr(order, column) for column in _ORDER_COLUMNS})
        first = order.history[0]
        self._session.execute(_INSERT_TRANSITION, {"order_id": order.id, "from_status": first.from_status,
                                                   "to_status": first.to_status, "reason": first.reason,
                                                   "at": first.at})

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
            if self._session.execute(_CLAIM_KEY, params).first():
                return None
            held = self._session.execute(_LOCK_KEY, params).first()
            if held is not None:
                return KeyHeld(held.fingerprint, held.response_status, held.response_body)

    def answer(self, buyer_id: str, key: str, status: int, body: str) -> None:
        """Keep `status` and `body` as the key's answer."""
        self._session.execute(_REMEMBER_RESPONSE, {"buyer_id": buyer_id, "key": key, "status": status, "body": body})


class AddressAllowances:
    def __init__(self, session: orm.Session):
        self._session = session

    def take(self, drop_id: uuid.UUID, address_key: str, quantity: int, limit: int) -> bool:
        """Count `quantity` more units of the drop for the address, unless that would pass
        `limit`; whether they were counted. Atomic across concurrent orders."""
        taken = self._session.execute(
            _TAKE_ADDRESS_ALLOWANCE,
            {"drop_id": drop_id, "address_key": address_key, "quantity": quantity, "limit": limit},
        ).first()
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
        first_time = self._session.execute(
            _RECORD_PAYMENT_EVENT, {"provider_event_id": provider_event_id, "order_id": order_id, "event_type": event_type}
        ).first()
        return first_time is not None


# The order path's upserts as plain SQL: SQLAlchemy cannot cache a compiled ON CONFLICT statement,
# and compiling them on every order cost more CPU than running them.
_CLAIM_KEY = sa.text(
    "INSERT INTO idempotency_keys (buyer_id, key, fingerprint) VALUES (:buyer_id, :key, :fingerprint) "
    "ON CONFLICT DO NOTHING RETURNING key"
)
_LOCK_KEY = sa.text(
    "SELECT fingerprint, response_status, response_body FROM idempotency_keys "
    "WHERE buyer_id = :buyer_id AND key = :key FOR UPDATE"
)
_REMEMBER_RESPONSE = sa.text(
    "UPDATE idempotency_keys SET response_status = :status, response_body = :body WHERE buyer_id = :buyer_id AND key = :key"
)
_RECORD_PAYMENT_EVENT = sa.text(
    "INSERT INTO payment_events (provider_event_id, order_id, event_type) "
    "VALUES (:provider_event_id, :order_id, :event_type) ON CONFLICT DO NOTHING RETURNING provider_event_id"
).bindparams(sa.bindparam("order_id", type_=pg.UUID(as_uuid=True)))
_INSERT_ORDER = Order.__table__.insert()
_ORDER_COLUMNS = ("id", "buyer_id", "buyer_email", "drop_id", "sku", "product_name", "quantity", "unit_amount",
                  "currency", "shipping_address", "status", "hold_expires_at", "approval_url", "address_key",
                  "created_at")
_INSERT_TRANSITION = OrderTransition.__table__.insert()
_TAKE_ADDRESS_ALLOWANCE = sa.text(
    "INSERT INTO address_allowances (drop_id, address_key, taken) VALUES (:drop_id, :address_key, :quantity) "
    "ON CONFLICT (drop_id, address_key) DO UPDATE SET taken = address_allowances.taken + :quantity "
    "WHERE address_allowances.taken + :quantity <= :limit RETURNING taken"
)


class CheckoutUnitOfWork(db.UnitOfWork):
    """The shared unit of work plus checkout's repositories on its session."""

    orders: Orders
    idempotency_keys: IdempotencyKeys
    address_allowances: AddressAllowances
    payment_events: PaymentEvents

    def __enter__(self) -> "CheckoutUnitOfWork":
        super().__enter__()
        self.orders = Orders(self.session)
        self.idempotency_keys = IdempotencyKeys(self.session)
        self.address_allowances = AddressAllowances(self.session)
        self.payment_events = PaymentEvents(self.session)
        return self

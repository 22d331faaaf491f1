"""What callers ask the inventory to do, as plain values the schemas build and handlers take."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AddProduct:
    sku: str
    name: str
    description: str
    price_amount: int
    currency: str


@dataclass(frozen=True)
class ScheduleDrop:
    product_id: uuid.UUID
    quantity: int
    opens_at: datetime
    closes_at: datetime
    per_buyer_limit: int = 1
    invite_only_until: datetime | None = None
    invite_tier: str | None = None
    shipping_countries: tuple[str, ...] = ()
    # None: the service's DEFAULT_STOCK_SHARDS.
    stock_shards: int | None = None
    # None: the service's HOLD_TTL_SECONDS.
    hold_ttl_seconds: int | None = None


@dataclass(frozen=True)
class ChangeDrop:
    """An admin moving a drop's opening (before it opens) or close, adding stock and/or moving or
    correcting its invite-only phase; at least one is given."""

    opens_at: datetime | None = None
    closes_at: datetime | None = None
    invite_only_until: datetime | None = None
    add_quantity: int | None = None
    invite_tier: str | None = None


@dataclass(frozen=True)
class ReserveStock:
    order_id: uuid.UUID
    drop_id: uuid.UUID
    buyer_id: str
    quantity: int
    buyer_tier: str | None = None
    shipping_country: str | None = None
    # Hold a released reservation's units again (a payment that arrived after its hold expired).
    renew: bool = False
    # The order's version once this hold serves it (see Reservation.order_version); None: 1.
    order_version: int | None = None
    # Hold only during the drop's invite-only phase (checkout's order without a line pass on a
    # drop with a line: only the invited tier orders without one, and only then).
    invited_only: bool = False

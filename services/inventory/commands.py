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


@dataclass(frozen=True)
class ReserveStock:
    order_id: uuid.UUID
    drop_id: uuid.UUID
    buyer_id: str
    quantity: int

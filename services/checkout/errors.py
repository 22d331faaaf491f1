"""Checkout's typed errors; shared.errors renders them as problem+json."""
from shared.errors import Conflict, NotFound, Problem, RetryLater, ServiceUnavailable, Unauthorized
# A drop's refusals: inventory makes them, checkout passes them on; declared once in shared.errors.
from shared.errors import CountryNotAllowed, DropNotFound, InviteOnly, LimitExceeded, SaleNotOpen, SoldOut


class InventoryUnavailable(ServiceUnavailable):
    slug, title = "inventory-unavailable", "Inventory is not answering"


class IdempotencyKeyReused(Problem):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key already used for another request"


class OrderNotFound(NotFound):
    slug, title = "order-not-found", "No such order"


class InvalidTransition(Conflict):
    slug, title = "invalid-transition", "The order cannot make that change"


class InvalidSignature(Unauthorized):
    slug, title = "invalid-signature", "Webhook signature is missing, wrong or stale"


class AddressLimitReached(Problem):
    status, slug, title = 409, "address-limit-exceeded", "Purchase limit reached for this shipping address"


class TooBusy(RetryLater):
    status, slug, title = 429, "too-busy", "Checkout is at capacity"


__all__ = [
    "AddressLimitReached",
    "CountryNotAllowed",
    "DropNotFound",
    "IdempotencyKeyReused",
    "InvalidSignature",
    "InvalidTransition",
    "InventoryUnavailable",
    "InviteOnly",
    "LimitExceeded",
    "OrderNotFound",
    "SaleNotOpen",
    "SoldOut",
    "TooBusy",
]

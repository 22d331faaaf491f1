"""Checkout's typed errors; shared.errors renders them as problem+json."""
from shared.errors import Conflict, NotFound, Problem, RetryLater, ServiceUnavailable, Unauthorized


class SoldOut(Problem):
    status, slug, title = 409, "sold-out", "Sold out"


class SaleNotOpen(Problem):
    status, slug, title = 403, "not-open", "The drop is not open"


class DropNotFound(Problem):
    status, slug, title = 404, "drop-not-found", "No such drop"


class LimitExceeded(Problem):
    status, slug, title = 409, "limit-exceeded", "Purchase limit reached"


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


class InviteOnly(Problem):
    status, slug, title = 403, "invite-only", "The drop is open to invited buyers only for now"


class CountryNotAllowed(Problem):
    status, slug, title = 422, "country-not-allowed", "The drop does not ship to that country"


class AddressLimitReached(Problem):
    status, slug, title = 409, "address-limit-exceeded", "Purchase limit reached for this shipping address"


class TooBusy(RetryLater):
    status, slug, title = 429, "too-busy", "Checkout is at capacity"

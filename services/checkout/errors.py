"""Checkout's typed errors; shared.errors renders them as problem+json."""
from shared.errors import Conflict, Forbidden, NotFound, Problem, RetryLater, ServiceUnavailable, Unauthorized
# A drop's refusals: inventory makes them, checkout passes them on; declared once in shared.errors.
from shared.errors import (CountryNotAllowed, DropNotFound, InviteOnly, LimitExceeded, NotEnoughStock,
                           NotInvitePhase, SaleNotOpen, SoldOut)


class InventoryUnavailable(ServiceUnavailable):
    slug, title = "inventory-unavailable", "Inventory is not answering"


class OrderChanging(ServiceUnavailable):
    """A late payment's order changed between inventory's renewal and its transaction, again and
    again: nothing was applied, and the provider sends the webhook again."""

    slug, title = "order-changing", "The order changed while the payment was applied"


class IdempotencyKeyReused(Problem):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key already used for another request"
    default_detail = "This Idempotency-Key was sent with a different request body."


class OrderNotFound(NotFound):
    slug, title = "order-not-found", "No such order"


class StaleOrderVersion(Conflict):
    """Inventory's answer to a sale for an older state of the order than the one that gave its
    units back (a cancel committed between the payment's commit and its sale)."""

    slug, title = "stale-order-version", "Out-of-date order version"


class InvalidTransition(Conflict):
    slug, title = "invalid-transition", "The order cannot make that change"


class InvalidSignature(Unauthorized):
    slug, title = "invalid-signature", "Webhook signature is missing, wrong or stale"


class AddressLimitReached(Problem):
    status, slug, title = 409, "address-limit-exceeded", "Purchase limit reached for this shipping address"


class HoldReleased(SoldOut):
    """Inventory answered an order id with its hold given back (run out, or released after a
    refusal): sold out to the payment that came for it; a new attempt of the order holds again."""


class TooBusy(RetryLater):
    status, slug, title = 429, "too-busy", "Checkout is at capacity"


# --- the waiting room (services/checkout/line.py) -----------------------------------------------

class LineNotFound(NotFound):
    slug, title = "line-not-found", "This drop has no line"


class TicketNotFound(NotFound):
    slug, title = "ticket-not-found", "You have no ticket in this line"


class LineClosed(Conflict):
    slug, title = "line-closed", "The line is closed"


class DropClosed(Conflict):
    slug, title = "drop-closed", "The drop has closed"


class LineNotOpenYet(Conflict):
    slug, title = "line-not-open-yet", "The line has not opened yet"


class LineAlreadyOpen(Conflict):
    slug, title = "line-already-open", "The line has opened"


class LineBeingPlaced(ServiceUnavailable):
    """A big pre-queue's positions are written over the admitter's first turns after the
    opening; its admission order is served a page at a time as they are."""

    slug, title = "line-being-placed", "The line's positions are still being written"


class AccountTooNew(Forbidden):
    slug, title = "account-too-new", "The line takes only accounts created before it opened for joining"


class JoinThrottled(RetryLater):
    status, slug, title = 429, "too-many-joins", "Too many joins from this client"


class LinePassRefused(Forbidden):
    """A refused `Line-Pass`. Never kept as the Idempotency-Key's answer: the key's fingerprint is
    the body, not the header, and the same order with a valid pass must go through."""

    remembered = False


class LinePassRequired(LinePassRefused):
    slug, title = "line-pass-required", "This drop has a line: order with the pass it gave you"


class LinePassInvalid(LinePassRefused):
    slug, title = "line-pass-invalid", "The admission pass is not valid for this buyer and drop"


class LinePassExpired(LinePassRefused):
    slug, title = "line-pass-expired", "The admission pass has expired"


class LinePassUsed(LinePassRefused):
    status, slug, title = 409, "line-pass-used", "The admission pass has been used"


__all__ = [
    "AccountTooNew",
    "AddressLimitReached",
    "CountryNotAllowed",
    "DropNotFound",
    "HoldReleased",
    "IdempotencyKeyReused",
    "InvalidSignature",
    "InvalidTransition",
    "InventoryUnavailable",
    "InviteOnly",
    "JoinThrottled",
    "LimitExceeded",
    "LineAlreadyOpen",
    "LineBeingPlaced",
    "LineClosed",
    "LineNotFound",
    "LineNotOpenYet",
    "LinePassExpired",
    "LinePassInvalid",
    "LinePassRefused",
    "LinePassRequired",
    "LinePassUsed",
    "OrderNotFound",
    "NotEnoughStock",
    "NotInvitePhase",
    "SaleNotOpen",
    "SoldOut",
    "TooBusy",
]

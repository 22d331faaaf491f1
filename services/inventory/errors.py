"""The inventory's domain errors; `shared.errors` renders them as problem+json."""
from shared.errors import Conflict, InvalidRequest, NotFound
# A drop's refusals: inventory makes them, checkout passes them on; declared once in shared.errors.
from shared.errors import (CountryNotAllowed, DropNotFound, InviteOnly, LimitExceeded, NotEnoughStock,
                           NotInvitePhase, SaleNotOpen, SoldOut)


class ProductNotFound(NotFound):
    slug, title = "product-not-found", "Product not found"


class ReservationNotFound(NotFound):
    slug, title = "reservation-not-found", "Reservation not found"


class SkuTaken(Conflict):
    slug, title = "sku-taken", "SKU already in use"


class ReservationSold(Conflict):
    slug, title = "reservation-sold", "Reservation already sold"


class StaleOrderVersion(Conflict):
    """A sale or renewal for an older state of the order than the one that released its units (a
    request that arrived after checkout had given up on it, and the buyer had cancelled since)."""

    slug, title = "stale-order-version", "Out-of-date order version"
    default_detail = "A newer state of this order gave its units back; this request is out of date."


class InvalidDrop(InvalidRequest):
    """A drop whose schedule or product makes no sense; reported like any validation problem."""

    def __init__(self, field: str, message: str):
        super().__init__("One or more fields are invalid.", errors={field: [message]})


__all__ = [
    "CountryNotAllowed",
    "DropNotFound",
    "InvalidDrop",
    "InviteOnly",
    "LimitExceeded",
    "ProductNotFound",
    "ReservationNotFound",
    "ReservationSold",
    "NotEnoughStock",
    "NotInvitePhase",
    "SaleNotOpen",
    "SkuTaken",
    "SoldOut",
    "StaleOrderVersion",
]

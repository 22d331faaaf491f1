"""The inventory's domain errors; `shared.errors` renders them as problem+json."""
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound


class ProductNotFound(NotFound):
    slug, title = "product-not-found", "Product not found"


class DropNotFound(NotFound):
    slug, title = "drop-not-found", "Drop not found"


class ReservationNotFound(NotFound):
    slug, title = "reservation-not-found", "Reservation not found"


class SkuTaken(Conflict):
    slug, title = "sku-taken", "SKU already in use"


class SaleNotOpen(Forbidden):
    slug, title = "not-open", "The drop is not open"


class SoldOut(Conflict):
    slug, title = "sold-out", "Sold out"


class LimitExceeded(Conflict):
    slug, title = "limit-exceeded", "Per-buyer limit exceeded"


class ReservationSold(Conflict):
    slug, title = "reservation-sold", "Reservation already sold"


class InvalidDrop(InvalidRequest):
    """A drop whose schedule or product makes no sense; reported like any validation problem."""

    def __init__(self, field: str, message: str):
        super().__init__("One or more fields are invalid.", errors={field: [message]})


class InviteOnly(Forbidden):
    slug, title = "invite-only", "The drop is open to invited buyers only"


class CountryNotAllowed(InvalidRequest):
    slug, title = "country-not-allowed", "The drop does not ship to this country"

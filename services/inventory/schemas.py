"""What goes over the wire: request validation and response documents."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, post_load, validate, validates_schema, ValidationError

from services.inventory.commands import AddProduct, ChangeDrop, ReserveStock, ScheduleDrop
from services.inventory.models import MAX_STOCK_SHARDS
from shared import addresses
from shared.fields import INVITE_TIER, Pattern, SCHEDULE_RANGE, StrictBoolean

MAX_QUANTITY = 1_000_000
MAX_HOLD_TTL_SECONDS = 86_400
COUNTRY_CODE = Pattern(r"^[A-Z]{2}$", error="Use an ISO 3166-1 alpha-2 code such as CA.")
# A buyer's tier as checkout read it from their token: compared with the drop's, never stored,
# so one spelled otherwise is simply not admitted, rather than a 422 for the buyer.
BUYER_TIER = validate.Length(min=1, max=64)


def _a_country(code: str) -> None:
    """A drop that allows a code no address has ("UK", "XX") refuses every buyer it meant."""
    if COUNTRY_CODE.regex.fullmatch(code) and not addresses.ships_to(code):
        raise ValidationError(f"{code} is no country an address can be in (the United Kingdom is GB).")


class PriceSchema(Schema):
    amount = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=10**12))
    currency = fields.String(
        required=True, validate=Pattern(r"^[A-Z]{3}$", error="Use an ISO 4217 code such as EUR.")
    )


class NewProductSchema(Schema):
    sku = fields.String(
        required=True, validate=Pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", error="1 to 64 letters, digits, '.', '_' or '-'.")
    )
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="", validate=validate.Length(max=10_000))
    price = fields.Nested(PriceSchema, required=True)

    @post_load
    def to_command(self, data, **kwargs) -> AddProduct:
        return AddProduct(
            sku=data["sku"],
            name=data["name"],
            description=data["description"],
            price_amount=data["price"]["amount"],
            currency=data["price"]["currency"],
        )


class ProductSchema(Schema):
    id = fields.UUID()
    sku = fields.String()
    name = fields.String()
    description = fields.String()
    price = fields.Nested(PriceSchema)


class ProductSummarySchema(Schema):
    id = fields.UUID()
    sku = fields.String()
    name = fields.String()
    price = fields.Nested(PriceSchema)


class ProductRefSchema(Schema):
    id = fields.UUID()
    sku = fields.String()
    name = fields.String()


class NewDropSchema(Schema):
    product_id = fields.UUID(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    # An offset is required: a drop opening at "15:00" in nobody's time zone is a support ticket.
    opens_at = fields.AwareDateTime(required=True, validate=SCHEDULE_RANGE)
    closes_at = fields.AwareDateTime(required=True, validate=SCHEDULE_RANGE)
    per_buyer_limit = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    # Until this time only buyers of `invite_tier` may reserve; both or neither.
    invite_only_until = fields.AwareDateTime(load_default=None, allow_none=True, validate=SCHEDULE_RANGE)
    # Spelled as accounts issues tiers (compared exactly: "Early-Access" would admit nobody).
    invite_tier = fields.String(load_default=None, allow_none=True, validate=INVITE_TIER)
    # Empty: ships everywhere.
    shipping_countries = fields.List(
        fields.String(validate=[COUNTRY_CODE, _a_country]), load_default=list, validate=validate.Length(max=250)
    )
    stock_shards = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_STOCK_SHARDS)
    )
    hold_ttl_seconds = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_HOLD_TTL_SECONDS)
    )

    @validates_schema
    def window_not_empty(self, data, **kwargs) -> None:
        if "opens_at" in data and "closes_at" in data and data["closes_at"] <= data["opens_at"]:
            raise ValidationError("The drop must close after it opens.", field_name="closes_at")

    @validates_schema
    def invite_phase_complete(self, data, **kwargs) -> None:
        until, tier = data.get("invite_only_until"), data.get("invite_tier")
        if (until is None) != (tier is None):
            missing = "invite_tier" if tier is None else "invite_only_until"
            raise ValidationError("An invite-only phase needs both invite_only_until and invite_tier.", field_name=missing)
        if until is not None and "opens_at" in data and until <= data["opens_at"]:
            raise ValidationError("The invite-only phase must end after the drop opens.", field_name="invite_only_until")

    @post_load
    def to_command(self, data, **kwargs) -> ScheduleDrop:
        return ScheduleDrop(**{**data, "shipping_countries": tuple(sorted(set(data["shipping_countries"])))})


class ChangeDropSchema(Schema):
    # a drop postponed or brought forward, until it opens (Drop.check_new_window)
    opens_at = fields.AwareDateTime(validate=SCHEDULE_RANGE)
    closes_at = fields.AwareDateTime(validate=SCHEDULE_RANGE)
    add_quantity = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    # the invite-only phase's end and tier, moved or corrected while the phase lasts
    # (Drop.check_new_window, Drop.check_new_tier)
    invite_only_until = fields.AwareDateTime(validate=SCHEDULE_RANGE)
    invite_tier = fields.String(validate=INVITE_TIER)

    @validates_schema
    def something_to_change(self, data, **kwargs) -> None:
        if not data:
            raise ValidationError("Give opens_at, closes_at, add_quantity, invite_only_until, invite_tier or several.",
                                  field_name="_schema")

    @post_load
    def to_command(self, data, **kwargs) -> ChangeDrop:
        return ChangeDrop(**data)


class DropSchema(Schema):
    id = fields.UUID()
    product = fields.Nested(ProductSummarySchema)
    quantity = fields.Integer()
    remaining = fields.Integer()
    state = fields.String()
    opens_at = fields.DateTime()
    closes_at = fields.DateTime()
    per_buyer_limit = fields.Integer()
    restocked = fields.Integer()
    invite_only_until = fields.DateTime(allow_none=True)
    invite_tier = fields.String(allow_none=True)
    shipping_countries = fields.List(fields.String())
    stock_shards = fields.Integer()
    hold_ttl_seconds = fields.Integer(allow_none=True)


class DropStockSchema(Schema):
    drop_id = fields.UUID()
    total = fields.Integer(metadata={"description": "units the drop ever had: quantity and restocks"})
    remaining = fields.Integer(metadata={"description": "units nobody holds: what `GET /drops/{id}` calls remaining"})
    held = fields.Integer(metadata={"description": "units held for orders awaiting payment"})
    sold = fields.Integer(metadata={"description": "units sold (paid); total = remaining + held + sold"})


class ReservationRequestSchema(Schema):
    class Meta:
        # Service-to-service: a newer checkout may send fields this inventory does not know yet.
        unknown = EXCLUDE

    order_id = fields.UUID(required=True)
    drop_id = fields.UUID(required=True)
    buyer_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    # The buyer's early-access tier (from their token), checked during an invite-only phase.
    buyer_tier = fields.String(load_default=None, allow_none=True, validate=BUYER_TIER)
    # Where the order ships, checked against the drop's shipping countries.
    shipping_country = fields.String(load_default=None, allow_none=True, validate=COUNTRY_CODE)
    # True: a released reservation with this order id is held again (late payment); null = false.
    renew = StrictBoolean(load_default=False, allow_none=True)
    # The order's version once this hold serves it: order events older than that are ignored.
    order_version = fields.Integer(load_default=None, allow_none=True, strict=True,
                                   validate=validate.Range(min=1, max=2**31 - 1))
    # True: hold only during the drop's invite-only phase, else 403 `not-invite-phase`; null = false.
    invited_only = StrictBoolean(load_default=False, allow_none=True)

    @post_load
    def to_command(self, data, **kwargs) -> ReserveStock:
        return ReserveStock(**{**data, "renew": bool(data["renew"]), "invited_only": bool(data["invited_only"])})


class BatchedReservationRequestSchema(ReservationRequestSchema):
    # The request at checkout the hold serves, for inventory's log line of it.
    request_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))

    @post_load
    def to_command(self, data, **kwargs) -> tuple[ReserveStock, str | None]:
        request_id = data.pop("request_id")
        return super().to_command(data, **kwargs), request_id


MAX_HOLDS_PER_BATCH = 64
# the buyers one `POST /drops/{id}/holders` asks about: a line's admitted buyers whose passes are unused
MAX_HOLDERS_ASKED = 100_000
HOLDERS_MAX_BODY_BYTES = MAX_HOLDERS_ASKED * (128 + 3) + 1024  # that many ids of the longest, quoted


class HoldersRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    buyer_ids = fields.List(fields.String(validate=validate.Length(min=1, max=128)), required=True,
                            validate=validate.Length(max=MAX_HOLDERS_ASKED))


class HoldersSchema(Schema):
    drop_id = fields.UUID()
    remaining = fields.Integer(metadata={"description": "units nobody holds, as `GET /drops/{id}` says"})
    holding = fields.Integer(metadata={"description": "how many of the buyers asked about hold or bought a unit "
                                                      "of the drop, read with `remaining` in one statement"})
    opens_at = fields.DateTime(metadata={"description": "when the drop's window opens (the admitter admits nobody "
                                                       "before: a pass would run out before its order could be placed)"})
    closes_at = fields.DateTime(metadata={"description": "when the drop's window closes (the admitter closes its "
                                                        "line then)"})
    invite_only_until = fields.DateTime(allow_none=True, metadata={
        "description": "when the drop's invite-only phase ends, null without one (the admitter admits nobody before: "
                       "the invited tier orders without a pass meanwhile, and anyone else's pass would be refused)"})


class ReservationBatchRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    holds = fields.List(fields.Nested(BatchedReservationRequestSchema), required=True,
                        validate=validate.Length(min=1, max=MAX_HOLDS_PER_BATCH))


class SaleRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    # The confirmed order's version: order events older than that are ignored. Absent: unknown.
    order_version = fields.Integer(load_default=None, allow_none=True, strict=True,
                                   validate=validate.Range(min=1, max=2**31 - 1))


class ReservationSchema(Schema):
    order_id = fields.UUID()
    drop_id = fields.UUID()
    quantity = fields.Integer()
    status = fields.String()
    hold_expires_at = fields.DateTime()
    unit_price = fields.Nested(PriceSchema)
    product = fields.Nested(ProductRefSchema)
    invite_phase = fields.Boolean(metadata={"description": "whether the hold was made during the drop's invite-only "
                                                           "phase, for a buyer of its tier"})


class HoldResultSchema(Schema):
    """One order's answer in a batch: the status and body `POST /reservations` would have given."""

    order_id = fields.UUID()
    status = fields.Integer()
    reservation = fields.Nested(ReservationSchema, allow_none=True)
    problem = fields.Dict(allow_none=True, metadata={"description": "problem+json document, for a refusal"})


class ReservationBatchSchema(Schema):
    results = fields.List(fields.Nested(HoldResultSchema), metadata={"description": "in the order of `holds`"})
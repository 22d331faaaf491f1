"""What goes over the wire: request validation and response documents."""
from __future__ import annotations

from datetime import datetime, timezone

from marshmallow import EXCLUDE, Schema, fields, post_load, validate, validates_schema, ValidationError

from services.inventory.commands import AddProduct, ReserveStock, ScheduleDrop

MAX_QUANTITY = 1_000_000
# Far enough for any real drop, near enough that no time zone pushes it past what Python can hold.
SCHEDULE_RANGE = validate.Range(
    min=datetime(2000, 1, 1, tzinfo=timezone.utc), max=datetime(3000, 1, 1, tzinfo=timezone.utc)
)


class PriceSchema(Schema):
    amount = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=10**12))
    currency = fields.String(
        required=True, validate=validate.Regexp(r"^[A-Z]{3}$", error="Use an ISO 4217 code such as EUR.")
    )


class NewProductSchema(Schema):
    sku = fields.String(
        required=True, validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", error="1 to 64 letters, digits, '.', '_' or '-'.")
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

    @validates_schema
    def window_not_empty(self, data, **kwargs) -> None:
        if "opens_at" in data and "closes_at" in data and data["closes_at"] <= data["opens_at"]:
            raise ValidationError("The drop must close after it opens.", field_name="closes_at")

    @post_load
    def to_command(self, data, **kwargs) -> ScheduleDrop:
        return ScheduleDrop(**data)


class DropSchema(Schema):
    id = fields.UUID()
    product = fields.Nested(ProductSummarySchema)
    quantity = fields.Integer()
    remaining = fields.Integer()
    state = fields.String()
    opens_at = fields.DateTime()
    closes_at = fields.DateTime()
    per_buyer_limit = fields.Integer()


class ReservationRequestSchema(Schema):
    class Meta:
        # Service-to-service: a newer checkout may send fields this inventory does not know yet.
        unknown = EXCLUDE

    order_id = fields.UUID(required=True)
    drop_id = fields.UUID(required=True)
    buyer_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_QUANTITY))

    @post_load
    def to_command(self, data, **kwargs) -> ReserveStock:
        return ReserveStock(**data)


class ReservationSchema(Schema):
    order_id = fields.UUID()
    drop_id = fields.UUID()
    quantity = fields.Integer()
    status = fields.String()
    hold_expires_at = fields.DateTime()
    unit_price = fields.Nested(PriceSchema)
    product = fields.Nested(ProductRefSchema)

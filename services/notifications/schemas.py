"""What notifications reads and answers: the order.confirmed data it mails, and its admin API."""
from marshmallow import EXCLUDE, Schema, fields, validate

non_empty = validate.Length(min=1)


class _Lenient(Schema):
    """Event data: the fields the email needs, ignoring the rest of the publisher's document."""

    class Meta:
        unknown = EXCLUDE


class MoneySchema(_Lenient):
    amount = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    currency = fields.String(required=True, validate=validate.Regexp(r"^[A-Z]{3}$"))


class ItemSchema(_Lenient):
    sku = fields.String(load_default=None)
    name = fields.String(required=True, validate=non_empty)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    unit_price = fields.Nested(MoneySchema, required=True)


class AddressSchema(_Lenient):
    name = fields.String(required=True, validate=non_empty)
    street_address = fields.String(required=True, validate=non_empty)
    city = fields.String(required=True, validate=non_empty)
    postal_code = fields.String(required=True, validate=non_empty)
    country_area = fields.String(load_default="", allow_none=True)
    country_code = fields.String(required=True, validate=validate.Regexp(r"^[A-Z]{2}$"))


class ConfirmedOrderSchema(_Lenient):
    """The order document of `order.confirmed` (docs/contracts.md), as far as the email needs it."""

    order_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    buyer_email = fields.Email(required=True)
    items = fields.List(fields.Nested(ItemSchema), required=True, validate=non_empty)
    total = fields.Nested(MoneySchema, required=True)
    shipping_address = fields.Nested(AddressSchema, required=True)
    status_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})


class DeliveryQuerySchema(Schema):
    order_id = fields.String(validate=validate.Length(max=64))
    to = fields.String(validate=validate.Length(max=320))
    status = fields.String(validate=validate.OneOf(["sent"]))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class DeliverySchema(Schema):
    id = fields.UUID()
    event_id = fields.String()
    event_type = fields.String()
    order_id = fields.String(allow_none=True)
    to_address = fields.String()
    subject = fields.String()
    status = fields.String()
    message_id = fields.String()
    sent_at = fields.DateTime()


class DeadLetterSchema(Schema):
    message_id = fields.String(allow_none=True)
    type = fields.String(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    body = fields.String()


class ReplayRequestSchema(Schema):
    message_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128))


class ReplayResultSchema(Schema):
    replayed = fields.Integer()

"""What notifications reads and answers: the event data it mails, and its admin API."""
from marshmallow import EXCLUDE, Schema, fields, validate

from services.notifications.models import STATUSES
from shared.messaging import topology
from shared.fields import EmailAddress, Pattern

non_empty = validate.Length(min=1)


class _Lenient(Schema):
    """Event data: the fields the email needs, ignoring the rest of the publisher's document."""

    class Meta:
        unknown = EXCLUDE


class MoneySchema(_Lenient):
    amount = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    currency = fields.String(required=True, validate=Pattern(r"^[A-Z]{3}$"))


class ItemSchema(_Lenient):
    sku = fields.String(load_default=None)
    name = fields.String(required=True, validate=non_empty)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    unit_price = fields.Nested(MoneySchema, required=True)


class AddressSchema(_Lenient):
    name = fields.String(required=True, validate=non_empty)
    street_address = fields.String(required=True, validate=non_empty)
    city = fields.String(load_default="", allow_none=True)
    city_area = fields.String(load_default="", allow_none=True)
    postal_code = fields.String(load_default="", allow_none=True)
    sorting_code = fields.String(load_default="", allow_none=True)
    country_area = fields.String(load_default="", allow_none=True)
    country_code = fields.String(required=True, validate=Pattern(r"^[A-Z]{2}$"))


class OrderSchema(_Lenient):
    """The order document every `order.*` event carries (docs/contracts.md), as far as email needs it."""

    order_id = fields.String(required=True, validate=[validate.Length(min=1, max=64), Pattern(r"^[^\x00]*$")])
    # how many changes the order had been through (docs/contracts.md, "Order versions"); older
    # producers sent none. At most the column's (an int4), as inventory's schema has it.
    version = fields.Integer(load_default=None, allow_none=True, strict=True,
                             validate=validate.Range(min=1, max=2**31 - 1))
    buyer_email = EmailAddress(required=True)
    items = fields.List(fields.Nested(ItemSchema), required=True, validate=non_empty)
    total = fields.Nested(MoneySchema, required=True)
    shipping_address = fields.Nested(AddressSchema, required=True)
    status_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})


class PlacedOrderSchema(OrderSchema):
    hold_expires_at = fields.AwareDateTime(required=True)
    payment_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})


class ConfirmedOrderSchema(OrderSchema):
    pass


class EndedOrderSchema(OrderSchema):
    """`order.cancelled`, `order.expired` and `order.payment_failed`: early producers sent only the order's ids and the
    buyer's address, so the summary parts are optional and the email leaves out what is missing."""

    items = fields.List(fields.Nested(ItemSchema), load_default=None)
    total = fields.Nested(MoneySchema, load_default=None)
    shipping_address = fields.Nested(AddressSchema, load_default=None)
    status_url = fields.Url(load_default=None, require_tld=False, schemes={"http", "https"})
    cancelled_at = fields.AwareDateTime(load_default=None)
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    refund = fields.Nested(MoneySchema, load_default=None, allow_none=True)
    # whether a payment was taken for the order (None: a producer that did not say, and the email
    # says nothing of it), and whether it is back with the buyer already (the provider gave it
    # back on its side, a chargeback say, or an earlier refund did)
    charged = fields.Boolean(load_default=None, allow_none=True)
    already_returned = fields.Boolean(load_default=False)
    # of a refund still to come, what the provider gave back before (a part refunded in its dashboard)
    returned_earlier = fields.Nested(MoneySchema, load_default=None, allow_none=True)


class ShippedOrderSchema(OrderSchema):
    shipped_at = fields.AwareDateTime(load_default=None)


class RefundedOrderSchema(OrderSchema):
    refund = fields.Nested(MoneySchema, required=True)
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    # False: a payment the order did not take (a second one, one of the wrong amount): it stands
    of_order_payment = fields.Boolean(load_default=True)
    # the provider had given it back already (a chargeback, a dashboard refund): no refund of ours
    already_returned = fields.Boolean(load_default=False)
    status = fields.String(load_default=None, allow_none=True)  # the order's, as the refund leaves it


class AccountSchema(_Lenient):
    account_id = fields.String(required=True, validate=non_empty)
    email = EmailAddress(required=True)
    name = fields.String(load_default=None, allow_none=True)


class InviteSchema(_Lenient):
    invite_id = fields.String(required=True, validate=non_empty)
    code = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = EmailAddress(required=True)
    tier = fields.String(load_default=None, allow_none=True)
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)


class DeliveryQuerySchema(Schema):
    order_id = fields.String(validate=validate.Length(max=64))
    to = fields.String(validate=validate.Length(max=320))
    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class DeliverySchema(Schema):
    id = fields.UUID()
    event_id = fields.String()
    event_type = fields.String()
    order_id = fields.String(allow_none=True)
    order_version = fields.Integer(allow_none=True, metadata={"description": "the order's version its event carried"})
    to_address = fields.String(allow_none=True)
    subject = fields.String(allow_none=True)
    status = fields.String()
    message_id = fields.String()
    attempts = fields.Integer()
    retries = fields.Integer()
    dead_letters = fields.Integer()
    last_error = fields.String(allow_none=True)
    occurred_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)
    handled_by = fields.String(allow_none=True)


_SERVICES = validate.OneOf(sorted(topology.SUBSCRIPTIONS), error="One of: {choices}.")


class DeadLetterQuerySchema(Schema):
    service = fields.String(load_default=None, validate=_SERVICES)


class DeadLetterSchema(Schema):
    service = fields.String()
    message_id = fields.String(allow_none=True)
    type = fields.String(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    body = fields.String()


class ReplayRequestSchema(Schema):
    message_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128))
    # whose dead-letter queue; notifications' own when not named
    service = fields.String(load_default="notifications", validate=_SERVICES)


class ReplayResultSchema(Schema):
    replayed = fields.Integer()


class EmailSourcesSchema(Schema):
    database = fields.Boolean(metadata={"description": "the delivery log could be read"})
    broker = fields.Boolean(metadata={"description": "the queues' depths could be read"})


class EmailFiguresSchema(Schema):
    backlog = fields.Integer(allow_none=True, metadata={
        "description": "events waiting for their email: ready in the work queue and the retry tiers"})
    in_work_queue = fields.Integer(allow_none=True, metadata={
        "description": "ready in the work queue and its returned lane (messages given back by a consumer that stopped)"})
    in_retry_tiers = fields.Integer(allow_none=True)
    oldest_unsent_age_seconds = fields.Float(allow_none=True, metadata={
        "description": "how long the oldest event tried and still waiting for its email has waited (0: none)"})
    last_sent_at = fields.DateTime(allow_none=True, metadata={"description": "null before the first email"})
    last_delivery_lag_seconds = fields.Float(allow_none=True, metadata={
        "description": "from the latest sent email's event to its sending"})
    retrying = fields.Integer(allow_none=True)
    dead = fields.Integer(allow_none=True)
    sent = fields.Integer(allow_none=True)
    sources = fields.Nested(EmailSourcesSchema)


class FiguresSchema(Schema):
    email = fields.Nested(EmailFiguresSchema)
    dead_letters = fields.Dict(keys=fields.String(), values=fields.Integer(), allow_none=True, metadata={
        "description": "messages parked per consuming service (null: the broker did not answer)"})

"""What checkout's endpoints accept and return."""
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from services.checkout import orders
from services.checkout.line import ALGORITHM
from services.checkout.payments import CAPTURE_UNDONE
from shared.fields import ADDRESS_COUNTRY_CODE, SCHEDULE_RANGE, StrictBoolean


class AddressSchema(Schema):
    """Shape only; the country's own rules are applied by `shared.addresses.normalise`."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    street_address = fields.String(required=True, validate=validate.Length(min=1, max=300))
    city = fields.String(load_default="", validate=validate.Length(max=100))
    city_area = fields.String(load_default="", validate=validate.Length(max=100))
    sorting_code = fields.String(load_default="", validate=validate.Length(max=20))
    postal_code = fields.String(load_default="", validate=validate.Length(max=20))
    country_area = fields.String(load_default="", validate=validate.Length(max=100))
    country_code = fields.String(required=True, validate=ADDRESS_COUNTRY_CODE)


class OrderRequestSchema(Schema):
    drop_id = fields.UUID(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=10))
    shipping_address = fields.Nested(AddressSchema, required=True)


class MoneySchema(Schema):
    amount = fields.Integer()
    currency = fields.String()


class ItemSchema(Schema):
    sku = fields.String()
    name = fields.String()
    quantity = fields.Integer()
    unit_price = fields.Nested(MoneySchema)


class TransitionSchema(Schema):
    from_status = fields.String(allow_none=True)
    to_status = fields.String(attribute="to_status", data_key="status")
    reason = fields.String()
    at = fields.DateTime()


class OrderSchema(Schema):
    id = fields.UUID()
    status = fields.String()
    drop_id = fields.UUID()
    items = fields.Method("_items")
    total = fields.Method("_total")
    shipping_address = fields.Nested(AddressSchema)
    hold_expires_at = fields.DateTime()
    payment = fields.Method("_payment")
    history = fields.List(fields.Nested(TransitionSchema))
    email = fields.Method("_email")
    created_at = fields.DateTime()
    confirmed_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)
    shipped_at = fields.DateTime(allow_none=True)

    def _items(self, order):
        return orders.items(order)

    def _total(self, order):
        return orders.total(order)

    def _payment(self, order):
        if order.refunded_at:
            state = "refunded"
        elif order.payment_capture_id:
            state = "captured"
        elif order.status == "payment_failed":
            state = "declined"
        else:
            state = "pending" if order.status == "awaiting_payment" else "none"
        return {
            "status": state,
            "approval_url": order.approval_url if order.status == "awaiting_payment" else None,
            "capture_id": order.payment_capture_id,
            "refund_id": order.refund_id,
            "refunded_at": order.refunded_at.isoformat() if order.refunded_at else None,
        }

    def _email(self, order):
        return {
            "confirmation_sent": order.email_sent_at is not None,
            "sent_at": order.email_sent_at.isoformat() if order.email_sent_at else None,
        }


class OrderListSchema(Schema):
    orders = fields.List(fields.Nested(OrderSchema))
    next_offset = fields.Integer(allow_none=True)


class ListQuerySchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    # Bounded: PostgreSQL's OFFSET is a bigint, and no buyer pages past this many orders.
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))


class WebhookResourceSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    # a capture's id; a refund's or a reversal's for PAYMENT.CAPTURE.REFUNDED and .REVERSED,
    # which name the capture they give back in `capture_id`
    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    order_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    amount = fields.Integer(required=True, strict=True)
    currency = fields.String(required=True, validate=validate.Length(equal=3))
    capture_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128))


class WebhookSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    event_type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    resource = fields.Nested(WebhookResourceSchema, required=True)

    @validates_schema
    def _names_what_it_gives_back(self, data, **kwargs):
        if data.get("event_type") in CAPTURE_UNDONE and data.get("resource", {}).get("capture_id") is None:
            raise ValidationError({"resource": {"capture_id": ["A refund or a reversal names the capture it gives back."]}})


class WebhookAnswerSchema(Schema):
    result = fields.String()


# --- the waiting room (services/checkout/line.py) -----------------------------------------------

class LineRequestSchema(Schema):
    """`PUT /drops/{id}/line`: put a line on a drop, or change it."""

    opens_at = fields.AwareDateTime(required=True, validate=SCHEDULE_RANGE)
    admission_factor = fields.Float(load_default=1.0, validate=validate.Range(min=0.1, max=100))
    admission_rate = fields.Float(load_default=20.0, validate=validate.Range(min=0.1, max=10_000))
    pass_ttl_seconds = fields.Integer(load_default=120, strict=True, validate=validate.Range(min=10, max=3600))
    refuse_new_accounts = StrictBoolean(load_default=False)


class LineChangeSchema(Schema):
    """`PATCH /drops/{id}/line`: pause, resume, close or re-rate (admin)."""

    state = fields.String(validate=validate.OneOf(["open", "paused", "closed"]))
    admission_rate = fields.Float(validate=validate.Range(min=0.1, max=10_000))
    admission_factor = fields.Float(validate=validate.Range(min=0.1, max=100))


class LineSchema(Schema):
    drop_id = fields.UUID()
    state = fields.Method("_state")
    opens_at = fields.DateTime()
    opened_at = fields.DateTime(allow_none=True)
    commitment = fields.String()
    seed = fields.Method("_seed", allow_none=True)
    algorithm = fields.Method("_algorithm")
    pre_queue_size = fields.Integer()
    placed = fields.Integer()  # positions handed out so far (the pre-queue's are written over the first turns)
    joined = fields.Integer()
    admitted = fields.Integer(attribute="admitted_through")
    waiting = fields.Method("_waiting")
    remaining_units = fields.Integer(allow_none=True)
    admission_factor = fields.Float()
    admission_rate = fields.Float()
    admission_rate_per_second = fields.Float(attribute="observed_rate")
    pace_per_second = fields.Method("_pace")
    pass_ttl_seconds = fields.Integer()
    refuses_accounts_created_after = fields.DateTime(attribute="accounts_created_before", allow_none=True)

    def _state(self, line) -> str:
        return "sold_out" if line.state == "open" and line.remaining_units == 0 else line.state

    def _pace(self, line) -> float:
        """The rate the admitter admits at now: admission_rate, or below it while checkout turns
        orders away and for a few turns after (or after the admin raised it); 0 while the line
        admits nobody (not open, or sold out), and until its first open turn."""
        return line.pace_rate if self._state(line) == "open" else 0.0

    def _waiting(self, line) -> int:
        """Tickets not admitted yet: positions are 1..joined, admitted in order."""
        return max(0, line.joined - line.admitted_through)

    def _seed(self, line) -> str | None:
        """Revealed at the opening, never before."""
        return line.seed.hex() if line.opened_at is not None else None

    def _algorithm(self, line) -> str:
        return ALGORITHM


class TicketSchema(Schema):
    ticket_id = fields.UUID()
    drop_id = fields.UUID()
    state = fields.String()
    position = fields.Integer(allow_none=True)
    ahead = fields.Integer(allow_none=True)
    eta_seconds = fields.Integer(allow_none=True)
    poll_after_seconds = fields.Integer(allow_none=True)
    line_pass = fields.String(attribute="pass", data_key="pass", allow_none=True)
    pass_expires_at = fields.DateTime(allow_none=True)


class AdmissionOrderQuerySchema(Schema):
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10_000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class AdmissionOrderSchema(Schema):
    drop_id = fields.UUID()
    seed = fields.String(allow_none=True)
    algorithm = fields.String()
    tickets = fields.List(fields.UUID())
    next_offset = fields.Integer(allow_none=True)


class DropOrdersSchema(Schema):
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(),
                            metadata={"description": "the drop's orders per status (awaiting_payment, confirmed, ...)"})
    total = fields.Integer()
    placed_per_second = fields.Float(metadata={"description": "orders placed a second over the last `window_seconds`"})
    window_seconds = fields.Float()


class OrderAnswersSchema(Schema):
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(),
                            metadata={"description": "answers to `POST /orders` per HTTP status, every drop's"})
    counted_by = fields.String(metadata={"description": "the pod (host) whose API processes counted them, since "
                                                        "they started; another pod counts its own"})


class DropFiguresSchema(Schema):
    drop_id = fields.UUID()
    orders = fields.Nested(DropOrdersSchema)
    answers = fields.Nested(OrderAnswersSchema)

"""In-memory stand-ins for checkout's unit of work, inventory and payment provider, and checkout's
handlers wired to them: no database, no network."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

from services.checkout import config, errors, handlers, idempotency, line as waiting_room
from services.checkout.handlers import CAPTURE_COMPLETED, CAPTURE_DENIED, PaymentNotice, PlaceOrder
from services.checkout.inventory_client import Hold
from services.checkout.models import Line, LineTicket, Order
from services.checkout.payments import Refund
from services.checkout.repository import KeyHeld
from shared.messaging.envelope import Envelope
from shared.values import utc_now, uuid_or_none

SETTINGS = config.Settings(service_name="checkout")
BUYER = "buyer-1"
DROP_ID = "5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40"
PASS_SECRET = "a line pass secret for the unit tests only"


def pass_for(buyer="ann", drop=uuid.UUID(DROP_ID), expires_in=60, secret=PASS_SECRET) -> tuple[str, uuid.UUID]:
    """A line pass as the admitter's line issues it, and its ticket id."""
    ticket = LineTicket(id=uuid.uuid4(), drop_id=drop, buyer_id=buyer, arrival=1,
                        pass_expires_at=utc_now() + timedelta(seconds=expires_in))
    return waiting_room.issue_pass(secret, ticket), ticket.id
UNIT_PRICE, CURRENCY = 29900, "CAD"
HOLD = timedelta(minutes=10)
HOME = {
    "name": "Émilie Tremblay",
    "street_address": "24 Sussex Drive",
    "city": "Ottawa",
    "city_area": "",
    "sorting_code": "",
    "postal_code": "K1A 0B1",
    "country_area": "ON",
    "country_code": "CA",
}


class FakeOrders:
    def __init__(self):
        self.rows = {}

    def get(self, order_id, lock=False):
        return self.rows.get(uuid_or_none(order_id))

    def exists(self, order_id):
        return uuid_or_none(order_id) in self.rows

    def note_email_sent(self, order_id, sent_at):
        order = self.rows.get(uuid_or_none(order_id))
        if order is not None and order.email_sent_at is None:
            order.email_sent_at = sent_at

    def add(self, order):
        assert order.id not in self.rows, "the orders table has one row per id"
        self.rows[order.id] = order

    def newest_of(self, buyer_id, limit, offset):
        mine = sorted((o for o in self.rows.values() if o.buyer_id == buyer_id), key=lambda o: o.id)
        mine.sort(key=lambda o: o.created_at, reverse=True)
        return mine[offset:offset + limit]


class FakeIdempotencyKeys:
    def __init__(self):
        self.rows = {}

    def claim(self, buyer_id, key, fingerprint):
        held = self.rows.get((buyer_id, key))
        if held is None:
            self.rows[(buyer_id, key)] = KeyHeld(fingerprint, None, None)
        return held

    def find(self, buyer_id, key):
        return self.rows.get((buyer_id, key))

    def answer(self, buyer_id, key, status, body):
        self.rows[(buyer_id, key)] = replace(self.rows[(buyer_id, key)], response_status=status, response_body=body)


class FakeAddressAllowances:
    def __init__(self):
        self.rows = {}

    def take(self, drop_id, address_key, quantity, limit):
        taken = self.rows.get((drop_id, address_key))
        if taken is not None and taken + quantity > limit:
            return False
        self.rows[(drop_id, address_key)] = (taken or 0) + quantity
        return True

    def give_back(self, drop_id, address_key, quantity):
        if (drop_id, address_key) in self.rows:
            self.rows[(drop_id, address_key)] -= quantity


class FakePaymentEvents:
    def __init__(self):
        self.rows = {}

    def record(self, provider_event_id, order_id, event_type):
        if provider_event_id in self.rows:
            return False
        self.rows[provider_event_id] = (order_id, event_type)
        return True

    def captured_for(self, order_id):
        return (order_id, CAPTURE_COMPLETED) in self.rows.values()


class FakeLines:
    """Lines and their tickets, in one dict so a rolled-back block drops what it added;
    `refusals` is checkout's load as the API processes report it; `time` is the database's
    clock (a test may replace it on the class)."""

    time = staticmethod(utc_now)

    def __init__(self):
        self.rows = {}
        self.refusals = {}
        self.arrivals = 0
        self.read_ahead = 0  # tickets read ahead of an opening
        self.pre_queue_reads = 0  # whole pre-queues read at an opening

    def checkout_refusals(self):
        return dict(self.refusals)

    def lines(self):
        return [row for key, row in self.rows.items() if key[0] == "line"]

    def tickets(self, drop_id=None):
        return [row for key, row in self.rows.items() if key[0] == "ticket" and drop_id in (None, row.drop_id)]

    def get(self, drop_id, lock=False):
        return self.rows.get(("line", drop_id))

    def lock_next_due(self, states, placing=False):
        return sorted((line for line in self.lines()
                       if line.state in states or (placing and line.placed < line.pre_queue_size)),
                      key=lambda line: line.opens_at)

    def lock_to_open(self, drop_id):
        line = self.get(drop_id)
        # the real one also asks that the opening has come by the database's clock (an admin may
        # have moved it since the turn looked); the tests move the admitter's clock, not this one
        return line if line is not None and line.state == "pre_queue" else None

    def placing(self):
        return [line for line in self.lines() if line.placed < line.pre_queue_size]

    def add(self, line):
        self.rows[("line", line.drop_id)] = line

    def has_line(self, drop_id):
        return ("line", drop_id) in self.rows

    def ticket_of(self, drop_id, buyer_id):
        return next((t for t in self.tickets(drop_id) if t.buyer_id == buyer_id), None)

    def ticket_and_line(self, drop_id, buyer_id):
        """As the real one: one row with the ticket's attributes and those of its line."""
        ticket = self.ticket_of(drop_id, buyer_id)
        if ticket is None:
            return None
        line = self.get(drop_id)
        return SimpleNamespace(
            id=ticket.id, drop_id=ticket.drop_id, buyer_id=ticket.buyer_id, position=ticket.position,
            admitted_at=ticket.admitted_at, pass_expires_at=ticket.pass_expires_at, used_at=ticket.used_at,
            state=line.state, opens_at=line.opens_at, remaining_units=line.remaining_units,
            admitted_through=line.admitted_through, observed_rate=line.observed_rate, placed=line.placed,
            pre_queue_size=line.pre_queue_size, joined=line.joined)

    def join_many(self, wanted):
        made = {}
        for ticket_id, request in wanted:
            row = self._join(ticket_id, request.drop_id, request.buyer_id, request.account_created_at)
            if row is not None:
                made[ticket_id] = row
        return made

    def _join(self, ticket_id, drop_id, buyer_id, account_created_at):
        line = self.get(drop_id)
        if line is None or line.state == "closed" or self.ticket_of(drop_id, buyer_id) is not None:
            return None
        if line.accounts_created_before is not None and (
                account_created_at is None or account_created_at > line.accounts_created_before):
            return None
        self.arrivals += 1  # the sequence line_arrivals
        self.rows[("ticket", ticket_id)] = LineTicket(id=ticket_id, drop_id=drop_id, buyer_id=buyer_id,
                                                      arrival=self.arrivals, position=None)
        return self.ticket_and_line(drop_id, buyer_id)

    def wait_for_joins(self, drop_id):
        pass  # one thread: no join is in flight

    def joined(self, line):
        return len(self.tickets(line.drop_id))

    def place_arrivals(self, drop_id, after, most):
        newcomers = sorted((t for t in self.tickets(drop_id) if t.position is None), key=lambda t: t.arrival)[:most]
        for n, ticket in enumerate(newcomers, start=1):
            ticket.position = after + n
        return len(newcomers)

    def pre_queue_bounds(self, drop_id):
        tickets = self.tickets(drop_id)
        return len(tickets), max((t.arrival for t in tickets), default=None)

    def opening_within(self, seconds):
        soon = self.time() + timedelta(seconds=seconds)
        return [SimpleNamespace(drop_id=line.drop_id, seed=line.seed)
                for line in sorted(self.lines(), key=lambda line: line.opens_at)
                if line.state == waiting_room.PRE_QUEUE and line.opens_at <= soon]

    def arrivals_drawn(self):
        return self.arrivals

    def pre_queue_ahead(self, drop_id, after, most):
        last = self.get(drop_id).pre_queue_last_arrival
        ahead = sorted((t for t in self.tickets(drop_id) if t.arrival > after and (last is None or t.arrival <= last)),
                       key=lambda t: t.arrival)
        ahead = ahead[:most]
        self.read_ahead += len(ahead)
        return [SimpleNamespace(id=t.id, arrival=t.arrival) for t in ahead]

    def pre_queue(self, drop_id, last_arrival):
        self.pre_queue_reads += 1
        return [t.id for t in self.tickets(drop_id) if t.arrival <= last_arrival]

    def place(self, positions):
        for ticket_id, position in positions:
            self.rows[("ticket", ticket_id)].position = position

    def admission_order(self, drop_id, limit, offset):
        line = self.get(drop_id)
        placed = sorted((t for t in self.tickets(drop_id) if t.position and t.position <= line.pre_queue_size),
                        key=lambda t: t.position)
        return [t.id for t in placed][offset:offset + limit]

    def active_pass_holders(self, drop_id, now):
        return [t.buyer_id for t in self.tickets(drop_id)
                if t.used_at is None and t.pass_expires_at is not None and t.pass_expires_at > now]

    def lengthen_passes(self, drop_id, closes_at, ttl_seconds, now):
        lengthened = 0
        for ticket in self.tickets(drop_id):
            if ticket.used_at is None and ticket.pass_expires_at is not None and ticket.pass_expires_at > now:
                whole = min(ticket.admitted_at + timedelta(seconds=ttl_seconds), closes_at)
                if ticket.pass_expires_at < whole:
                    ticket.pass_expires_at, lengthened = whole, lengthened + 1
        return lengthened

    def clock(self):
        return self.time()

    def admitted_after(self, drop_id, after, through):
        return [t.buyer_id for t in self.tickets(drop_id)
                if t.admitted_at is not None and t.position is not None and after < t.position <= through]

    def admit_next(self, drop_id, after, count, now, expires_at):
        waiting = sorted((t for t in self.tickets(drop_id)
                          if t.admitted_at is None and t.position is not None and t.position > after),
                         key=lambda t: t.position)[:max(0, count)]
        for ticket in waiting:
            ticket.admitted_at, ticket.pass_expires_at = now, expires_at
        return [t.position for t in waiting]

    def use_pass(self, ticket_id, drop_id, buyer_id):
        ticket = self.rows.get(("ticket", ticket_id))
        if ticket is None or ticket.drop_id != drop_id or ticket.buyer_id != buyer_id:
            return "expired"
        if ticket.used_at is not None:
            return "used"
        if ticket.pass_expires_at is None or ticket.pass_expires_at <= utc_now():
            return "expired"
        ticket.used_at = utc_now()
        return None


class FakeUnitOfWork:
    """Like CheckoutUnitOfWork: what a block writes, events included, is kept only if it commits
    (`published` holds the committed events, in order). Rows are restored on rollback; an order
    object changed by a rolled-back block keeps its changes, as a detached ORM object does."""

    def __init__(self):
        self.orders = FakeOrders()
        self.idempotency_keys = FakeIdempotencyKeys()
        self.address_allowances = FakeAddressAllowances()
        self.payment_events = FakePaymentEvents()
        self.lines = FakeLines()
        self.published = []
        self.committed = False
        self.open = False  # a block is running: a transaction is open
        self._outbox = []
        self._saved = self._rows()

    def __enter__(self):
        assert not self.open, "a unit of work opened inside another"
        self.committed = False
        self.open = True
        return self

    def __exit__(self, *exc_info):
        self.rollback()
        self.open = False

    def commit(self):
        self.published.extend(self._outbox)
        self._outbox = []
        self._saved = self._rows()
        self.committed = True

    def rollback(self):
        for repository, rows in self._saved.items():
            repository.rows = dict(rows)
        self._outbox = []

    def publish(self, event_type, data):
        self._outbox.append((event_type, data))

    def _rows(self):
        repositories = (self.orders, self.idempotency_keys, self.address_allowances, self.payment_events, self.lines)
        return {repository: dict(repository.rows) for repository in repositories}


class FakeInventory:
    """Inventory as checkout's client sees it: every call recorded; `reserve_refusal` and
    `sell_refusal`, when set, are raised instead of holding or selling (a renewal that holds
    the units again ends the sale's refusal); `meanwhile`, when set, is called as a hold is
    made (what other requests did while this one waited for inventory). `invite_phase`: the
    drop's invite-only phase is running (and its buyers are of the invited tier): new holds say
    so, and only then is a hold asked `invited_only` made."""

    def __init__(self):
        self.reserved = []
        self.sold = []
        self.released = []
        self.unguarded = []  # calls made past the circuit breaker (a paying buyer's): (what, order id)
        self.holds = {}  # order id -> its hold
        self.given_back = set()  # order ids whose hold was released (held again only by a renewal)
        self.reserve_refusal = None
        self.sell_refusal = None
        self.release_refusal = None
        self.meanwhile = None
        self.invite_phase = False

    def reserve(self, order_id, drop_id, buyer_id, quantity, buyer_tier=None, shipping_country=None, renew=False,
                order_version=None, guarded=True, batched=True, invited_only=False):
        self.reserved.append({"order_id": order_id, "quantity": quantity, "renew": renew,
                              "order_version": order_version, **({"invited_only": True} if invited_only else {})})
        if not guarded:
            self.unguarded.append(("reserve", order_id))
        if self.meanwhile is not None:
            self.meanwhile()
        held = self.holds.get(order_id)
        if not renew and held is not None and order_id not in self.given_back:
            # as inventory answers a repeat of an order id: the hold it has (200, not 201), whatever
            # refusal the request itself would get (services/inventory/handlers/reservations.py `reserve`)
            return replace(held, created=False)
        if self.reserve_refusal is not None:
            raise self.reserve_refusal
        if held is not None and not renew:  # its reservation, given back, whatever the request
            raise errors.HoldReleased("The hold for this order was released and could not be renewed.")
        if invited_only and not self.invite_phase:
            raise errors.NotInvitePhase("This hold was asked for the drop's invite-only phase, which is not running.")
        if renew:
            self.sell_refusal = None  # the units are held again: they can be sold
        if held is not None and order_id not in self.given_back:
            return held
        self.given_back.discard(order_id)
        self.holds[order_id] = Hold(order_id=order_id, drop_id=drop_id, quantity=quantity,
                                    hold_expires_at=utc_now() + HOLD, unit_amount=UNIT_PRICE, currency=CURRENCY,
                                    sku="OPO-64-BLK", product_name="One phone, 64 GB",
                                    invite_phase=self.invite_phase)
        return self.holds[order_id]

    def sell(self, order_id, order_version):
        self.sold.append((order_id, order_version))
        if self.sell_refusal is not None:
            raise self.sell_refusal

    def release(self, order_id, guarded=True):
        self.released.append(order_id)
        if self.release_refusal is not None:
            raise self.release_refusal
        if not guarded:
            self.unguarded.append(("release", order_id))
        self.given_back.add(order_id)


class FakeProvider:
    def __init__(self, failure: Exception | None = None):
        self.refunds = []
        self.failure = failure

    def approval_url(self, order_id, amount, currency):
        return f"https://pay.example/pay/{order_id}?amount={amount}&currency={currency}"

    def refund(self, capture_id, amount, currency):
        if self.failure is not None:
            raise self.failure
        self.refunds.append((capture_id, amount, currency))
        return Refund(refund_id=f"RF-{capture_id}", amount=amount, currency=currency)


class Checkout:
    """Checkout's handlers over the fakes, each run as the API or the consumer runs it: in a
    unit of work, committed when it returns."""

    def __init__(self):
        self.uow = FakeUnitOfWork()
        self.inventory = FakeInventory()
        self.provider = FakeProvider()
        self.settings = SETTINGS
        self.drops_with_lines = set()
        self.consumed = handlers.event_handlers(self.provider, self.settings)

    def run(self, operation):
        """What `operation(uow)` returned, and the events it published."""
        before = len(self.uow.published)
        with self.uow as uow:
            result = operation(uow)
            uow.commit()
        return result, self.uow.published[before:]

    def place(self, key="key-1", quantity=1, address=HOME, buyer_id=BUYER) -> Order:
        """As `POST /orders` places it; raises a refusal the key would not keep."""
        cmd = order_request(key, quantity, address, buyer_id)
        with self.uow as uow:
            answer = idempotency.place_once(cmd, uow, self.inventory, self.provider, self.settings,
                                            render=lambda order: {"id": str(order.id)}, instance="/orders",
                                            drops_with_lines=self.drops_with_lines)
        if answer.status != 201:
            raise AssertionError(f"the order was refused: {answer.body}")
        return self.uow.orders.get(cmd.order_id)

    def pay(self, notice: PaymentNotice):
        """The webhook's result and the events it published, as `POST /payments/webhook` makes
        them: the sale of a confirmed order's units after the commit."""
        before = len(self.uow.published)
        outcome = handlers.take_payment(notice, lambda: self.uow, self.inventory, self.settings)
        return outcome.result, self.uow.published[before:]

    def deliver(self, event_type, data):
        """The events that handling one consumed event published."""
        envelope = Envelope(type=event_type, data=data, source="tests")
        _, events = self.run(lambda uow: self.consumed[event_type](envelope, uow))
        return events

    def cancel(self, order):
        return self.run(lambda uow: handlers.cancel_order(order, uow, self.settings, by_admin=False))

    def admitted(self, buyer_id=BUYER) -> tuple[str, LineTicket]:
        """A line on the drop, and `buyer_id` admitted from it: the pass their order carries, and
        their ticket."""
        drop_id = uuid.UUID(DROP_ID)
        if not self.uow.lines.has_line(drop_id):
            self.uow.lines.add(Line(drop_id=drop_id, state=waiting_room.OPEN))
        now = utc_now()
        ticket = LineTicket(id=uuid.uuid4(), drop_id=drop_id, buyer_id=buyer_id, arrival=1, position=1,
                            admitted_at=now, pass_expires_at=now + timedelta(seconds=60))
        self.uow.lines.rows[("ticket", ticket.id)] = ticket
        self.uow.commit()
        return waiting_room.issue_pass(self.settings.line_pass_secret, ticket), ticket

    def units_on_address(self, order):
        """Units of the drop counted against the order's shipping address."""
        return self.uow.address_allowances.rows.get((order.drop_id, order.address_key), 0)


def order_request(key="key-1", quantity=1, address=HOME, buyer_id=BUYER, line_pass=None) -> PlaceOrder:
    return PlaceOrder(buyer_id, "emilie@example.ca", key, DROP_ID, quantity, address, line_pass=line_pass)


def capture(order, event_id="WH-1", capture_id="CAP-1", amount=None, currency=None) -> PaymentNotice:
    """The provider's word that the buyer paid (by default exactly the order's total)."""
    return PaymentNotice(event_id, CAPTURE_COMPLETED, str(order.id), capture_id,
                         order.total_amount if amount is None else amount, currency or order.currency)


def given_back(order, how="REFUNDED", event_id="WH-R", capture_id="CAP-1", amount=None, currency=None,
               undone_by="REF-1") -> PaymentNotice:
    """The provider's word that it gave a capture's money back (`how`: REFUNDED or REVERSED), by
    default the whole of the order's total."""
    return PaymentNotice(event_id, f"PAYMENT.CAPTURE.{how}", str(order.id), capture_id,
                         order.total_amount if amount is None else amount, currency or order.currency,
                         undone_by=undone_by)


def requested_refund(events) -> dict:
    """The one `payment.refund_requested` among `events` (its data)."""
    [request] = [data for event_type, data in events if event_type == "payment.refund_requested"]
    return request


def denial(order, event_id="WH-D") -> PaymentNotice:
    return PaymentNotice(event_id, CAPTURE_DENIED, str(order.id), "CAP-D", order.total_amount, order.currency)


def unknown_order_id() -> str:
    return str(uuid.uuid4())


def statuses(order) -> list[str]:
    return [step.to_status for step in order.history]


def hold_ran_out(order) -> None:
    order.hold_expires_at = utc_now() - timedelta(seconds=1)

"""Checkout's domain operations and event handlers."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.checkout import errors, line as waiting_room, orders
from services.checkout.inventory_client import Hold, InventoryClient
from services.checkout.models import CAPTURE_COMPLETED, Order
from services.checkout.payments import (CAPTURE_UNDONE, PaymentProvider, Refund, RefundAlreadyMade, RefundFailed,
                                        RefundRefused)
from shared.errors import Problem
from shared.logs import bind_order_id
from shared.messaging.consumer import PartnerDown, PermanentFailure
from shared.values import utc_now, uuid_or_none

log = logging.getLogger("floodgate.checkout")
ORDER_ID_NAMESPACE = uuid.UUID("6f1c6a52-3b1e-4a8e-9a55-8f4f8d0e7a10")


@dataclass(frozen=True)
class PlaceOrder:
    """An order as the buyer asked for it; `idempotency.place_once` places it at most once per key."""

    buyer_id: str
    buyer_email: str
    idempotency_key: str
    drop_id: str
    quantity: int
    shipping_address: dict
    buyer_tier: str | None = None
    # the waiting room's admission pass (header Line-Pass); not part of the fingerprint
    line_pass: str | None = None

    @functools.cached_property  # worked out once an order (a frozen dataclass keeps it in its __dict__)
    def fingerprint(self) -> str:
        body = {"drop_id": self.drop_id, "quantity": self.quantity, "shipping_address": self.shipping_address}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @functools.cached_property
    def order_id(self) -> uuid.UUID:
        # Derived from the key and the body, so a retry after a crash asks inventory for the same
        # hold, and the same key with another body never shares it: inventory answers an order id
        # it holds with that hold, whatever the new request (another address, in a country the
        # drop does not ship to, say), so a key-only id let such a request, racing the first,
        # place an order on the first one's hold.
        return uuid.uuid5(ORDER_ID_NAMESPACE, f"{self.buyer_id}:{self.idempotency_key}:{self.fingerprint}")


def admitted_ticket(cmd: PlaceOrder, settings, drops_with_lines: set[uuid.UUID]) -> uuid.UUID | None:
    """Before anything is held, with no database read: the ticket whose line pass the order
    carries (the pass's signature, buyer, drop and expiry checked: a forged, other buyer's or
    drop's, or expired pass never holds a unit), None for an order without one. An order without a
    pass on a drop this process has seen a line on (`drops_with_lines`) is refused here too,
    unless its buyer has an early-access tier: that order is held only if the drop is in its
    invite-only phase (`hold_units`, `invited`). On any other drop the order's transaction looks
    for a line (`has_line`)."""
    if cmd.line_pass is None:
        if uuid.UUID(cmd.drop_id) in drops_with_lines and cmd.buyer_tier is None:
            raise pass_required()
        return None
    return waiting_room.verify_pass(settings.line_pass_secrets, cmd.line_pass, cmd.buyer_id, cmd.drop_id)


def invited(hold: Hold | None, refusal: Problem | None = None, asked_invited_only: bool = False) -> bool:
    """Whether an order without a line pass goes on, on a drop with a line: its `hold` was made
    during the drop's invite-only phase, so for a buyer of the invited tier (the line admits
    nobody until that phase ends: services/checkout/admitter.py, so the two never compete for a
    unit by turns); or, its hold asked for the phase only, inventory refused it for what only a
    buyer the phase let by hears (`INVITED_REFUSALS`: sold out, a limit, a country: the answer
    for them, not "join the line"), or found the order's earlier hold given back (held again
    for the phase only)."""
    if hold is not None:
        return hold.invite_phase
    return asked_invited_only and isinstance(refusal, INVITED_REFUSALS)


# What inventory refuses a hold asked for the invite-only phase with only after the phase and
# tier checks passed (Drop.check_reservable's order), and an earlier attempt's hold given back
# (HoldReleased, a SoldOut: held again below for the phase only).
INVITED_REFUSALS = (errors.SoldOut, errors.LimitExceeded, errors.CountryNotAllowed)


def has_line(cmd: PlaceOrder, uow, drops_with_lines: set[uuid.UUID]) -> bool:
    """Whether the order's drop has a line (in the order's transaction), remembered once it has:
    a line is never taken off its drop, so the next orders without a pass are refused before
    their hold (`admitted_ticket`)."""
    drop_id = uuid.UUID(cmd.drop_id)
    if not uow.lines.has_line(drop_id):
        return False
    drops_with_lines.add(drop_id)
    return True


def pass_required() -> errors.LinePassRequired:
    return errors.LinePassRequired("This drop has a line: join it, and order with the pass it gives you "
                                   "(header Line-Pass).")


def hold_units(cmd: PlaceOrder, inventory: InventoryClient, invited_only: bool, again: bool = False,
               batched: bool = True) -> Hold:
    """Hold the order's units at inventory: idempotent by the order id, which is the key's.
    `again` holds once more the units of an earlier attempt of this key whose hold was given back
    (refused after its hold for a reason not kept as the key's answer: no pass yet, a pass used).
    `batched=False`: a call of its own, not behind the batch in flight (asked in a transaction).
    `invited_only` (`asks_invited_only`): held only during the drop's invite-only phase, so an
    order without a pass on a drop with a line never takes a unit from the line's buyers for a
    moment, only to be refused."""
    return inventory.reserve(
        str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity, renew=again,
        buyer_tier=cmd.buyer_tier, shipping_country=cmd.shipping_address.get("country_code"), batched=batched,
        invited_only=invited_only,
    )


def asks_invited_only(cmd: PlaceOrder, drops_with_lines: set[uuid.UUID]) -> bool:
    """Whether the order's hold is asked for the drop's invite-only phase only: an order without
    a pass on a drop this process knows has a line."""
    return cmd.line_pass is None and uuid.UUID(cmd.drop_id) in drops_with_lines


def place_order(cmd: PlaceOrder, hold: Hold, ticket_id: uuid.UUID | None, uow, provider: PaymentProvider,
                settings) -> Order:
    """Record the order for `hold` awaiting payment, with `order.placed` in the outbox, using up
    its line pass (`ticket_id`'s). A refusal (4xx) from here on leaves the hold to the caller to
    give back: it has no order and never will."""
    order_id, drop_id = cmd.order_id, uuid.UUID(cmd.drop_id)
    address_key = address_key_of(cmd.shipping_address)
    refusal = _refusal_after_hold(cmd, hold, ticket_id, uow, settings, drop_id, address_key)
    if refusal is not None:
        raise refusal
    placed_at = utc_now()
    order = Order(
        id=order_id,
        buyer_id=cmd.buyer_id,
        buyer_email=cmd.buyer_email,
        drop_id=drop_id,
        sku=hold.sku,
        product_name=hold.product_name,
        quantity=hold.quantity,
        unit_amount=hold.unit_amount,
        currency=hold.currency,
        shipping_address=cmd.shipping_address,
        address_key=address_key,
        status=None,
        hold_expires_at=hold.hold_expires_at,
        approval_url=provider.approval_url(str(order_id), hold.unit_amount * hold.quantity, hold.currency),
        created_at=placed_at,
        captures_given_back={},
        history=[],
    )
    orders.move_new(order, "order placed; stock held")
    order.history[0].at = placed_at
    uow.orders.add(order)
    data = order_document(order, settings)
    data.update(hold_expires_at=order.hold_expires_at.isoformat(), payment_url=order.approval_url)
    uow.publish("order.placed", data)
    return order


def _refusal_after_hold(cmd: PlaceOrder, hold: Hold, ticket_id: uuid.UUID | None, uow, settings,
                        drop_id: uuid.UUID, address_key: str) -> Problem | None:
    """Why the order is refused though its units are held, taking its address's allowance and
    using up its pass when it is not: None. (The hold is this body's: the order id is derived
    from it.)"""
    if not _take_address_allowance(uow, drop_id, address_key, hold.quantity, settings.per_address_limit):
        return errors.AddressLimitReached(
            f"This shipping address already has {settings.per_address_limit} unit(s) of this drop on order.")
    not_used = None if ticket_id is None else uow.lines.use_pass(ticket_id, drop_id, cmd.buyer_id)
    if not_used == "used":
        return errors.LinePassUsed("This admission pass has already placed an order.")
    if not_used is not None:
        return errors.LinePassExpired("The admission pass has expired; the line gave the slot to the next buyer.")
    return None


def address_key_of(address: dict) -> str:
    """One key per physical address, however it is spelled: country, postal code and street
    compared as letters and digits only (Unicode compatibility forms folded, so full-width digits
    are digits; case folded; punctuation, symbols and invisible characters such as zero-width
    spaces are word breaks), and a US ZIP+4 as its five-digit ZIP. Spelling the door differently
    ("Pkwy.", "1600, Amphitheatre", "94043-1351", "１６００") no longer buys another allowance.
    Abbreviations ("Pkwy" and "Parkway") still count as two spellings."""
    country = _letters_and_digits(address.get("country_code", ""))
    postal = _letters_and_digits(address.get("postal_code", ""))
    if country == "us":
        postal = postal.replace(" ", "")[:5]
    canonical = "|".join((country, postal, _letters_and_digits(address.get("street_address", ""))))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _letters_and_digits(text) -> str:
    folded = unicodedata.normalize("NFKC", str(text)).casefold()
    return " ".join("".join(ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in folded).split())


def _take_address_allowance(uow, drop_id: uuid.UUID, address_key: str, quantity: int, limit: int) -> bool:
    return quantity <= limit and uow.address_allowances.take(drop_id, address_key, quantity, limit)


def _give_back_address_allowance(uow, order: Order) -> None:
    if order.address_key:
        uow.address_allowances.give_back(order.drop_id, order.address_key, order.quantity)


def order_document(order: Order, settings) -> dict:
    """The order as events carry it (see docs/contracts.md)."""
    return {
        "order_id": str(order.id),
        "buyer_id": order.buyer_id,
        "buyer_email": order.buyer_email,
        "drop_id": str(order.drop_id),
        "status": order.status,
        "version": orders.version(order),
        "quantity": order.quantity,
        "items": orders.items(order),
        "total": orders.total(order),
        "shipping_address": order.shipping_address,
        "status_url": f"{settings.public_url.rstrip('/')}/orders/{order.id}",
    }


def find_order(uow, order_id: str, lock: bool = False) -> Order | None:
    return uow.orders.get(order_id, lock=lock)


def orders_page(uow, buyer_id: str, limit: int, offset: int) -> dict:
    """The buyer's orders, newest first, from `offset`, and where the next page starts (None
    after the last)."""
    rows = uow.orders.newest_of(buyer_id, limit + 1, offset)
    return {"orders": rows[:limit], "next_offset": offset + limit if len(rows) > limit else None}


@dataclass(frozen=True)
class PaymentNotice:
    """A provider webhook, already authenticated."""

    event_id: str
    event_type: str
    order_id: str
    capture_id: str  # for a refund or a reversal: the capture it gives back
    amount: int
    currency: str
    undone_by: str | None = None  # a refund's or a reversal's own id at the provider


CAPTURE_DENIED = "PAYMENT.CAPTURE.DENIED"


@dataclass(frozen=True)
class RenewalAsked:
    """A late payment's order as its renewal at inventory needs it: the hold it had, and the
    order's version when read (the renewed hold serves the next one)."""

    order_id: str
    drop_id: str
    buyer_id: str
    quantity: int
    version: int

    @classmethod
    def of(cls, order: Order) -> RenewalAsked:
        return cls(str(order.id), str(order.drop_id), order.buyer_id, order.quantity, orders.version(order))


@dataclass(frozen=True)
class Renewal:
    """Inventory's answer to a renewal, asked with no transaction open: the hold, or the refusal
    that ends the order, for the order at `for_version`."""

    for_version: int
    hold: Hold | None = None
    refusal: Problem | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """What the webhook did (`result`, for the response and the logs) and, when it confirmed the
    order, the version inventory's sale is for (`sell_paid_units`, once the confirmation is
    committed). `renewal_asked`: nothing was done, and the payment is applied again once
    inventory has answered the renewal (`take_payment`)."""

    result: str
    order_id: str | None = None
    sale_version: int | None = None
    renewal_asked: RenewalAsked | None = None
    # a late payment's renewed hold is not used (the order was cancelled meanwhile, or its
    # address is at its limit): it is given back after the commit
    renewal_unused: bool = False


RENEWAL_ATTEMPTS = 3


def take_payment(notice: PaymentNotice, unit_of_work, inventory: InventoryClient, settings) -> PaymentOutcome:
    """The payment webhook: `apply_payment` in a transaction, then the paid units' sale after its
    commit. No transaction is open while inventory is called: behind PgBouncer one would hold a
    server connection (and the order's row lock) for the call's length whenever inventory slows.
    A late payment's renewal is asked between two transactions; the second applies its answer
    only to the order as it was read (its version), and a payment whose order changed meanwhile
    (the sweeper's expiry, say) is looked at again. `unit_of_work()` opens one transaction."""
    renewal = None
    for attempt in range(RENEWAL_ATTEMPTS + 1):
        with unit_of_work() as uow:
            outcome = apply_payment(notice, uow, settings, renewal)
            if outcome.renewal_asked is None:
                uow.commit()
                break
        if attempt < RENEWAL_ATTEMPTS:
            renewal = _renew(outcome.renewal_asked, inventory)
    else:
        raise errors.OrderChanging("The order changed while its late payment was being applied; send it again.")
    sell_paid_units(outcome, inventory)
    if outcome.renewal_unused:
        _give_back_renewal(outcome.order_id, inventory)
    return outcome


def apply_payment(notice: PaymentNotice, uow, settings, renewal: Renewal | None = None) -> PaymentOutcome:
    """Apply one provider event exactly once, whatever order events arrive in. No other service
    is called here: a payment in time is sold after the commit (`sell_paid_units`), and a late
    one needs inventory's `renewal` for the order as it is now, else it asks for it and changes
    nothing (`PaymentOutcome.renewal_asked`).
    """
    bind_order_id(notice.order_id)
    if not uow.payment_events.record(notice.event_id, uuid_or_none(notice.order_id), notice.event_type):
        return PaymentOutcome("duplicate")
    if notice.event_type not in (CAPTURE_COMPLETED, CAPTURE_DENIED) and notice.event_type not in CAPTURE_UNDONE:
        # Half of a drop's webhooks (the provider's "approved" before each capture) change
        # nothing: no lock on the order and no load of it and its history, which the capture
        # right behind would wait for.
        if not uow.orders.exists(notice.order_id):
            raise _unknown_order()
        return PaymentOutcome("noted")
    order = find_order(uow, notice.order_id, lock=True)
    if order is None and notice.event_type == CAPTURE_COMPLETED:
        return _paid_for_no_order(notice, uow)
    if order is None and notice.event_type in CAPTURE_UNDONE:
        # money given back for an order this checkout does not have: an admin's refund of a
        # payment for no order (`_paid_for_no_order`), say. Nothing here is undone.
        log.warning("the provider gave back a payment for an order this checkout does not have",
                    extra={"capture_id": notice.capture_id, "amount": notice.amount, "currency": notice.currency})
        return PaymentOutcome("unknown-order-noted")
    if order is None:
        raise _unknown_order()
    if notice.event_type in CAPTURE_UNDONE:
        return _capture_undone(order, notice, uow, settings)
    if notice.event_type == CAPTURE_DENIED:
        if order.status != orders.AWAITING_PAYMENT:
            return PaymentOutcome(f"ignored-{order.status}")
        orders.move(order, orders.PAYMENT_FAILED, "payment declined by the provider")
        _end_order(order, uow, settings, "order.payment_failed")
        return PaymentOutcome(orders.PAYMENT_FAILED)
    # a hold renewed for this payment by an earlier look, that it will not use now (the order
    # changed during the renewal): given back after the commit, not left to run out. Unless
    # another capture confirmed the order meanwhile: inventory keeps one hold per order, so the
    # hold this one renewed is the one that capture sells (its sale may come later, by the
    # order.confirmed event), and giving it back put a paid order's unit back on sale.
    renewed = renewal is not None and renewal.hold is not None and order.status not in (orders.CONFIRMED,
                                                                                        orders.SHIPPED)
    if _given_back(order, notice.capture_id) >= notice.amount:
        log.warning("a capture the provider has already given back completed: nothing is confirmed or refunded",
                    extra={"capture_id": notice.capture_id})
        return PaymentOutcome("capture-already-undone", str(order.id), renewal_unused=renewed)
    if order.payment_capture_id is not None:
        if order.payment_capture_id == notice.capture_id:
            return PaymentOutcome("already-captured", str(order.id), renewal_unused=renewed)
        _request_refund(order, uow, notice.capture_id, "a second payment for the same order", paid=notice)
        return PaymentOutcome("second-capture-refunded", str(order.id), renewal_unused=renewed)
    if (notice.amount, notice.currency) != (order.total_amount, order.currency):
        # refunded, and the order stays payable: the buyer may still pay the right amount
        log.error("payment amount differs from order total", extra={"paid": notice.amount, "due": order.total_amount})
        _request_refund(order, uow, notice.capture_id, "the amount paid differs from the order total", paid=notice)
        return PaymentOutcome("amount-mismatch-refunded")
    in_time = order.status == orders.AWAITING_PAYMENT and utc_now() <= order.hold_expires_at
    late = not in_time and order.status in (orders.AWAITING_PAYMENT, orders.EXPIRED, orders.PAYMENT_FAILED)
    if late and (renewal is None or renewal.for_version != orders.version(order)):
        return PaymentOutcome("renewal-asked", str(order.id), renewal_asked=RenewalAsked.of(order))
    order.payment_capture_id = notice.capture_id
    if in_time:
        _confirm(order, uow, settings, "payment captured")
        return PaymentOutcome(orders.CONFIRMED, str(order.id), orders.version(order))
    if late:
        return _late_payment(order, uow, renewal, settings)
    # cancelled or shipped: the money goes back
    _request_refund(order, uow, notice.capture_id, f"payment arrived for an order that is {order.status}")
    return PaymentOutcome("refunded", str(order.id), renewal_unused=renewed)


def _capture_undone(order: Order, notice: PaymentNotice, uow, settings) -> PaymentOutcome:
    """The provider gave back (`CAPTURE_UNDONE`) a capture of `order`'s. Of the order's own
    payment, and whole: a confirmed order is cancelled, its units back on sale and the buyer told,
    with no refund asked for (the money is back already); a shipped one cannot be, and is logged as
    an ERROR for people to settle; an order that had ended is only noted (the news of checkout's
    own refund). A part given back leaves the order as it is; parts add up (a refund of some in
    the dashboard, then a chargeback of the rest). Of a capture the order did not take as its
    payment, it is noted all the same: one whose completion has not arrived yet (webhooks come in
    any order) then confirms nothing if all of it came back, and what checkout still refunds of
    any capture is what is left of it."""
    how = CAPTURE_UNDONE[notice.event_type]
    own = notice.capture_id == order.payment_capture_id
    counted = not own or notice.currency == order.currency  # the order's payment is in its currency
    # by the refund's (or reversal's) own id: the provider may tell of one refund twice, under two event ids
    parts = {**order.captures_given_back.get(notice.capture_id, {}),
             notice.undone_by or notice.event_id: notice.amount if counted else 0}
    order.captures_given_back = {**order.captures_given_back, notice.capture_id: parts}
    given_back = _given_back(order, notice.capture_id)
    if not own:
        return PaymentOutcome(f"{how}-noted", str(order.id))
    money = {"capture_id": notice.capture_id, "amount": notice.amount, "currency": notice.currency,
             "due": order.total_amount, "given_back": given_back}
    if given_back < order.total_amount:
        log.warning(f"part of the order's payment was {how} at the provider; the order stands", extra=money)
        return PaymentOutcome(f"part-{how}-noted", str(order.id))
    if order.refunded_at is None:
        order.refund_id, order.refunded_at = notice.undone_by, utc_now()
    if order.status == orders.CONFIRMED:
        _cancel(order, uow, settings, f"payment {how} at the provider",
                told=f"your payment was {how} at the payment provider", refund_reason=None)
        return PaymentOutcome(orders.CANCELLED, str(order.id))
    if order.status == orders.SHIPPED:
        log.error(f"a shipped order's payment was {how} at the provider: settle it with the buyer", extra=money)
        return PaymentOutcome(f"shipped-{how}", str(order.id))
    return PaymentOutcome(f"{how}-noted", str(order.id))


def _given_back(order: Order, capture_id: str | None = None) -> int:
    """What the provider said it gave back of `capture_id` (the order's own payment's by default):
    its refunds and reversals, each counted once."""
    return sum(order.captures_given_back.get(capture_id or order.payment_capture_id, {}).values())


def _unknown_order() -> errors.OrderNotFound:
    return errors.OrderNotFound("The payment names an order this shop does not know.")


def sell_paid_units(outcome: PaymentOutcome, inventory: InventoryClient) -> None:
    """Make a confirmed order's hold a sale now (its confirmation committed), so a slow inventory
    consumer can never let the sweeper give a paid unit away (it waits a grace period past the
    hold's expiry). `order.confirmed` makes the same sale, idempotently: it is what makes it when
    inventory is away now. A sale refused (the hold given back already: clocks apart by more
    than the grace) is left to it too: inventory takes the units again if the drop still has
    them, or reports them lost, and the order is cancelled and refunded (`on_reservation_lost`).
    A cancel committed meanwhile is a newer version of the order, which inventory keeps to."""
    if outcome.sale_version is None:
        return
    try:
        inventory.sell(outcome.order_id, order_version=outcome.sale_version)
    except errors.InventoryUnavailable:
        log.warning("inventory unavailable while confirming; the sale follows from order.confirmed")
    except errors.StaleOrderVersion:
        log.info("the order changed since its payment (cancelled, say) and gave its units back: nothing to sell")
    except Problem as refusal:
        log.warning("the paid order's sale was refused; order.confirmed follows it up",
                    extra={"reason": refusal.slug})


def _renew(asked: RenewalAsked, inventory: InventoryClient) -> Renewal | None:
    """Hold a late payment's units again, for the order's next version, with no transaction open.
    Inventory unavailable: the webhook answers 503 and the provider sends it again. None: the
    order has moved past the version read (inventory has a newer one), so it is read again."""
    try:
        hold = inventory.reserve(asked.order_id, asked.drop_id, asked.buyer_id, asked.quantity, renew=True,
                                 order_version=asked.version + 1, guarded=False)
    except (errors.SoldOut, errors.SaleNotOpen, errors.LimitExceeded) as refusal:
        return Renewal(asked.version, refusal=refusal)
    except errors.StaleOrderVersion:
        return None
    return Renewal(asked.version, hold=hold)


def _give_back_renewal(order_id: str, inventory: InventoryClient) -> None:
    """A late payment's renewed hold is not used: the order was cancelled while the renewal was
    asked (its cancel may have given the units back before the renewal took them again: both
    are the order's next version), or its address reached its limit meanwhile. The units are
    given back now rather than when that hold runs out. Such an order is never confirmed
    again, and inventory never releases a sold unit."""
    give_back_hold(inventory, order_id, guarded=False)


def give_back_hold(inventory: InventoryClient, order_id: str, guarded: bool = True) -> None:
    """Give the order id's hold back at once, for an order that will not use it. When inventory
    does not take it back (it is away), that is logged and the hold runs out on its own: what the
    buyer or the provider is answered stands."""
    try:
        inventory.release(order_id, guarded=guarded)
    except Problem as refusal:
        log.warning("could not give back a hold no order will use; it runs out on its own",
                    extra={"reason": refusal.slug, "order_id": order_id})


def _late_payment(order: Order, uow, renewal: Renewal, settings) -> PaymentOutcome:
    """Money arrived after the hold ran out: keep the order if inventory held its stock again
    (`renewal`, for a whole hold time), else refund. The sale follows the commit, as an on-time
    one does."""
    if renewal.refusal is not None:
        if order.status == orders.AWAITING_PAYMENT:
            orders.move(order, orders.EXPIRED, "payment arrived after the hold expired")
            # the buyer is told their late payment comes back, not that nothing was charged
            _end_order(order, uow, settings, "order.expired", refund=orders.total(order))
        _request_refund(order, uow, order.payment_capture_id, f"late payment and {renewal.refusal.title.lower()}")
        return PaymentOutcome("late-refunded")
    if order.status != orders.AWAITING_PAYMENT and order.address_key and not _take_address_allowance(
            uow, order.drop_id, order.address_key, order.quantity, settings.per_address_limit):
        # The address's count was given back when the order ended, and orders placed since
        # took it: paid late, this one would put more units on the address than the limit.
        _request_refund(order, uow, order.payment_capture_id,
                        f"late payment and the shipping address already has {settings.per_address_limit} unit(s) of this drop")
        return PaymentOutcome("late-refunded", str(order.id), renewal_unused=True)
    order.hold_expires_at = renewal.hold.hold_expires_at
    _confirm(order, uow, settings, "late payment; stock held again")
    return PaymentOutcome("late-confirmed", str(order.id), orders.version(order))


def _confirm(order: Order, uow, settings, reason: str) -> None:
    orders.move(order, orders.CONFIRMED, reason)
    order.confirmed_at = utc_now()
    data = order_document(order, settings)
    data["confirmed_at"] = order.confirmed_at.isoformat()
    uow.publish("order.confirmed", data)


def _end_order(order: Order, uow, settings, event_type: str, holding: bool = True, **extra) -> None:
    """The order no longer holds stock: give back the address allowance (unless an earlier end,
    an expiry say, gave it back: not `holding`) and tell inventory, and the buyer whether they
    were charged (`charged`: a payment was captured for the order, its own or one refunded on
    its own, of the wrong amount say; `extra` says what of the order's own comes back, as
    `refund`)."""
    if holding:
        _give_back_address_allowance(uow, order)
    data = order_document(order, settings)
    charged = order.payment_capture_id is not None or uow.payment_events.captured_for(order.id)
    data.update(charged=charged, refund=None)
    data.update(extra)
    uow.publish(event_type, data)


def _paid_for_no_order(notice: PaymentNotice, uow) -> PaymentOutcome:
    """Money captured for an order this checkout does not have (the provider pointed at another
    environment, a database restored from before the order). Answering 404 let the provider give
    up after its retries with the buyer charged and nobody told. The refund is asked for and
    parked by the consumer (no order to refund against), where the dead-letter alert shows money
    owed: an admin, who can tell whose payment it is from the provider's records, refunds it and
    discards the letter. It is never refunded blindly: a misrouted webhook may be another
    environment's real sale."""
    log.error("a payment was captured for an order this checkout does not have; its refund waits for an admin",
              extra={"capture_id": notice.capture_id, "amount": notice.amount, "currency": notice.currency})
    uow.publish("payment.refund_requested", {
        "order_id": notice.order_id, "capture_id": notice.capture_id, "amount": notice.amount,
        "currency": notice.currency, "reason": "a payment for an order this checkout does not have",
    })
    return PaymentOutcome("unknown-order-refund-parked")


def _request_refund(order: Order, uow, capture_id: str, reason: str, paid: PaymentNotice | None = None) -> None:
    """Ask for the refund through the outbox; checkout's consumer performs it with retries.

    The refund is of what was paid: the capture in `paid` when given, else the order's total;
    checkout's consumer asks the provider for what is left of it then (`on_refund_requested`)."""
    uow.publish("payment.refund_requested", {
        "order_id": str(order.id),
        "capture_id": capture_id,
        "amount": paid.amount if paid else order.total_amount,
        "currency": paid.currency if paid else order.currency,
        "reason": reason,
    })


def cancel_order(order: Order, uow, settings, by_admin: bool) -> bool:
    """Cancel before shipping, at any time: stock goes back at once, a captured payment is refunded.
    An expired or declined order can be cancelled too: a payment the provider completes after
    that (a late capture) is refunded instead of confirming it, so a buyer who gave up is
    never charged. Whether it was cancelled now (False: it already was)."""
    if order.status == orders.CANCELLED:
        return False
    _cancel(order, uow, settings, "cancelled by an admin" if by_admin else "cancelled by the buyer",
            told="cancelled before shipping", refund_reason="order cancelled before shipping")
    return True


def _cancel(order: Order, uow, settings, step: str, told: str, refund_reason: str | None) -> None:
    """Cancel `order` (its history says `step`, the buyer is told `told`): its stock goes back,
    and a paid order's payment is refunded for `refund_reason` (None: the provider has given it
    back already, and the buyer is told so). A late payment an ended order took was refunded as
    it ended: the buyer is told it comes back."""
    paid = order.status == orders.CONFIRMED
    holding = order.status in (orders.AWAITING_PAYMENT, orders.CONFIRMED)  # an ended one gave all back
    orders.move(order, orders.CANCELLED, step)
    order.cancelled_at = utc_now()
    given_back = _given_back(order)
    left, earlier = order.total_amount - given_back, None
    if order.payment_capture_id is None:
        refund, returned = None, False
    elif (paid and refund_reason is None) or left <= 0 or order.refunded_at is not None:
        # back whole already: the provider gave it back, or checkout's refund of a late payment did
        refund, returned = orders.total(order), True
    else:  # what is left of the payment to come back, and what the provider gave back of it before
        refund, returned = {"amount": left, "currency": order.currency}, False
        earlier = {"amount": given_back, "currency": order.currency} if given_back > 0 else None
    _end_order(order, uow, settings, "order.cancelled", holding=holding, cancelled_at=order.cancelled_at.isoformat(),
               reason=told, refund=refund, already_returned=returned, returned_earlier=earlier)
    if paid and refund_reason is not None:
        _request_refund(order, uow, order.payment_capture_id, refund_reason)


def ship_order(order: Order, uow, settings) -> Order:
    orders.move(order, orders.SHIPPED, "handed to the carrier")
    order.shipped_at = utc_now()
    data = order_document(order, settings)
    data["shipped_at"] = order.shipped_at.isoformat()
    uow.publish("order.shipped", data)
    return order


def on_reservation_expired(envelope, uow, settings) -> None:
    """A hold ran out before payment: the order expires (its stock is already back on sale)."""
    order = find_order(uow, str(envelope.data.get("order_id", "")), lock=True)
    if order is None or order.status != orders.AWAITING_PAYMENT:
        return
    bind_order_id(str(order.id))
    orders.move(order, orders.EXPIRED, "payment not received before the hold expired")
    _end_order(order, uow, settings, "order.expired")


def on_refund_requested(envelope, uow, provider: PaymentProvider, settings) -> None:
    """Refund at the provider (idempotent per capture there), then record it and tell the buyer.

    The order records the refund only when it is of the order's own payment: a second capture,
    or one of the wrong amount, is given back without the order's payment saying "refunded" (the
    buyer may still pay the right amount, or has paid already)."""
    data = envelope.data
    order = find_order(uow, str(data["order_id"]), lock=True)
    if order is None:
        # no retry can make the order appear (a payment for no order: `_paid_for_no_order`):
        # parked at once for an admin to read, and refund by hand
        raise PermanentFailure(f"refund for unknown order {data['order_id']}: capture {data.get('capture_id')}, "
                               f"{data.get('amount')} {data.get('currency')}")
    bind_order_id(str(order.id))
    own_payment = data["capture_id"] == order.payment_capture_id
    # What is left to give back now: the provider's news of a give-back may have come since the
    # refund was asked (a chargeback or a dashboard refund, whole or in part, or this very
    # refund's news after a crash before its commit). PayPal refuses a refund of more than is
    # left (a 422, parked as money owed that is not).
    left = data["amount"] - _given_back(order, data["capture_id"])
    returned = left <= 0
    if returned:
        log.info("the provider has given this payment back already; no refund asked",
                 extra={"capture_id": data["capture_id"]})
        refund = Refund(order.refund_id if own_payment else None, data["amount"], data["currency"])
    else:
        try:
            refund = provider.refund(data["capture_id"], left, data["currency"])
        except RefundAlreadyMade as made:
            # given back at the provider (its dashboard, a chargeback) before its news came: not
            # money owed; retried, as for an outage, until the news leaves nothing to give back
            raise PartnerDown(f"the provider has given capture {data['capture_id']} back already; "
                              f"waiting for its news: {made}") from made
        except RefundRefused as refused:  # parked at once, where the dead-letter alert shows money owed
            raise PermanentFailure(f"the provider refused the refund of capture {data['capture_id']}: {refused}") from refused
        except RefundFailed as failed:  # the provider away: retried for a day, not checkout's five attempts
            raise PartnerDown(f"the provider did not confirm the refund of capture {data['capture_id']}: {failed}") from failed
    if own_payment and order.refunded_at is None:
        order.refund_id = refund.refund_id
        order.refunded_at = utc_now()
    document = order_document(order, settings)
    document.update(refund={"amount": refund.amount, "currency": refund.currency, "refund_id": refund.refund_id},
                    reason=data.get("reason", ""),
                    # a second capture, or one of the wrong amount: the order's own payment stands
                    of_order_payment=own_payment, already_returned=returned)
    uow.publish("payment.refunded", document)


def on_reservation_lost(envelope, uow, settings) -> None:
    """Inventory could not sell a confirmed order's units (its confirmation came after the hold
    was given back and the drop sold out meanwhile): cancel the order and refund it."""
    order = find_order(uow, str(envelope.data.get("order_id", "")), lock=True)
    if order is not None and order.status == orders.SHIPPED:
        # Shipped in the moment between the refused sale and this event: a unit left the
        # warehouse that the stock no longer had. It cannot be cancelled; people must settle it,
        # so the event is parked where the dead-letter alert shows it, not acked into a log.
        bind_order_id(str(order.id))
        log.error("a shipped order's unit was lost: one unit more went out than the drop had",
                  extra={"drop_id": str(order.drop_id), "quantity": order.quantity,
                         "reason": envelope.data.get("reason")})
        raise PermanentFailure(f"order {order.id} shipped {order.quantity} unit(s) that drop {order.drop_id} "
                               "no longer had: settle it with the buyer and the stock (replaying changes nothing)")
    if order is None or order.status != orders.CONFIRMED:
        return
    bind_order_id(str(order.id))
    _cancel(order, uow, settings, "the reserved unit was lost; payment refunded",
            told="we could not keep your unit", refund_reason="the reserved unit was lost")


# The emails that tell a buyer their order is confirmed: its confirmation, or the shipping email
# that went out instead when the confirmation was superseded (an email outage that lasted until
# the order shipped: notifications then mails only the newer state). Without the second, such an
# order said "confirmation not sent" for good, and its page kept reading it.
CONFIRMING_EMAILS = frozenset({"order.confirmed", "order.shipped"})


def on_email_sent(envelope, uow) -> None:
    """Notifications sent the confirmation (or what superseded it, `CONFIRMING_EMAILS`): the
    buyer's order page says so (the first sending, should it be sent again). One statement:
    every paid order brings one of these."""
    if envelope.data.get("event_type") in CONFIRMING_EMAILS:
        uow.orders.note_email_sent(str(envelope.data.get("order_id", "")), datetime.fromisoformat(envelope.data["sent_at"]))


def event_handlers(provider: PaymentProvider, settings) -> dict:
    return {
        "reservation.expired": functools.partial(on_reservation_expired, settings=settings),
        "reservation.lost": functools.partial(on_reservation_lost, settings=settings),
        "payment.refund_requested": functools.partial(on_refund_requested, provider=provider, settings=settings),
        "email.sent": on_email_sent,
    }



"""`POST /orders` at most once per Idempotency-Key: what the buyer is answered, first and on
every retry, and what is kept as the key's answer."""
import contextvars
import json
import uuid
from dataclasses import replace

import psycopg
import pytest
import sqlalchemy as sa

from services.checkout import errors, idempotency
from services.checkout.repository import KeyHeld
from services.checkout.schemas import OrderSchema
from shared.errors import PROBLEM_BASE, Problem
from shared.logs import order_id_var
from shared.values import utc_now
from tests.unit.checkout.fakes import BUYER, DROP_ID, HOME, order_request, pass_for

ORDER = OrderSchema()


def send(checkout, cmd):
    """As the view does: place once, in a unit of work the unit commits when it keeps an answer."""
    with checkout.uow as uow:
        return idempotency.place_once(cmd, uow, checkout.inventory, checkout.provider, checkout.settings,
                                      render=ORDER.dump, instance="/orders", drops_with_lines=checkout.drops_with_lines)


def kept(checkout, key="key-1"):
    return checkout.uow.idempotency_keys.rows.get((BUYER, key))


def published(checkout):
    return [event_type for event_type, _ in checkout.uow.published]


def test_the_first_answer_is_the_new_order_and_is_kept_as_the_keys_answer(checkout):
    cmd = order_request()
    answer = send(checkout, cmd)
    assert (answer.status, answer.media_type) == (201, "application/json")
    assert answer.headers == {"Location": f"/orders/{cmd.order_id}"}
    order = checkout.uow.orders.get(cmd.order_id)
    assert answer.body == json.dumps(ORDER.dump(order))
    shown = json.loads(answer.body)
    assert (shown["id"], shown["status"]) == (str(cmd.order_id), "awaiting_payment")
    assert shown["payment"]["approval_url"] == order.approval_url
    assert kept(checkout) == KeyHeld(cmd.fingerprint, 201, answer.body)
    [(event_type, data)] = checkout.uow.published
    assert (event_type, data["order_id"], data["payment_url"]) == ("order.placed", str(cmd.order_id), order.approval_url)


def test_a_retry_gets_the_very_same_answer_marked_replayed_and_no_second_order(checkout):
    first = send(checkout, order_request())
    again = send(checkout, order_request())
    assert (again.status, again.body, again.media_type) == (first.status, first.body, first.media_type)
    assert again.headers == {"Idempotent-Replayed": "true", "Location": f"/orders/{json.loads(first.body)['id']}"}
    # inventory answered the retry's hold with the order's own (same order id), which stays held
    assert len(checkout.inventory.holds) == 1 and checkout.inventory.released == []
    assert published(checkout) == ["order.placed"]


def test_a_key_whose_lost_attempt_held_for_another_body_places_the_retrys_own_order(checkout):
    """The first attempt's hold committed at inventory, then checkout failed (a timeout, a 5xx)
    and kept no answer for the key. A retry of that key with another drop is the key's first
    answered request: its order holds units of its own drop, never the first attempt's hold
    (another order id), which goes back when it expires, as an unpaid hold does."""
    other_drop = "0b7c9a52-3f1e-4c55-9d0b-6a4f2e8c1d37"
    first = order_request()
    checkout.inventory.reserve(str(first.order_id), first.drop_id, first.buyer_id, first.quantity)
    retry = replace(order_request(), drop_id=other_drop)
    answer = send(checkout, retry)
    assert answer.status == 201 and json.loads(answer.body)["drop_id"] == other_drop
    assert retry.order_id != first.order_id and checkout.uow.orders.get(first.order_id) is None
    assert checkout.inventory.holds[str(retry.order_id)].drop_id == other_drop


def test_the_same_key_with_another_country_racing_the_first_never_ships_there(checkout):
    """Inventory answers an order id it already holds with that hold, whatever the request (its
    country refusal included): a key-only order id let a second body, racing the first, place an
    order with an address the drop does not ship to on the first one's hold."""
    canadian = order_request()
    checkout.inventory.reserve(str(canadian.order_id), canadian.drop_id, canadian.buyer_id, canadian.quantity)
    american = replace(canadian, shipping_address={**canadian.shipping_address, "country_code": "US"})
    checkout.inventory.reserve_refusal = errors.CountryNotAllowed("This drop ships to CA only.")
    answer = send(checkout, american)  # its hold refused; the Canadian one has not claimed the key yet
    assert answer.status == 422 and json.loads(answer.body)["type"] == PROBLEM_BASE + "country-not-allowed"
    assert checkout.uow.orders.rows == {}


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(checkout):
    first = send(checkout, order_request())
    with pytest.raises(errors.IdempotencyKeyReused) as refused:
        send(checkout, order_request(quantity=2))
    assert refused.value.status == 422
    # the buyer is told the first body placed an order, and which: not "no order" (the page
    # drops a key answered 422, and the next try met `limit-exceeded` with nothing said)
    order_id = json.loads(first.body)["id"]
    assert refused.value.extensions == {"order_id": order_id, "order": f"/orders/{order_id}"}
    assert order_id in refused.value.detail
    assert kept(checkout).response_body == first.body
    # the second body's own hold (its own order id) goes back; the first order's stays
    assert checkout.inventory.released == [str(order_request(quantity=2).order_id)]
    assert str(order_request().order_id) in checkout.inventory.holds
    assert published(checkout) == ["order.placed"]


@pytest.mark.parametrize("refusal", [errors.SoldOut("The drop is sold out."), errors.SaleNotOpen("Opens at 15:00."),
                                     errors.LimitExceeded("One per buyer.")], ids=lambda refusal: refusal.slug)
def test_a_definitive_refusal_is_the_keys_answer_from_then_on(checkout, refusal):
    checkout.inventory.reserve_refusal = refusal
    answer = send(checkout, order_request())
    assert (answer.status, answer.media_type, answer.headers) == (refusal.status, "application/problem+json", {})
    assert json.loads(answer.body) == {"type": PROBLEM_BASE + refusal.slug, "title": refusal.title,
                                       "status": refusal.status, "detail": refusal.detail, "instance": "/orders"}
    assert kept(checkout).response_status == refusal.status
    assert checkout.uow.orders.rows == {} and checkout.uow.published == []

    checkout.inventory.reserve_refusal = None  # stock came back: the key's answer stays the refusal
    again = send(checkout, order_request())
    assert (again.status, again.body, again.headers) == (answer.status, answer.body, {"Idempotent-Replayed": "true"})
    assert checkout.inventory.released == [str(order_request().order_id)]  # the retry's hold has no order
    assert checkout.uow.orders.rows == {}


def test_an_address_over_its_limit_is_refused_its_hold_released_and_the_refusal_kept(checkout):
    send(checkout, order_request(key="key-1", quantity=2))
    cmd = order_request(key="key-2", quantity=1, address=dict(HOME, street_address="24  SUSSEX drive"))
    answer = send(checkout, cmd)
    assert answer.status == 409
    assert json.loads(answer.body)["type"] == PROBLEM_BASE + "address-limit-exceeded"
    assert checkout.inventory.released == [str(cmd.order_id)]
    assert kept(checkout, "key-2").response_status == 409
    assert checkout.uow.orders.get(cmd.order_id) is None


def test_a_hold_inventory_does_not_take_back_leaves_the_refusal_as_the_answer(checkout):
    """The give-back of a hold refused after it is asked while the key is claimed; inventory away
    then once turned the buyer's 409 into a 503 (and every retry's, while the breaker stayed open)."""
    send(checkout, order_request(key="key-1", quantity=2))
    checkout.inventory.release_refusal = errors.InventoryUnavailable("Inventory did not answer in time.")
    cmd = order_request(key="key-2", quantity=1)

    answer = send(checkout, cmd)

    assert answer.status == 409 and json.loads(answer.body)["type"] == PROBLEM_BASE + "address-limit-exceeded"
    assert kept(checkout, "key-2").response_status == 409


def test_an_order_on_a_hold_an_earlier_request_gave_back_meanwhile_holds_its_units_again(checkout, monkeypatch):
    """Two requests with one key and body: the first held (201), the second got that hold (200).
    The first, refused after its hold (no pass yet), gave it back while it had the key; the second,
    which waited on the key, once placed its order on the hold that was gone: a 201 for no unit."""
    cmd = order_request()
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)  # the first's hold
    claim = checkout.uow.idempotency_keys.claim

    def claimed_after_the_first_gave_its_hold_back(*args):
        checkout.inventory.release(str(cmd.order_id))
        return claim(*args)

    monkeypatch.setattr(checkout.uow.idempotency_keys, "claim", claimed_after_the_first_gave_its_hold_back)

    answer = send(checkout, cmd)

    assert answer.status == 201
    assert [hold["renew"] for hold in checkout.inventory.reserved] == [False, False, False, True]
    assert str(cmd.order_id) not in checkout.inventory.given_back  # held again, for this order


@pytest.mark.parametrize("failure", [errors.InventoryUnavailable("Inventory did not answer in time."),
                                     errors.TooBusy("Checkout is busy.")], ids=lambda failure: str(failure.status))
def test_a_5xx_or_429_is_not_kept_so_the_retry_starts_afresh(checkout, failure):
    checkout.inventory.reserve_refusal = failure
    with pytest.raises(type(failure)):
        send(checkout, order_request())
    assert kept(checkout) is None
    assert checkout.uow.orders.rows == {} and checkout.uow.published == []

    checkout.inventory.reserve_refusal = None
    retry = send(checkout, order_request())
    assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers
    assert json.loads(retry.body)["id"] == str(order_request().order_id)
    assert published(checkout) == ["order.placed"]


def test_the_same_key_with_another_body_after_a_refusal_names_no_order(checkout):
    checkout.inventory.reserve_refusal = errors.SoldOut("The drop is sold out.")
    send(checkout, order_request())
    with pytest.raises(errors.IdempotencyKeyReused) as refused:
        send(checkout, order_request(quantity=2))
    assert refused.value.extensions == {}


LOST = sa.exc.OperationalError("INSERT ...", {}, psycopg.OperationalError("server closed the connection"))
DEADLOCK = sa.exc.OperationalError("INSERT ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))


def fails_once(monkeypatch, target, name: str, error: Exception, meanwhile=lambda: None):
    """`target.name` raises `error` once (after `meanwhile`, what other requests did in the
    meantime), then works."""
    real = getattr(target, name)

    def failing(*args, **kwargs):
        monkeypatch.setattr(target, name, real)
        meanwhile()
        raise error

    monkeypatch.setattr(target, name, failing)


@pytest.mark.parametrize("error", [DEADLOCK, RuntimeError("a bug")], ids=["deadlock", "bug"])
def test_an_order_that_fails_outright_after_its_hold_gives_the_hold_back(checkout, monkeypatch, error):
    """A 5xx while the transaction still holds the key's claim: nothing is kept for the key, so
    the hold was nobody's, and it counted against the buyer's one unit for a hold time: their
    retry with another key, or with the address corrected, was refused `limit-exceeded`."""
    fails_once(monkeypatch, checkout.uow.orders, "add", error)
    cmd = order_request()
    with pytest.raises(type(error)):
        send(checkout, cmd)
    assert checkout.inventory.released == [str(cmd.order_id)]
    assert kept(checkout) is None and checkout.uow.published == []

    retry = send(checkout, cmd)  # the same key and body hold the units again
    assert retry.status == 201 and str(cmd.order_id) not in checkout.inventory.given_back


@pytest.mark.parametrize("where", ["claim", "order"])
def test_a_connection_lost_mid_order_leaves_the_hold_to_the_same_key_and_body(checkout, monkeypatch, where):
    """The claim went with the connection (or was never taken): a request with this key and body
    (a tab duplicated, a client's own retry) may have claimed the key since and placed its order
    on this very hold, which a give-back would leave with no unit. The hold runs out on its own;
    the retry the drop page sends with the same key and body uses it."""
    target = checkout.uow.idempotency_keys if where == "claim" else checkout.uow.orders
    fails_once(monkeypatch, target, "claim" if where == "claim" else "add", LOST)
    cmd = order_request()
    with pytest.raises(sa.exc.OperationalError):
        send(checkout, cmd)
    assert checkout.inventory.released == []

    retry = send(checkout, cmd)
    assert retry.status == 201 and json.loads(retry.body)["id"] == str(cmd.order_id)


def test_a_failed_order_gives_back_the_hold_it_made_again_for_its_key(checkout, monkeypatch):
    """An earlier attempt of the key was refused after its hold and gave it back without an
    answer; this one held the units again (a renewal), then failed."""
    cmd = order_request()
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)
    checkout.inventory.release(str(cmd.order_id))
    fails_once(monkeypatch, checkout.uow.orders, "add", DEADLOCK)
    with pytest.raises(sa.exc.OperationalError):
        send(checkout, cmd)
    assert [hold["renew"] for hold in checkout.inventory.reserved][-1] is True  # held again
    assert str(cmd.order_id) in checkout.inventory.given_back  # and given back once it failed


def test_a_refusal_kept_for_the_key_gives_back_the_hold_an_earlier_attempt_made(checkout):
    """An attempt held, then failed outright; its retry is refused after the hold (the address
    reached its limit meanwhile). No order will ever have this id: the unit goes back now, not
    when the hold runs out."""
    cmd = order_request(key="key-2", quantity=1)
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)  # the lost attempt's
    send(checkout, order_request(key="key-1", quantity=2))  # the address's allowance, taken meanwhile
    answer = send(checkout, cmd)
    assert answer.status == 409 and json.loads(answer.body)["type"] == PROBLEM_BASE + "address-limit-exceeded"
    assert str(cmd.order_id) in checkout.inventory.given_back


def test_a_claim_left_without_an_answer_is_taken_over_by_the_retry(checkout):
    cmd = order_request()
    checkout.uow.idempotency_keys.rows[(BUYER, "key-1")] = KeyHeld(cmd.fingerprint, None, None)
    checkout.uow.commit()
    answer = send(checkout, cmd)
    assert answer.status == 201 and json.loads(answer.body)["id"] == str(cmd.order_id)
    assert kept(checkout).response_status == 201


def test_an_expired_forged_or_foreign_line_pass_is_refused_before_anything_is_held(checkout):
    """Held even for a moment, a unit near the drop's last ones would turn another admitted
    buyer's order into sold-out."""
    checkout.admitted()
    secret = checkout.settings.line_pass_secret
    refused = [(pass_for(buyer=BUYER, expires_in=-5, secret=secret)[0], errors.LinePassExpired),
               (pass_for(buyer=BUYER, secret="a guess at the secret, long enough for HS256")[0], errors.LinePassInvalid),
               (pass_for(buyer="someone else", secret=secret)[0], errors.LinePassInvalid)]
    for line_pass, refusal in refused:
        with pytest.raises(refusal):
            send(checkout, order_request(line_pass=line_pass))
    assert checkout.inventory.reserved == [] and kept(checkout) is None


def test_a_used_line_pass_is_refused_and_the_unit_it_held_given_back_at_once(checkout):
    line_pass, ticket = checkout.admitted()
    assert send(checkout, order_request(line_pass=line_pass)).status == 201
    with pytest.raises(errors.LinePassUsed):
        send(checkout, order_request(key="key-2", line_pass=line_pass))
    assert checkout.inventory.released == [str(order_request(key="key-2").order_id)]
    assert kept(checkout, "key-2") is None and ticket.used_at is not None


def test_a_request_refused_with_a_hold_another_request_made_leaves_it_to_that_one(checkout):
    """Two requests with one key and body: the second got the first's hold (200). Refused for
    want of a pass, it once gave that hold back, and the first, which had its pass and waited
    on the key, then placed its order on a unit that was gone."""
    line_pass, _ = checkout.admitted()
    cmd = order_request(line_pass=line_pass)
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)  # the first's hold
    with pytest.raises(errors.LinePassRequired):
        send(checkout, order_request())  # same key and body, no pass: the same order id
    assert checkout.inventory.released == []

    assert send(checkout, cmd).status == 201
    assert str(cmd.order_id) not in checkout.inventory.given_back


def test_a_second_ask_for_an_earlier_requests_hold_that_inventory_does_not_answer_keeps_the_hold(checkout):
    cmd = order_request()
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)  # an earlier attempt's
    asks = []

    def away_at_the_second_ask():
        asks.append(True)
        if len(asks) == 2:
            raise errors.InventoryUnavailable("Inventory did not answer in time.")

    checkout.inventory.meanwhile = away_at_the_second_ask

    assert send(checkout, cmd).status == 201  # on the hold in hand, not a 503


def test_an_order_without_a_pass_on_a_drop_with_a_line_holds_a_unit_once_per_process_at_most(checkout):
    checkout.admitted()
    for key in ("key-1", "key-2", "key-3"):
        with pytest.raises(errors.LinePassRequired):
            send(checkout, order_request(key=key))
    # the first found the line in its transaction and gave its hold back; the others held nothing
    assert [hold["order_id"] for hold in checkout.inventory.reserved] == [str(order_request().order_id)]
    assert checkout.inventory.released == [str(order_request().order_id)]


@pytest.mark.parametrize("refusal", [errors.SoldOut("The drop is sold out."), errors.SaleNotOpen("Opens at 15:00."),
                                     errors.InventoryUnavailable("Inventory did not answer in time.")],
                         ids=lambda refusal: refusal.slug)
def test_an_order_refused_at_inventory_leaves_its_line_pass_for_the_next_try(checkout, refusal):
    line_pass, ticket = checkout.admitted()
    checkout.inventory.reserve_refusal = refusal
    try:
        send(checkout, order_request(line_pass=line_pass))
    except Problem as raised:
        assert raised is refusal  # a 5xx: nothing kept, the transaction rolls back
    assert ticket.used_at is None

    checkout.inventory.reserve_refusal = None  # a unit came back
    assert send(checkout, order_request(key="key-2", line_pass=line_pass)).status == 201
    assert ticket.used_at is not None


def test_an_address_over_its_limit_leaves_its_line_pass_unused(checkout):
    send(checkout, order_request(key="key-1", quantity=2))
    line_pass, ticket = checkout.admitted(buyer_id="neighbour")
    answer = send(checkout, order_request(key="key-2", buyer_id="neighbour", line_pass=line_pass))
    assert json.loads(answer.body)["type"] == PROBLEM_BASE + "address-limit-exceeded"
    assert ticket.used_at is None


def answered_meanwhile(checkout, status, body="{}"):
    """A concurrent request with the same key, answered while this one waited for its hold."""
    def answer():
        cmd = order_request()
        checkout.uow.idempotency_keys.rows[(BUYER, cmd.idempotency_key)] = KeyHeld(cmd.fingerprint, status, body)
    return answer


def test_a_duplicate_whose_first_was_refused_meanwhile_replays_the_refusal_and_gives_its_hold_back(checkout):
    checkout.inventory.meanwhile = answered_meanwhile(checkout, 409, '{"type": "sold-out"}')
    answer = send(checkout, order_request())
    assert (answer.status, answer.body, answer.replayed) == (409, '{"type": "sold-out"}', True)
    assert checkout.inventory.released == [str(order_request().order_id)]
    assert checkout.uow.orders.rows == {} and published(checkout) == []


def test_a_duplicate_whose_first_placed_the_order_meanwhile_replays_it_and_keeps_the_hold(checkout):
    placed = json.dumps({"id": str(order_request().order_id)})
    checkout.inventory.meanwhile = answered_meanwhile(checkout, 201, placed)
    answer = send(checkout, order_request())
    assert (answer.status, answer.body, answer.replayed) == (201, placed, True)
    assert checkout.inventory.released == []  # the hold is the first's order's: same order id


def test_a_retry_of_a_key_answered_with_an_order_of_another_id_gives_its_own_hold_back(checkout):
    """An order placed before the order id took the body in has another id than its retry's."""
    checkout.inventory.meanwhile = answered_meanwhile(checkout, 201, '{"id": "an id derived from the key alone"}')
    answer = send(checkout, order_request())
    assert (answer.status, answer.replayed) == (201, True)
    assert checkout.inventory.released == [str(order_request().order_id)]


def test_a_line_pass_used_by_another_order_while_this_one_held_is_refused_and_the_hold_given_back(checkout):
    line_pass, ticket = checkout.admitted()

    def used_meanwhile():
        ticket.used_at = utc_now()

    checkout.inventory.meanwhile = used_meanwhile
    with pytest.raises(errors.LinePassUsed):
        send(checkout, order_request(line_pass=line_pass))
    assert checkout.inventory.released == [str(order_request().order_id)]
    assert kept(checkout) is None and checkout.uow.orders.rows == {}


def test_a_retry_of_an_answered_key_is_replayed_whatever_line_pass_it_carries(checkout):
    line_pass, _ = checkout.admitted()
    first = send(checkout, order_request(line_pass=line_pass))
    checkout.drops_with_lines.add(uuid.UUID(DROP_ID))
    expired = pass_for(buyer=BUYER, expires_in=-5, secret=checkout.settings.line_pass_secret)[0]
    for carried in (line_pass, "not a pass", expired, None):
        again = send(checkout, order_request(line_pass=carried))
        assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert checkout.inventory.released == []


@pytest.mark.parametrize("refusal", [None, errors.SoldOut("The drop is sold out."),
                                     errors.InventoryUnavailable("Inventory did not answer in time.")],
                         ids=["placed", "refused", "5xx"])
def test_every_log_line_of_an_order_names_it_from_before_the_hold(checkout, refusal):
    seen = []
    checkout.inventory.meanwhile = lambda: seen.append(order_id_var.get())
    checkout.inventory.reserve_refusal = refusal
    context = contextvars.copy_context()
    try:
        context.run(send, checkout, order_request())
    except Problem:
        pass
    assert seen == [str(order_request().order_id)] == [context[order_id_var]]


@pytest.mark.parametrize("failure", [errors.InventoryUnavailable("Inventory did not answer in time."),
                                     errors.TooBusy("Checkout is busy.")], ids=lambda failure: str(failure.status))
def test_a_retry_of_an_answered_key_is_answered_while_inventory_does_not_answer(checkout, failure):
    first = send(checkout, order_request())
    checkout.inventory.reserve_refusal = failure
    again = send(checkout, order_request())
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    with pytest.raises(type(failure)):
        send(checkout, order_request(key="key-2"))  # a new key has no answer: the failure is its answer


def test_an_order_sent_again_with_its_pass_after_a_refusal_for_none_is_placed(checkout):
    """The first attempt held, found the line and gave the hold back; inventory answers that order
    id with the hold given back (not a new one), so the attempt with the pass holds it again."""
    line_pass, ticket = checkout.admitted()
    with pytest.raises(errors.LinePassRequired):
        send(checkout, order_request())
    placed = send(checkout, order_request(line_pass=line_pass))
    assert placed.status == 201 and ticket.used_at is not None
    assert checkout.inventory.reserved[-1]["renew"] is True
    assert checkout.inventory.released == [str(order_request().order_id)]  # the first attempt's, only


def on_a_drop_with_a_line(checkout, known: bool = True) -> None:
    """A line on the drop; `known`: this process has seen it (an earlier order found it)."""
    checkout.admitted(buyer_id="someone-else")
    if known:
        checkout.drops_with_lines.add(uuid.UUID(DROP_ID))


@pytest.mark.parametrize("known", [True, False], ids=["line-known", "line-found-in-the-transaction"])
def test_an_invited_buyer_orders_without_a_pass_during_the_invite_only_phase(checkout, known):
    """A drop with an invite-only phase and a line: the line admits nobody until the phase ends,
    and the invited tier orders meanwhile without a pass (inventory checks the tier and says the
    hold was made in the phase). Before, every order on a drop with a line needed a pass, and the
    line's passes went by position to buyers inventory then refused as not invited."""
    on_a_drop_with_a_line(checkout, known)
    checkout.inventory.invite_phase = True
    first = send(checkout, replace(order_request(), buyer_tier="friends"))
    again = send(checkout, replace(order_request(), buyer_tier="friends"))
    assert (first.status, again.status, again.replayed) == (201, 201, True)
    assert checkout.uow.orders.get(order_request().order_id) is not None and checkout.inventory.released == []
    # once the line is known, asked to hold only while the phase runs
    assert checkout.inventory.reserved[0].get("invited_only", False) is known


@pytest.mark.parametrize("refusal", [errors.SoldOut("The drop is sold out."),
                                     errors.LimitExceeded("A buyer may reserve at most 1 of this drop.")],
                         ids=lambda refusal: refusal.slug)
def test_an_invited_buyer_refused_at_inventory_during_the_phase_hears_why_not_to_join_the_line(checkout, refusal):
    """Asked for the phase only, a hold refused for a limit or the stock passed the phase's and
    the tier's checks: "join the line" sent the invited buyer to wait for the phase's end, only
    to hear the real refusal then."""
    on_a_drop_with_a_line(checkout)
    checkout.inventory.invite_phase = True
    checkout.inventory.reserve_refusal = refusal
    answer = send(checkout, replace(order_request(), buyer_tier="friends"))
    assert (answer.status, json.loads(answer.body)["type"]) == (refusal.status, f"{PROBLEM_BASE}{refusal.slug}")
    assert kept(checkout) is not None  # the key's answer, as on a drop without a line


def test_a_refusal_of_a_hold_not_asked_for_the_phase_is_not_kept_though_the_line_became_known_meanwhile(checkout):
    """Another order of this process found the drop's line while this one's hold was asked (not
    for the phase only, then): inventory's sold-out says nothing of an invite-only phase, and kept
    as the key's answer it would stand after the buyer got a pass."""
    on_a_drop_with_a_line(checkout, known=False)
    checkout.inventory.reserve_refusal = errors.SoldOut("The drop is sold out.")
    checkout.inventory.meanwhile = lambda: checkout.drops_with_lines.add(uuid.UUID(DROP_ID))
    with pytest.raises(errors.LinePassRequired):
        send(checkout, replace(order_request(), buyer_tier="friends"))
    assert kept(checkout) is None


def test_an_invited_order_whose_hold_went_back_is_not_held_again_once_the_phase_is_over(checkout):
    """Two requests with one key and body: the second got the first's hold, made in the phase.
    Before the second asked again, the first failed (a 5xx) and gave it back, and the phase
    ended: the renewal took a unit without a pass after the phase, from units the line's
    admitter had counted for its buyers. It is asked for the phase only now, and refused."""
    on_a_drop_with_a_line(checkout)
    cmd = replace(order_request(), buyer_tier="friends")
    checkout.inventory.invite_phase = True
    checkout.inventory.reserve(str(cmd.order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)  # the first's hold
    asks = []

    def the_first_fails_and_the_phase_ends():
        asks.append(True)
        if len(asks) == 2:  # the second request's ask again, with the key
            checkout.inventory.release(str(cmd.order_id))
            checkout.inventory.invite_phase = False

    checkout.inventory.meanwhile = the_first_fails_and_the_phase_ends
    with pytest.raises(errors.LinePassRequired):
        send(checkout, cmd)
    assert str(cmd.order_id) in checkout.inventory.given_back and kept(checkout) is None


def test_a_buyer_with_a_tier_is_sent_to_the_line_once_the_invite_only_phase_is_over(checkout):
    """Out of the phase, the tier's order without a pass is refused as any other's, and
    inventory, asked to hold only in the phase, takes no unit for it, even for a moment."""
    on_a_drop_with_a_line(checkout)
    with pytest.raises(errors.LinePassRequired):
        send(checkout, replace(order_request(), buyer_tier="friends"))
    assert checkout.inventory.holds == {} and checkout.inventory.released == [] and kept(checkout) is None


def test_a_hold_made_outside_the_invite_only_phase_does_not_pass_for_an_invited_one(checkout):
    """The first order a process sees on a drop finds its line only in its transaction, after an
    ordinary hold: that hold, made out of the phase, goes back and the buyer is sent to the line."""
    on_a_drop_with_a_line(checkout, known=False)
    with pytest.raises(errors.LinePassRequired):
        send(checkout, replace(order_request(), buyer_tier="friends"))
    assert checkout.inventory.released == [str(order_request().order_id)] and kept(checkout) is None


def test_a_buyer_without_a_tier_is_refused_before_anything_is_held_during_the_invite_only_phase(checkout):
    on_a_drop_with_a_line(checkout)
    checkout.inventory.invite_phase = True
    with pytest.raises(errors.LinePassRequired):
        send(checkout, order_request())
    assert checkout.inventory.reserved == []


@pytest.mark.parametrize("refusal", [errors.SoldOut("The drop is sold out."), errors.SaleNotOpen("Opens at 15:00.")],
                         ids=lambda refusal: refusal.slug)
def test_an_order_without_a_pass_refused_at_inventory_is_told_the_drop_has_a_line_and_nothing_is_kept(checkout,
                                                                                                       refusal):
    line_pass, _ = checkout.admitted()
    checkout.inventory.reserve_refusal = refusal
    with pytest.raises(errors.LinePassRequired):
        send(checkout, order_request())
    assert kept(checkout) is None
    checkout.inventory.reserve_refusal = None
    assert send(checkout, order_request(line_pass=line_pass)).status == 201


def test_a_retry_of_an_order_that_ended_does_not_take_its_units_again(checkout):
    first = send(checkout, order_request())
    checkout.inventory.release(str(order_request().order_id))  # the order expired or was cancelled since
    again = send(checkout, order_request())
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert all(not hold["renew"] for hold in checkout.inventory.reserved)

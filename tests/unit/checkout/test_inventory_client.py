"""Checkout's inventory client on a fake connection pool: how a batch call's answers become each
order's hold or refusal."""
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import urllib3

from services.checkout import errors
from services.checkout.inventory_client import CircuitBreaker, DropStock, Hold, InventoryClient
from shared.logs import order_id_var, request_id_var

DROP = "5b0f3c3e-7a1b-4c2d-9e8f-0a1b2c3d4e5f"


def held(order_id: str) -> dict:
    return {"order_id": order_id, "drop_id": DROP, "quantity": 1, "status": "held",
            "hold_expires_at": "2026-12-04T07:30:00+00:00", "unit_price": {"amount": 29900, "currency": "EUR"},
            "product": {"id": "p", "sku": "OPO-1", "name": "OnePlus One"}}


def problem(slug: str, status: int) -> dict:
    return {"type": f"https://floodgate.dev/problems/{slug}", "title": slug, "status": status, "detail": slug}


class Answer:
    def __init__(self, status: int, document):
        self.status, self.data = status, json.dumps(document).encode()


class Pool:
    """Answers each call with `answer(path, body)` and remembers the calls."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def urlopen(self, method, path, body=None, headers=None):
        sent = json.loads(body) if body else None
        self.calls.append((path, sent))
        return self.answer(path, sent)


def client(answer) -> InventoryClient:
    inventory = InventoryClient("http://inventory.test", "key", 1.0, CircuitBreaker(5, 3.0), hold_batch_size=16)
    inventory._pool = Pool(answer)
    return inventory


def holds(n: int) -> list[tuple[dict, None]]:
    return [({"order_id": f"o{k}", "drop_id": DROP, "buyer_id": f"b{k}", "quantity": 1, "request_id": f"r{k}"}, None)
            for k in range(n)]


def test_each_result_of_a_batch_becomes_its_orders_hold_or_refusal():
    inventory = client(lambda path, body: Answer(200, {"results": [
        {"order_id": "o0", "status": 201, "reservation": held("o0")},
        {"order_id": "o1", "status": 409, "problem": problem("sold-out", 409)},
    ]}))
    first, second = inventory._hold_batch(holds(2))
    assert isinstance(first, Hold) and first.order_id == "o0" and first.unit_amount == 29900
    assert isinstance(second, errors.SoldOut)
    [(path, sent)] = inventory._pool.calls
    assert path == "/reservations/batch" and [h["request_id"] for h in sent["holds"]] == ["r0", "r1"]


def test_a_batch_refused_whole_or_unknown_to_inventory_goes_again_one_hold_at_a_time():
    for refusal in (Answer(422, problem("validation", 422)), Answer(404, problem("not-found", 404))):
        def answer(path, body, refusal=refusal):
            if path == "/reservations/batch":
                return refusal
            return Answer(201, held(body["order_id"])) if body["order_id"] == "o0" else Answer(
                409, problem("limit-exceeded", 409))

        inventory = client(answer)
        first, second = inventory._hold_batch(holds(2))
        assert isinstance(first, Hold) and isinstance(second, errors.LimitExceeded)
        singles = [sent for path, sent in inventory._pool.calls if path == "/reservations"]
        assert [sent["order_id"] for sent in singles] == ["o0", "o1"]
        assert all("request_id" not in sent for sent in singles)  # the single call's body, as before


def test_a_batch_answered_with_the_wrong_number_of_results_fails_every_order_of_it():
    inventory = client(lambda path, body: Answer(200, {"results": [
        {"order_id": "o0", "status": 201, "reservation": held("o0")}]}))
    assert all(isinstance(result, errors.InventoryUnavailable) for result in inventory._hold_batch(holds(3)))


class LoggedIds(logging.Handler):
    """The (order id, request id) each log line is written under."""

    def __init__(self):
        super().__init__()
        self.ids = []

    def emit(self, record):
        self.ids.append((order_id_var.get(), request_id_var.get()))


def test_a_batch_result_that_is_not_its_orders_hold_fails_that_order_alone_and_names_it(monkeypatch):
    inventory = client(lambda path, body: Answer(200, {"results": [
        {"order_id": "o0", "status": 201, "reservation": held("o0")},
        {"order_id": "o1", "status": 201, "reservation": held("o9")},  # another order's hold
        {"order_id": "o2", "status": 201, "reservation": {"order_id": "o2"}},  # a hold without its fields
        {"order_id": "o3"}]}))  # no status

    logged = LoggedIds()
    monkeypatch.setattr(logging.getLogger("floodgate.checkout.inventory"), "handlers", [logged])

    first, *others = inventory._hold_batch(holds(4))

    assert first.order_id == "o0"
    assert all(isinstance(result, errors.InventoryUnavailable) for result in others)
    assert logged.ids == [("o1", "r1"), ("o2", "r2"), ("o3", "r3")]


def test_a_hold_inventory_could_not_make_for_its_database_is_inventory_unavailable():
    inventory = client(lambda path, body: Answer(200, {"results": [
        {"order_id": "o0", "status": 503, "problem": problem("database-unavailable", 503)}]}))
    [result] = inventory._hold_batch(holds(1))
    assert isinstance(result, errors.InventoryUnavailable) and result.status == 503


def test_the_admitter_hears_the_units_left_and_how_many_pass_holders_hold_one():
    inventory = client(lambda path, body: Answer(200, {"drop_id": DROP, "remaining": 7, "holding": 2,
                                                       "opens_at": "2026-12-06T17:00:00+00:00",
                                                       "closes_at": "2026-12-06T18:00:00+00:00",
                                                       "invite_only_until": "2026-12-06T17:10:00+00:00"}))
    stock = inventory.holders(DROP, ["ann", "bob", "cy"])
    assert (stock.remaining, stock.holding) == (7, 2)
    closes = datetime(2026, 12, 6, 18, tzinfo=timezone.utc)
    assert stock.closes_at == closes and stock.closed_by(closes) and not stock.closed_by(closes - timedelta(seconds=1))
    opens = datetime(2026, 12, 6, 17, tzinfo=timezone.utc)
    assert stock.open_by(opens) and not stock.open_by(opens - timedelta(seconds=1))
    # open to everyone once the invite-only phase is over too
    public = datetime(2026, 12, 6, 17, 10, tzinfo=timezone.utc)
    assert stock.open_to_all_by(public) and not stock.open_to_all_by(public - timedelta(seconds=1))
    assert inventory._pool.calls == [(f"/drops/{DROP}/holders", {"buyer_ids": ["ann", "bob", "cy"]})]


def test_an_inventory_that_does_not_know_holders_gives_the_units_left_and_every_pass_counts():
    for unknown in (Answer(404, problem("not-found", 404)), Answer(405, problem("method-not-allowed", 405))):
        def answer(path, body, unknown=unknown):
            return unknown if path.endswith("/holders") else Answer(200, {"id": DROP, "remaining": 4})

        assert client(answer).holders(DROP, ["ann"]) == DropStock(4, 0, None)
    gone = client(lambda path, body: Answer(404, problem("drop-not-found", 404)))
    with pytest.raises(errors.DropNotFound):
        gone.holders(DROP, ["ann"])
    assert [path for path, _ in gone._pool.calls] == [f"/drops/{DROP}/holders"]


def test_more_unused_passes_than_a_call_takes_gives_the_units_left_and_every_pass_counts():
    from services.checkout.inventory_client import MAX_HOLDERS_ASKED
    from services.inventory.schemas import MAX_HOLDERS_ASKED as INVENTORY_TAKES

    assert MAX_HOLDERS_ASKED == INVENTORY_TAKES
    inventory = client(lambda path, body: Answer(200, {"id": DROP, "remaining": 9,
                                                       "closes_at": "2026-12-06T18:00:00+00:00"}))
    stock = inventory.holders(DROP, [f"b{n}" for n in range(MAX_HOLDERS_ASKED + 1)])
    assert (stock.remaining, stock.holding, stock.closes_at.hour) == (9, 0, 18)
    assert [path for path, _ in inventory._pool.calls] == [f"/drops/{DROP}"]


def test_a_sale_for_an_order_cancelled_meanwhile_is_told_apart_from_inventory_failing(caplog):
    # inventory answers 409 stale-order-version when a cancel gave the units back before the
    # payment's sale arrived: once an "unexpected answer" logged as an error and an outage
    inventory = client(lambda path, body: Answer(409, problem("stale-order-version", 409)))
    with pytest.raises(errors.StaleOrderVersion):
        inventory.sell("o1", order_version=2)
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_a_late_payments_renewal_asks_inventory_even_while_the_breaker_is_open():
    inventory = InventoryClient("http://inventory.test", "key", 1.0, CircuitBreaker(1, 60.0), hold_batch_size=16)
    inventory._pool = Pool(lambda path, body: Answer(201, held(body["order_id"])) if path == "/reservations"
                           else Answer(200, {}))
    inventory._breaker.failed()  # the rush's failed orders opened it
    with pytest.raises(errors.InventoryUnavailable):
        inventory.reserve("o9", DROP, "b9", 1)

    with pytest.raises(errors.InventoryUnavailable):  # an order's retry is turned away, as any order
        inventory.reserve("o2", DROP, "b2", 1, renew=True)

    renewed = inventory.reserve("o1", DROP, "b1", 1, renew=True, order_version=2, guarded=False)
    inventory.release("o1", guarded=False)

    assert renewed.order_id == "o1"
    assert [(path, sent.get("renew")) for path, sent in inventory._pool.calls] == [
        ("/reservations", True), ("/reservations/o1/release", None)]


def test_a_call_that_timed_out_is_not_sent_again_and_one_on_a_closed_connection_is():
    retries = InventoryClient("http://inventory.test", "key", 2.0, CircuitBreaker(5, 3.0))._pool.retries

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        retries.increment("POST", "/reservations", error=urllib3.exceptions.ReadTimeoutError(None, "/reservations", "timed out"))
    closed = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    assert retries.increment("POST", "/reservations", error=closed).total == 0  # one more try


def test_units_left_but_fewer_than_asked_is_told_apart_from_sold_out_and_handled_as_one():
    answer = {**problem("not-enough-stock", 409), "detail": "Only 1 unit(s) of this drop are left: order 1 or fewer.",
              "remaining": 1}
    refusal = client(lambda path, body: Answer(409, answer))._refusal_of(409, answer)
    assert isinstance(refusal, errors.NotEnoughStock) and isinstance(refusal, errors.SoldOut)
    assert (refusal.slug, refusal.status) == ("not-enough-stock", 409)
    assert "order 1 or fewer" in refusal.detail and refusal.to_dict()["remaining"] == 1


def test_a_hold_asked_for_the_invite_only_phase_says_so_and_hears_whether_it_was_made_in_it():
    answers = iter([Answer(201, {**held("o1"), "invite_phase": True}), Answer(201, held("o2")),
                    Answer(403, problem("not-invite-phase", 403))])
    inventory = client(lambda path, body: next(answers))
    assert inventory.reserve("o1", DROP, "ann", 1, buyer_tier="friends", invited_only=True, batched=False).invite_phase
    assert not inventory.reserve("o2", DROP, "bob", 1, batched=False).invite_phase  # an inventory that does not say
    with pytest.raises(errors.NotInvitePhase):
        inventory.reserve("o3", DROP, "cy", 1, buyer_tier="friends", invited_only=True, batched=False)
    sent = [body for _, body in inventory._pool.calls]
    assert [body.get("invited_only") for body in sent] == [True, None, True]

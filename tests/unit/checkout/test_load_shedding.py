import json
import threading
import time

from services.checkout.errors import TooBusy
from services.checkout.load_shedding import GATE_WAIT, OrderAdmission, OrderGate, line_pass_patience
from devtools.client import poll
from shared.web import ARRIVED_AT
from tests.unit.checkout.fakes import PASS_SECRET as SECRET, pass_for


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def upper_bound(low, high):
    return high


def test_takes_limit_orders_at_once_and_frees_a_slot_on_leave():
    gate = OrderGate(2, clock=Clock())
    assert [gate.try_enter() for _ in range(3)] == [True, True, False]
    gate.leave()
    assert gate.try_enter()


def test_a_calm_checkout_says_come_back_in_a_second():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    assert gate.try_enter() and not gate.try_enter()
    assert gate.retry_after() == 1  # one refused for one admitted: served within the second


def test_a_crowd_is_spread_over_the_time_the_admitted_rate_needs_and_capped():
    clock = Clock()
    gate = OrderGate(1, max_retry_after=10, clock=clock, draw=upper_bound)
    assert gate.try_enter()
    for _ in range(3):
        assert not gate.try_enter()
    assert gate.retry_after() == 3  # 3 refused per admitted order: spread over up to 3 s
    for _ in range(100):
        gate.try_enter()
    assert gate.retry_after() == 10


def test_the_crowd_of_earlier_seconds_is_forgotten():
    clock = Clock()
    gate = OrderGate(1, clock=clock, draw=upper_bound)
    gate.try_enter()
    for _ in range(50):
        gate.try_enter()
    clock.now = 5.0
    gate.leave()
    assert gate.try_enter() and not gate.try_enter()
    assert gate.retry_after() == 1


def test_the_wait_is_drawn_at_random_from_one_second_up():
    draws = []
    gate = OrderGate(1, clock=Clock(), draw=lambda low, high: draws.append((low, high)) or low)
    for _ in range(4):
        gate.try_enter()
    assert gate.retry_after() == 1 and draws == [(1, 3)]


def test_admission_answers_a_refused_order_itself_and_lets_the_rest_through():
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        start_response("201 Created", [])
        return [b"{}"]

    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(app, gate, TooBusy("busy"), "checkout")
    answers = []
    post = {"REQUEST_METHOD": "POST", "PATH_INFO": "/orders"}

    assert gate.try_enter()  # another order is in hand
    body = b"".join(admission(post, lambda status, headers: answers.append((status, dict(headers)))))
    status, headers = answers[-1]
    assert status.startswith("429") and headers["Retry-After"] == "1"
    assert headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith("/too-busy") and seen == []

    admission({"REQUEST_METHOD": "GET", "PATH_INFO": "/orders"}, lambda *a: None)  # not an order: never shed
    gate.leave()
    admission(post, lambda *a: None)
    assert seen == ["/orders", "/orders"]
    assert gate.try_enter()  # the admitted order gave its slot back


def created(environ, start_response):
    start_response("201 Created", [])
    return [b"{}"]


def order_with(line_pass: str | None) -> dict:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/orders"}
    if line_pass is not None:
        environ["HTTP_LINE_PASS"] = line_pass
    return environ


def answer_of(admission, environ) -> str:
    statuses = []
    b"".join(admission(environ, lambda status, headers: statuses.append(status)))
    return statuses[-1]


def _waited(outcome: str, figure: str = "_count") -> float:
    """How many pass holders' waits at the gate ended so (`_count`), or their seconds (`_sum`)."""
    for metric in GATE_WAIT.collect():
        for sample in metric.samples:
            if sample.name.endswith(figure) and sample.labels == {"service": "checkout", "outcome": outcome}:
                return sample.value
    return 0.0


def waits_at(gate: OrderGate, ticket_id) -> None:
    """Returns once the order with the pass of `ticket_id` waits at `gate` for a slot."""
    poll(lambda: str(ticket_id) in gate._waiting, timeout=10, interval=0.01, what="the order to wait for a slot")


def test_an_order_with_a_line_pass_waits_for_a_slot_and_takes_the_one_left():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(created, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 30))
    entered_before, refused_before = _waited("entered"), _waited("refused")
    assert gate.try_enter()  # another order is in hand
    (line_pass, ticket_id), answers = pass_for(), []
    waiting = threading.Thread(target=lambda: answers.append(answer_of(admission, order_with(line_pass))))
    waiting.start()
    waits_at(gate, ticket_id)
    assert answers == [] and _waited("entered") == entered_before  # neither answered nor refused while it waits
    gate.leave()
    waiting.join(timeout=10)
    # it got the slot it waited for (counted among the waits that entered, none refused)
    assert answers == ["201 Created"] and _waited("entered") == entered_before + 1
    assert _waited("refused") == refused_before and not gate._waiting
    assert gate.try_enter()  # and it gave the slot back


def test_an_order_that_waited_for_a_slot_counts_its_wait_in_its_time():
    """Its arrival is noted before the gate (shared.web.ARRIVED_AT), and Flask's request time,
    which POST /orders' latency and FloodgateOrdersSlow read, counts from it. Before, the up to
    2 s a pass holder waited were in no figure the alert read."""
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    arrivals = []

    def noting_arrival(environ, start_response):
        arrivals.append(environ[ARRIVED_AT])
        return created(environ, start_response)

    admission = OrderAdmission(noting_arrival, gate, TooBusy("busy"), "checkout",
                               patience=line_pass_patience(SECRET, 30))
    assert gate.try_enter()
    (line_pass, ticket_id), answers = pass_for(), []
    waiting = threading.Thread(target=lambda: answers.append(answer_of(admission, order_with(line_pass))))
    waiting.start()
    waits_at(gate, ticket_id)
    seen_waiting = time.perf_counter()
    gate.leave()
    waiting.join(timeout=10)
    assert answers == ["201 Created"]
    [arrived] = arrivals
    assert arrived < seen_waiting  # noted before the wait, not when the slot came


def test_one_order_per_pass_waits_the_same_pass_again_is_refused_at_once():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(created, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 5))
    refused_before, refused_seconds_before = _waited("refused"), _waited("refused", "_sum")
    assert gate.try_enter()
    (line_pass, ticket_id), answers = pass_for(), []
    waiting = threading.Thread(target=lambda: answers.append(answer_of(admission, order_with(line_pass))))
    waiting.start()
    waits_at(gate, ticket_id)
    assert answer_of(admission, order_with(line_pass)).startswith("429")
    assert _waited("refused") == refused_before + 1
    assert _waited("refused", "_sum") - refused_seconds_before < 1.0  # at once, not after its patience
    assert waiting.is_alive()  # the first still waits
    gate.leave()
    waiting.join(timeout=10)
    assert answers == ["201 Created"]


def test_a_pass_holder_is_refused_after_its_patience_and_everyone_else_at_once():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(created, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 0.05))
    refused_before = _waited("refused")
    assert gate.try_enter()
    assert answer_of(admission, order_with(pass_for()[0])).startswith("429")
    assert _waited("refused") == refused_before + 1
    # without a pass, or with one that is forged or expired, there is no waiting (and nothing counted)
    for line_pass in (None, "forged", pass_for(expires_in=-5)[0],
                      pass_for(secret="someone else's secret, long enough for HS256")[0]):
        assert answer_of(admission, order_with(line_pass)).startswith("429")
    assert _waited("refused") == refused_before + 1


def test_only_a_current_pass_buys_patience():
    patience = line_pass_patience(SECRET, 2.0)
    issued, ticket_id = pass_for()
    assert patience(order_with(issued)) == (2.0, str(ticket_id))
    assert [patience(order_with(p)) for p in (None, "forged", pass_for(expires_in=-5)[0])] == [(0.0, None)] * 3


def test_only_a_pass_holders_refusal_slows_the_line():
    """The admitter halves its pace for every refusal it is told of: orders without a pass (bots
    without a token, a lineless drop's crowd) refused at a full gate once slowed the line too."""
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(created, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 0.05))
    assert gate.try_enter()
    for line_pass in (None, "forged", pass_for(expires_in=-5)[0]):
        assert answer_of(admission, order_with(line_pass)).startswith("429")
    assert gate.refused_total == 0
    assert answer_of(admission, order_with(pass_for()[0])).startswith("429")
    assert gate.refused_total == 1


def test_a_slot_left_goes_to_the_pass_holder_waiting_not_to_an_order_without_a_pass():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    admission = OrderAdmission(created, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 30))
    assert gate.try_enter()
    (line_pass, ticket_id), answers = pass_for(), []
    waiting = threading.Thread(target=lambda: answers.append(answer_of(admission, order_with(line_pass))))
    waiting.start()
    waits_at(gate, ticket_id)
    gate.leave()  # the slot is left while the pass holder waits, and an order without a pass asks first
    assert not gate.try_enter()
    waiting.join(timeout=10)
    assert answers == ["201 Created"]
    assert gate.try_enter()  # no one waits now: an order without a pass takes the slot


def test_a_pass_holder_who_comes_while_another_waits_waits_after_them():
    gate = OrderGate(1, clock=Clock(), draw=upper_bound)
    assert gate.try_enter()
    (first_pass, first_ticket), answers = pass_for(), []
    placing = threading.Event()  # the first's order holds its slot until the second has asked

    def held_open(environ, start_response):
        placing.wait(10)
        return created(environ, start_response)

    admission = OrderAdmission(held_open, gate, TooBusy("busy"), "checkout", patience=line_pass_patience(SECRET, 30))
    waiting = threading.Thread(target=lambda: answers.append(answer_of(admission, order_with(first_pass))))
    waiting.start()
    waits_at(gate, first_ticket)
    gate.leave()  # the slot is left while the first waits; a second pass holder asks without waiting
    assert not gate.try_enter(0.0, str(pass_for()[1]))
    placing.set()
    waiting.join(timeout=10)
    assert answers == ["201 Created"]

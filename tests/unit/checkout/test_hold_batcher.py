"""The batcher that lets a checkout process's concurrent orders share one call to inventory:
real threads, a fake call that can be held open."""
import threading
import time

import pytest

from devtools.client import poll
from services.checkout import errors
from services.checkout.inventory_client import Batcher


class HeldCall:
    """A `send` that records each call's items and answers once the test lets it."""

    def __init__(self, answer=lambda item: f"held {item}"):
        self.calls: list[list] = []
        self.open = threading.Event()
        self.answer = answer
        self._lock = threading.Lock()

    def __call__(self, items):
        with self._lock:
            self.calls.append(list(items))
        assert self.open.wait(10), "the test never let the call answer"
        return [self.answer(item) for item in items]


def behind_one_call(batcher, items, let_it_answer):
    """Ask for items[0] from a thread and, once its call is in flight, for the rest from a thread
    each; then `let_it_answer()` and wait for every thread. Returns {item: result or raised}."""
    results = {}

    def ask(item):
        try:
            results[item] = batcher.submit(item)
        except Exception as error:  # what the caller would see raised
            results[item] = error

    threads = [threading.Thread(target=ask, args=(item,)) for item in items]
    threads[0].start()
    poll(lambda: batcher._calls == 1 and not batcher._queue, what="the first order's call in flight")
    for thread in threads[1:]:
        thread.start()
    poll(lambda: len(batcher._queue) == len(items) - 1, what="the other orders waiting behind it")
    let_it_answer()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_an_order_alone_is_sent_at_once_on_its_own():
    send = HeldCall()
    send.open.set()
    assert Batcher(send, max_size=16, max_calls=1).submit("a") == "held a"
    assert send.calls == [["a"]]


def test_orders_that_arrive_during_a_call_go_together_in_the_next_one_and_each_gets_its_own_answer():
    send = HeldCall()
    batcher = Batcher(send, max_size=16, max_calls=1)
    results = behind_one_call(batcher, list("abcd"), send.open.set)
    assert send.calls[0] == ["a"] and sorted(send.calls[1]) == ["b", "c", "d"] and len(send.calls) == 2
    assert results == {item: f"held {item}" for item in "abcd"}
    assert batcher._calls == 0 and not batcher._queue


def test_a_call_takes_at_most_max_size_orders_and_the_rest_follow():
    send = HeldCall()
    batcher = Batcher(send, max_size=2, max_calls=1)
    results = behind_one_call(batcher, list("abcde"), send.open.set)
    assert [len(call) for call in send.calls] == [1, 2, 2]
    assert sorted(item for call in send.calls for item in call) == list("abcde")
    assert results == {item: f"held {item}" for item in "abcde"}


def test_two_calls_may_be_in_flight_when_allowed():
    send = HeldCall()
    batcher = Batcher(send, max_size=16, max_calls=2)
    threads = [threading.Thread(target=batcher.submit, args=(item,)) for item in "ab"]
    for thread in threads:
        thread.start()
    poll(lambda: len(send.calls) == 2, what="two calls at once, one order each")
    send.open.set()
    for thread in threads:
        thread.join(10)
    assert sorted(send.calls) == [["a"], ["b"]] and batcher._calls == 0


def test_a_refusal_is_raised_in_its_own_order_only():
    send = HeldCall(answer=lambda item: errors.SoldOut("gone") if item == "b" else f"held {item}")
    batcher = Batcher(send, max_size=16, max_calls=1)
    results = behind_one_call(batcher, list("abc"), send.open.set)
    assert isinstance(results["b"], errors.SoldOut)
    assert results["a"] == "held a" and results["c"] == "held c"


def test_a_call_that_raises_fails_its_sender_with_that_error_and_the_others_with_inventory_unavailable():
    class Broken(Exception):
        pass

    def send(items):
        if len(items) > 1:
            raise Broken("bug")
        first_call_open.wait(10)
        return [f"held {item}" for item in items]

    first_call_open = threading.Event()
    batcher = Batcher(send, max_size=16, max_calls=1)
    results = behind_one_call(batcher, list("abc"), first_call_open.set)
    assert results["a"] == "held a"
    raised = sorted(type(results[item]).__name__ for item in "bc")
    assert raised == ["Broken", "InventoryUnavailable"]
    assert batcher._calls == 0 and not batcher._queue
    # and the batcher still works afterwards
    assert batcher.submit("d") == "held d"


@pytest.mark.parametrize("max_calls", [1, 3])
def test_many_threads_each_get_their_own_answer_and_no_turn_is_lost(max_calls):
    lock = threading.Lock()
    sizes, in_flight, most = [], [0], [0]

    def send(items):
        with lock:
            sizes.append(len(items))
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.0005)  # a call takes time, so calls overlap and turns change hands mid-call
        with lock:
            in_flight[0] -= 1
        return [item * 2 for item in items]

    batcher = Batcher(send, max_size=8, max_calls=max_calls)
    answers = {}

    def ask(start):
        for n in range(start, start + 200):
            answers[n] = batcher.submit(n)

    threads = [threading.Thread(target=ask, args=(k * 1000,)) for k in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert answers == {n: n * 2 for k in range(12) for n in range(k * 1000, k * 1000 + 200)}
    assert sum(sizes) == 2400 and max(sizes) <= 8
    assert most[0] <= max_calls
    assert batcher._calls == 0 and not batcher._queue


def test_a_call_that_answers_too_few_results_fails_each_of_its_orders_instead_of_leaving_them_waiting():
    send = HeldCall()

    def short(items):  # a peer that answered only the first hold of each call
        return send(items)[:1]

    batcher = Batcher(short, max_size=16, max_calls=1)
    results = behind_one_call(batcher, list("abc"), send.open.set)
    assert results["a"] == "held a"  # its call answered it
    assert all(isinstance(results[item], errors.InventoryUnavailable) for item in "bc")
    assert batcher._calls == 0 and not batcher._queue

from services.checkout.load_shedding import OrderGate


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
    assert gate.retry_after() == 2  # one refused for one admitted: within two seconds


def test_a_crowd_is_spread_over_the_time_the_admitted_rate_needs_and_capped():
    clock = Clock()
    gate = OrderGate(1, max_retry_after=10, clock=clock, draw=upper_bound)
    assert gate.try_enter()
    for _ in range(3):
        assert not gate.try_enter()
    assert gate.retry_after() == 6  # 3 refused per admitted order: spread over up to 6 s
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
    assert gate.retry_after() == 2


def test_the_wait_is_drawn_at_random_from_one_second_up():
    draws = []
    gate = OrderGate(1, clock=Clock(), draw=lambda low, high: draws.append((low, high)) or low)
    gate.try_enter(), gate.try_enter()
    assert gate.retry_after() == 1 and draws == [(1, 2)]

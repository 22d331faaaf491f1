"""Mail waits for the rush: held while the machine's other processes keep it busy, never longer
than its bound, never for its own consumer's work."""
import threading

import pytest

from shared.messaging.deferral import Deferral, OthersShare, read_proc_stat


class Clock:
    def __init__(self, now: float = 1000.0, step: float = 0.0):
        self.now, self.step = now, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_others_share_leaves_out_this_process_own_cpu():
    # 100 ticks a second, 2 cores: 200 ticks of machine time a second
    stats = iter([(1000, 5000), (1180, 5200), (1200, 5400)])
    own = iter([10.0, 10.5, 11.5])  # seconds of this process's CPU
    clock = Clock(step=1.0)
    share = OthersShare(read_stat=lambda: next(stats), own_cpu=lambda: next(own), clock=clock, ticks_per_second=100)
    assert share() is None  # one sample: nothing to compare yet
    # the machine 90% busy, this process 25% of it: the others used 130 of the 150 ticks it left
    assert share() == pytest.approx((180 - 50) / (200 - 50))
    assert share() == 0.0  # this process was all of the machine's busy time


def test_this_process_crowding_a_saturated_machine_does_not_make_it_look_free():
    # both cores busy all along; this process took 40% of the machine in the second window
    stats = iter([(0, 0), (200, 200), (400, 400)])
    own = iter([0.0, 0.0, 0.8])
    share = OthersShare(read_stat=lambda: next(stats), own_cpu=lambda: next(own), clock=Clock(step=1.0),
                        ticks_per_second=100)
    share()
    assert share() == 1.0
    assert share() == 1.0  # the others used all it left them: still busy (0.6 of the machine before)


def test_the_machine_is_sampled_at_most_once_a_window_whatever_the_threads_asking():
    reads = []

    def read():
        reads.append(1)
        return (100 * len(reads), 400 * len(reads))

    clock = Clock()
    share = OthersShare(read_stat=read, own_cpu=lambda: 0.0, clock=clock, ticks_per_second=100, window=0.25)
    share()
    clock.now += 0.3
    assert share() == 0.25
    for _ in range(10):
        clock.now += 0.01
        assert share() == 0.25
    assert len(reads) == 2


def test_without_proc_stat_there_is_no_share(tmp_path):
    assert read_proc_stat(tmp_path / "missing") is None
    assert OthersShare(read_stat=lambda: None)() is None


def test_proc_stat_reads_busy_and_total_ticks(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n")
    assert read_proc_stat(stat) == (160, 980)  # idle and iowait are not busy


def test_a_message_is_held_while_the_machine_is_busy_and_goes_once_it_is_not():
    shares = iter([0.95, 0.9, 0.85, 0.5])
    asked = []

    def share():
        asked.append(1)
        return next(shares)

    deferral = Deferral(seconds=30, busy_share=0.8, others_share=share)
    waited = deferral.wait(occurred_at=deferral._clock(), stop=threading.Event())
    assert len(asked) == 4
    assert waited >= 3 * Deferral.STEP_SECONDS


def test_a_message_is_never_held_past_its_bound_however_busy_the_machine():
    clock = Clock(step=10.0)  # every look at the clock, 10 s later
    looks = []

    def busy():
        looks.append(1)
        assert len(looks) < 10, "still holding a message older than its bound"
        return 1.0

    deferral = Deferral(seconds=30, busy_share=0.8, others_share=busy, clock=clock)
    occurred = clock.now
    deferral.wait(occurred_at=occurred, stop=threading.Event())
    assert len(looks) == 1  # 20 s old: held; 30 s old: sent without asking again


@pytest.mark.parametrize("seconds, occurred_at, share", [
    (0, 1000.0, 1.0),       # deferral off
    (30, None, 1.0),        # no timestamp: an older publisher, or a retry's copy
    (30, 1000.0, None),     # no /proc/stat
    (30, 1000.0, 0.79),     # not busy enough
])
def test_a_message_goes_at_once_when_there_is_nothing_to_wait_for(seconds, occurred_at, share):
    deferral = Deferral(seconds=seconds, busy_share=0.8, others_share=lambda: share, clock=Clock(now=1000.0))
    assert deferral.wait(occurred_at=occurred_at, stop=threading.Event()) == 0.0


def test_stopping_the_consumer_ends_the_wait():
    stop = threading.Event()
    deferral = Deferral(seconds=3600, busy_share=0.8, others_share=lambda: 1.0)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    waited = deferral.wait(occurred_at=deferral._clock(), stop=stop)
    timer.join()
    assert 0.15 <= waited < 5

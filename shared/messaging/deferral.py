"""Mail waits for the rush: a consumer whose work may come a little late holds each message while
the rest of its machine is busy, for a bounded time after the event.

On a machine shared with the APIs, an email costs more CPU outside the consumer than in it: the
SMTP server, PostgreSQL's delivery-log commit and RabbitMQ's delivery and ack all run at full
priority, so lowering the consumer's own priority (`BACKGROUND_NICENESS`) left a drop's placement
where it was. Holding the message does what niceness could not: while the other processes use at
least `BUSY_CPU_SHARE` of the machine's CPU, a message younger than `DEFER_WHILE_BUSY_SECONDS`
waits (checked every 50 ms); once the rush eases, or the message reaches that age, it goes.
Under a short rush the mail drains after it; under a long one each email goes out that many
seconds late, and the consumer keeps up again.

"The other processes": the machine's busy CPU time (`/proc/stat`, every process, the APIs, the
database, the broker) less this process's own, as a share of the CPU this process left them, so
a consumer never holds mail because of the mail it sends, and never lets it go because its own
work (an email's first render, say) crowded the others out of a saturated machine. On a machine of its own (a Kubernetes node without the APIs) it never waits.
Without `/proc/stat` (not Linux) it never waits either.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("floodgate.consumer")

PROC_STAT = Path("/proc/stat")
_IDLE_FIELDS = (3, 4)  # idle, iowait: of `cpu  user nice system idle iowait irq softirq steal ...`


def read_proc_stat(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine in clock ticks since boot, or None."""
    try:
        with path.open("rb") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 5:
        return None
    total = sum(values)
    return total - sum(values[i] for i in _IDLE_FIELDS), total


class OthersShare:
    """The share of the machine's CPU left by this process that the other processes used lately:
    over the last `window` seconds or more, sampled at most that often (threads share one sample)."""

    def __init__(self, read_stat: Callable[[], tuple[int, int] | None] = read_proc_stat,
                 own_cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 ticks_per_second: int | None = None, window: float = 0.25):
        self._read_stat, self._own_cpu, self._clock = read_stat, own_cpu, clock
        self._ticks = ticks_per_second or os.sysconf("SC_CLK_TCK")
        self.window = window
        self._lock = threading.Lock()
        self._last: tuple[float, int, int, float] | None = None  # (when, busy, total, own seconds)
        self._share: float | None = None

    def __call__(self) -> float | None:
        """The latest share (0..1), or None before two samples or without `/proc/stat`."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last[0] < self.window:
                return self._share
            stat = self._read_stat()
            if stat is None:
                return None
            sample = (now, stat[0], stat[1], self._own_cpu())
            if self._last is not None and sample[2] > self._last[2]:
                own = (sample[3] - self._last[3]) * self._ticks
                left = sample[2] - self._last[2] - own
                others = sample[1] - self._last[1] - own
                self._share = min(1.0, max(0.0, others / left)) if left > 0 else 1.0
            self._last = sample
            return self._share


class Deferral:
    """Holds a message while the machine is busy, until it is `seconds` old (0: never holds)."""

    STEP_SECONDS = 0.05
    LOG_EVERY_SECONDS = 5.0

    def __init__(self, seconds: float, busy_share: float, others_share: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.seconds, self.busy_share = seconds, busy_share
        self._clock = clock
        if others_share is None:
            others_share = OthersShare()
            if seconds > 0:
                # Sampled all along, so the first message after a quiet spell is judged on the
                # last quarter second, not on the spell (nor, right after a start, on nothing).
                threading.Thread(target=self._keep_sampling, args=(others_share,), daemon=True,
                                 name="machine-load").start()
        self._others_share = others_share
        self._lock = threading.Lock()
        self._held = 0
        self._longest = 0.0
        self._last_log = float("-inf")

    @classmethod
    def from_settings(cls, settings) -> "Deferral":
        return cls(settings.defer_while_busy_seconds, settings.busy_cpu_share)

    @staticmethod
    def _keep_sampling(others_share: "OthersShare") -> None:
        while True:
            others_share()
            time.sleep(others_share.window)

    def wait(self, occurred_at: float | None, stop: threading.Event) -> float:
        """Wait while the others keep the machine busy and the event (`occurred_at`, epoch
        seconds; None: unknown, never held) is younger than the bound; the seconds waited."""
        if self.seconds <= 0 or occurred_at is None:
            return 0.0
        started, busiest = self._clock(), 0.0
        while not stop.is_set() and self._clock() - occurred_at < self.seconds:
            share = self._others_share()
            if share is None or share < self.busy_share:
                break
            busiest = max(busiest, share)
            stop.wait(self.STEP_SECONDS)
        waited = self._clock() - started
        if waited >= self.STEP_SECONDS:
            self._note(waited, busiest)
        return waited

    def _note(self, waited: float, share: float) -> None:
        """One log line every few seconds while messages are held, not one per message."""
        with self._lock:
            self._held += 1
            self._longest = max(self._longest, waited)
            now = self._clock()
            if now - self._last_log < self.LOG_EVERY_SECONDS:
                return
            held, longest, self._held, self._longest, self._last_log = self._held, self._longest, 0, 0.0, now
        log.info("messages held while the machine was busy", extra={
            "held": held, "longest_wait_seconds": round(longest, 2), "others_cpu_share": round(share, 2),
            "busy_cpu_share": self.busy_share, "defer_while_busy_seconds": self.seconds,
        })

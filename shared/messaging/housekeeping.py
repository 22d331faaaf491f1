"""What a service's consumer deletes as it goes, so its tables keep a bounded past.

- The inbox (checkout, inventory): a message id is kept `INBOX_RETENTION_SECONDS` (7 days). A
  copy of a message comes again within seconds or minutes (a redelivery after a lost ack, the
  relay publishing a batch again after a crash before marking it); a message that is retried or
  parked has no inbox row until it is handled. Kept for good, the table grew by every event.
- Notifications' delivery log (`DELIVERY_LOG_RETENTION_SECONDS`, 30 days): see
  services/notifications/repository.py `DeliveryLog.purge_finished`.
- Checkout's refused idempotency keys (`REFUSED_KEY_RETENTION_SECONDS`, two days): a key whose
  answer was a refusal (sold out, a limit, a bad address). A lineless drop's crowd leaves one per
  buyer; the drop page sends a new key after a refusal, and a retry of a lost answer comes within
  seconds. A key that placed an order stays as long as its order (services/checkout/idempotency.py).

Every `HOUSEKEEPING_INTERVAL_SECONDS` (an hour; the first round `FIRST_ROUND_SECONDS`, 15
minutes, after the consumer starts, so that a rollout has replaced every API pod before the first
purge) a thread of the consumer process deletes what has aged, `HOUSEKEEPING_BATCH_SIZE` (1,000)
rows a transaction and at most `MAX_BATCHES` a round, never in one long transaction; a round that
stops at its bound is followed by the next one `CATCH_UP_SECONDS` (a minute) later, so a
long-kept table is worked down at about a million rows an hour. Consumer replicas purge side by
side: each batch takes only rows nobody else is deleting (SKIP LOCKED). A round is put off while
the machine's other processes keep it busy (`BUSY_CPU_SHARE`, as mail waits for the rush:
shared/messaging/deferral.py), by a minute at a time, for `MAX_PUT_OFF_SECONDS` (an hour) at
most: on a box shared with the APIs a drop's rush comes first, and a machine that is always busy
still purges. A failed round is logged and the next one tries again; consuming is never held up
by it. The thread runs at the consumer's background priority.

The inbox has no index on `received_at`, nor the idempotency keys on `created_at`: each batch
scans the table (a week of message ids; two days' refusals and the key of every order ever
placed) until it has its rows, an hour apart; an index would be written by every message a
consumer handles, and by every order. The keys' scan grows with the orders kept: at a million
orders, about a million rows a batch, seconds of one core an hour.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Sequence

import sqlalchemy as sa

from shared.messaging.deferral import OthersShare

log = logging.getLogger("floodgate.messaging.housekeeping")

HOUSEKEEPING_BATCH_SIZE = 1000
MAX_BATCHES = 20
FIRST_ROUND_SECONDS = 900.0
CATCH_UP_SECONDS = 60.0
MAX_PUT_OFF_SECONDS = 3600.0

# One batch of inbox ids past their retention; the number deleted.
_PURGE_INBOX = sa.text(
    "WITH aged AS (SELECT message_id FROM inbox WHERE received_at < now() - make_interval(secs => :retention) "
    "LIMIT :batch FOR UPDATE SKIP LOCKED), "
    "gone AS (DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM aged) RETURNING 1) "
    "SELECT count(*) FROM gone"
)


def purge_inbox(engine: sa.Engine, retention_seconds: float, batch_size: int) -> int:
    """Delete one batch of inbox ids received more than `retention_seconds` ago; how many went."""
    with engine.begin() as connection:
        return int(connection.execute(_PURGE_INBOX, {"retention": retention_seconds, "batch": batch_size}).scalar_one())


Task = Callable[[int], int]  # one batch of at most the given size: the rows it deleted


def purge(name: str, task: Task, batch_size: int = HOUSEKEEPING_BATCH_SIZE, max_batches: int = MAX_BATCHES,
          stop: threading.Event | None = None) -> tuple[int, bool]:
    """Run `task` batch after batch until one deletes fewer than `batch_size` rows, at most
    `max_batches` times, or `stop` is set: the rows deleted (logged, also when a batch fails), and
    whether aged rows may be left (every batch came back full)."""
    deleted, full = 0, True
    try:
        for _ in range(max_batches):
            count = task(batch_size)
            deleted += count
            full = count >= batch_size
            if not full or (stop is not None and stop.is_set()):
                break
    finally:
        if deleted:
            log.info("purged", extra={"what": name, "rows": deleted})
    return deleted, full


def machine_busy(busy_share: float, stop: threading.Event) -> Callable[[], bool]:
    """Whether the machine's other processes used at least `busy_share` of the CPU this process
    left them over the last second (False without `/proc/stat`)."""
    share = OthersShare(window=1.0)

    def busy() -> bool:
        share()
        stop.wait(share.window)
        last = share()
        return last is not None and last >= busy_share

    return busy


class Housekeeper:
    """Runs each of `tasks` ((name, one batch), ...) every `interval_seconds` until `stop` is set,
    in a daemon thread of its own (`start`), skipping a round while `busy()`."""

    def __init__(self, tasks: Sequence[tuple[str, Task]], stop: threading.Event, interval_seconds: float,
                 busy: Callable[[], bool] = lambda: False, batch_size: int = HOUSEKEEPING_BATCH_SIZE,
                 first_round_seconds: float = FIRST_ROUND_SECONDS, catch_up_seconds: float = CATCH_UP_SECONDS,
                 max_put_off_seconds: float = MAX_PUT_OFF_SECONDS):
        self.tasks = list(tasks)
        self.stop = stop
        self.interval_seconds = interval_seconds
        self.busy = busy
        self.batch_size = batch_size
        self.first_round_seconds = min(interval_seconds, first_round_seconds)
        self.catch_up_seconds = min(interval_seconds, catch_up_seconds)
        self.max_put_off_seconds = max_put_off_seconds
        self.thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)

    def start(self) -> None:
        """From a thread at the priority the purges are to run at (a thread inherits its maker's)."""
        if self.tasks:
            self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def run(self) -> None:
        # drawn within a tenth of the wait: replicas do not purge in step
        wait = self.first_round_seconds
        put_off = 0.0
        while not self.stop.wait(wait * random.uniform(1.0, 1.1)):
            if put_off < self.max_put_off_seconds and self.busy():
                put_off += self.catch_up_seconds
                (log.warning if put_off >= self.max_put_off_seconds / 2 else log.info)(
                    "housekeeping put off: the machine is busy", extra={"seconds": round(put_off)})
                wait = self.catch_up_seconds
                continue
            put_off = 0.0
            wait = self.catch_up_seconds if self.round() else self.interval_seconds

    def round(self) -> bool:
        """Each task's purge, once; whether one of them stopped at its bound, aged rows left."""
        behind = False
        for name, task in self.tasks:
            if self.stop.is_set():
                break
            try:
                behind |= purge(name, task, self.batch_size, stop=self.stop)[1]
            except Exception:  # noqa: BLE001 - the database away, or a bug: the next round tries again
                log.exception("housekeeping failed; trying again next round", extra={"what": name})
        return behind

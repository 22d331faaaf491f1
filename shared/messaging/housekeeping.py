"""What a service's consumer deletes as it goes, so its tables keep a bounded past.

- The inbox (checkout, inventory): a message id is kept `INBOX_RETENTION_SECONDS` (7 days). A
  copy of a message comes again within seconds or minutes (a redelivery after a lost ack, the
  relay publishing a batch again after a crash before marking it); a message that is retried or
  parked has no inbox row until it is handled. Kept for good, the table grew by every event.
- Notifications' delivery log (`DELIVERY_LOG_RETENTION_SECONDS`, 30 days): see
  services/notifications/repository.py `DeliveryLog.purge_finished`.

Every `HOUSEKEEPING_INTERVAL_SECONDS` (60) a thread of the consumer process deletes what has
aged, `HOUSEKEEPING_BATCH_SIZE` (1,000) rows a transaction and at most `MAX_BATCHES` a round, so
a long-kept table is worked down over the rounds, never in one long transaction. Consumer
replicas purge side by side: each batch takes only rows nobody else is deleting (SKIP LOCKED).
A failed round (the database away) is logged and the next one tries again; consuming is never
held up by it. The consumer runs at the background's CPU priority, as its messages do.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Sequence

import sqlalchemy as sa

log = logging.getLogger("floodgate.messaging.housekeeping")

HOUSEKEEPING_BATCH_SIZE = 1000
MAX_BATCHES = 20

# One batch of inbox ids past their retention; the number deleted.
_PURGE_INBOX = sa.text(
    "WITH aged AS (SELECT message_id FROM inbox WHERE received_at < now() - make_interval(secs => :retention) "
    "LIMIT :batch FOR UPDATE SKIP LOCKED), "
    "gone AS (DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM aged) RETURNING 1) "
    "SELECT count(*) FROM gone"
)


def purge_inbox(engine: sa.Engine, retention_seconds: float, batch_size: int = HOUSEKEEPING_BATCH_SIZE) -> int:
    """Delete one batch of inbox ids received more than `retention_seconds` ago; how many went."""
    with engine.begin() as connection:
        return int(connection.execute(_PURGE_INBOX, {"retention": retention_seconds, "batch": batch_size}).scalar_one())


Task = Callable[[], int]  # one batch: the rows it deleted


def purge(name: str, task: Task, batch_size: int = HOUSEKEEPING_BATCH_SIZE, max_batches: int = MAX_BATCHES) -> int:
    """Run `task` batch after batch until one deletes fewer than `batch_size` rows, at most
    `max_batches` times; the rows deleted."""
    deleted = 0
    for _ in range(max_batches):
        count = task()
        deleted += count
        if count < batch_size:
            break
    if deleted:
        log.info("purged", extra={"what": name, "rows": deleted})
    return deleted


class Housekeeper:
    """Runs each of `tasks` ((name, one batch), ...) every `interval_seconds` until `stop` is set,
    in a daemon thread of its own (`start`). The first round comes after an interval, drawn at
    random within it: replicas started together do not purge in step."""

    def __init__(self, tasks: Sequence[tuple[str, Task]], stop: threading.Event, interval_seconds: float,
                 batch_size: int = HOUSEKEEPING_BATCH_SIZE):
        self.tasks = list(tasks)
        self.stop = stop
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self.thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)

    def start(self) -> None:
        if self.tasks:
            self.thread.start()

    def run(self) -> None:
        wait = random.uniform(0.5, 1.0) * self.interval_seconds
        while not self.stop.wait(wait):
            self.round()
            wait = self.interval_seconds

    def round(self) -> None:
        for name, task in self.tasks:
            try:
                purge(name, task, self.batch_size)
            except sa.exc.SQLAlchemyError as error:  # the database away: the next round tries again
                log.warning("housekeeping failed; trying again next round", extra={"what": name, "error": repr(error)})

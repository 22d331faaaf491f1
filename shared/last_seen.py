"""When each worker's loop last turned, where Prometheus and the control room can see it.

The heartbeat file (`shared/heartbeat.py`) tells Kubernetes' liveness probe, inside the pod, that
one process is stuck; nobody outside the pod can read it. So every relay, consumer, sweeper and
admitter also writes the time of its last beat to a row of its service's database
(`worker_heartbeats`, one row per process), and the service's API reads them when Prometheus
scrapes it (`heartbeat_figures`).

Why rows in the database rather than a metrics port on every worker: the workers have no HTTP
port today and would each need one, a scrape target and a network policy; a scrape target tells
nothing once its pod is gone, while a row keeps ageing: a relay that cannot reach the broker
keeps its liveness file fresh while it waits to reconnect (a restart could not bring the broker
back), but writes no row, so its service's youngest relay row shows how long no relay has
published, across restarts too. The API of every service
already reads its database, and one row a process every few seconds costs nothing.

The write happens on a thread of its own, so a slow database never holds the loop (a consumer's
loop answers the broker's heartbeats); it writes the time of the last beat, not the time of the
write, so a stuck loop ages although the thread still writes.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Iterable

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric

from shared import db

log = logging.getLogger("floodgate.heartbeat")

WRITE_EVERY_SECONDS = 5.0
# A process that has not beaten for this long no longer counts as running.
ALIVE_WITHIN_SECONDS = 60.0
# Rows of processes gone for this long are deleted by the next process of the same kind: a pod
# replaced by a rollout leaves a row behind, and its kind's freshest row is what matters.
FORGET_AFTER = "1 day"
PURGE_EVERY_SECONDS = 3600.0

WORKER_HEARTBEATS = sa.Table(
    "worker_heartbeats",
    sa.MetaData(),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("instance", sa.String(200), primary_key=True),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
)


def this_instance() -> str:
    """This process's name among its kind's: its host (a pod's name) and its pid."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


class LastSeen:
    """Records in the service's database when this process's loop last beat (give it to
    `Heartbeat`): `record()` notes the moment, a daemon thread writes it every `every` seconds."""

    def __init__(self, engine: sa.Engine, kind: str, instance: str | None = None, every: float = WRITE_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.kind = kind
        self.instance = instance or this_instance()
        self.every = every
        self._clock = clock
        self._beat: float | None = None  # the clock's time of the last beat
        self._written: float | None = None
        self._last_purge = float("-inf")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing = False

    def record(self) -> None:
        """The loop turned (cheap: no I/O here; the writer thread starts on the first beat)."""
        self._beat = self._clock()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"last-seen-{self.kind}", daemon=True)
                    self._thread.start()

    def write(self) -> bool:
        """Write the last beat, if there is a new one; False when the database refused it."""
        beat = self._beat
        if beat is None or beat == self._written:
            return True
        now = self._clock()
        try:
            with self.engine.begin() as connection:
                connection.execute(_UPSERT, {"kind": self.kind, "instance": self.instance,
                                             "ago": max(0.0, now - beat)})
                if now - self._last_purge >= PURGE_EVERY_SECONDS:
                    connection.execute(_FORGET, {"kind": self.kind})
                    self._last_purge = now
        except sa.exc.SQLAlchemyError as error:
            if not self._failing:  # once per outage, not every few seconds
                log.warning("could not record the heartbeat", extra={"kind": self.kind, "error": repr(error)})
            self._failing = True
            return False
        self._failing = False
        self._written = beat
        return True

    def _run(self) -> None:
        while True:
            self.write()
            time.sleep(self.every)


# the database's clock, not the pod's: the API measures the age with the same clock
_UPSERT = sa.text(
    "INSERT INTO worker_heartbeats (kind, instance, beat_at) "
    "VALUES (:kind, :instance, now() - make_interval(secs => :ago)) "
    "ON CONFLICT (kind, instance) DO UPDATE SET beat_at = excluded.beat_at"
)
_FORGET = sa.text(
    f"DELETE FROM worker_heartbeats WHERE kind = :kind AND beat_at < now() - interval '{FORGET_AFTER}'"
)

_AGES = sa.text(
    "SELECT kind, extract(epoch FROM now() - max(beat_at)) AS age, "
    "count(*) FILTER (WHERE beat_at > now() - make_interval(secs => :alive)) AS alive "
    "FROM worker_heartbeats GROUP BY kind ORDER BY kind"
)


def heartbeat_figures(service: str, engine: sa.Engine, timeout_seconds: float) -> Callable[[], Iterable[Metric]]:
    """A source for `shared.metrics.ScrapedFigures`: per kind of worker of `service`, the age of
    its freshest beat (`floodgate_worker_heartbeat_age_seconds`) and how many of its processes
    beat within the last minute (`floodgate_worker_processes_alive`). A kind that never ran has
    no row and so no series."""

    def read() -> list[Metric]:
        rows = db.read_briefly(engine, _AGES, timeout_seconds, {"alive": ALIVE_WITHIN_SECONDS})
        ages = GaugeMetricFamily("floodgate_worker_heartbeat_age_seconds",
                                 "Seconds since any process of this kind last turned its loop and did its work",
                                 labels=["service", "kind"])
        alive = GaugeMetricFamily("floodgate_worker_processes_alive",
                                  "Processes of this kind whose loop turned within the last minute",
                                  labels=["service", "kind"])
        for row in rows:
            ages.add_metric([service, row.kind], max(0.0, float(row.age)))
            alive.add_metric([service, row.kind], int(row.alive))
        return [ages, alive]

    return read

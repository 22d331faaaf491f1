"""Faults the rehearsal injects on a schedule, each switchable, each recorded on the timeline.

  notifications    the notifications consumer is SIGKILLed before the opening and restarted when
                   the crowd has gone: every confirmation email waits in RabbitMQ meanwhile.
  smtp             the SMTP server refuses connections (fault mode `refuse`) from the opening
                   until a few seconds after notifications is back, so the first sends fail and
                   are retried.
  checkout-worker  one gunicorn worker of checkout-api is SIGKILLed mid-drop (its master forks
                   a new one); requests it was serving are cut and the buyers retry.
  accounts         accounts-api is stopped mid-drop and restarted afterwards: buyers signed in
                   before the drop keep ordering (tokens are verified from the cached JWKS).
  broker           RabbitMQ is restarted once (rabbitmqctl stop_app / start_app). Opt-in only and
                   only on an isolated stack in its own vhost on the local broker: it disturbs
                   every other user of that broker (other stacks, test sessions).
  database         PostgreSQL is restarted once, mid-rush (pg_ctlcluster --mode fast restart), while
                   a probe notes when it stopped and started answering queries. Opt-in only and only
                   on an isolated stack on this machine's cluster: every database on it goes away
                   meanwhile, everyone's.
"""
from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field

import psutil
import requests

from devtools import broker, database

ALL = ("notifications", "smtp", "checkout-worker", "accounts", "broker", "database")
DEFAULT = ("notifications", "smtp", "checkout-worker", "accounts")
# When each fault starts, in seconds from the opening (negative: before it).
DEFAULT_AT = {"notifications": -1.0, "smtp": 0.0, "checkout-worker": 0.5, "accounts": 1.0, "broker": 2.0,
              "database": 2.0}


@dataclass
class Timeline:
    opens_at: float
    entries: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, fault: str, action: str, detail: str = "", at: float | None = None) -> None:
        """Note what a fault did, now or `at` (epoch seconds) when it was observed afterwards."""
        t = time.time() if at is None else at
        with self.lock:
            self.entries.append({"fault": fault, "action": action, "t": round(t - self.opens_at, 3), "detail": detail})
            self.entries.sort(key=lambda entry: entry["t"])
        print(f"\n  [{t - self.opens_at:+7.2f}s] fault {fault}: {action}{' (' + detail + ')' if detail else ''}", flush=True)


class Faults:
    def __init__(self, rig, enabled: list[str], at: dict[str, float], timeline: Timeline, smtp_outlasts: float):
        self.rig, self.enabled, self.at, self.timeline = rig, list(enabled), dict(DEFAULT_AT, **at), timeline
        self.smtp_outlasts = smtp_outlasts
        self.skipped: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        for name in list(self.enabled):
            reason = self._why_not(name)
            if reason:
                self.skipped[name] = reason
                self.enabled.remove(name)

    def _why_not(self, name: str) -> str | None:
        if name in ("notifications", "accounts") and not self.rig.owned:
            return "needs a stack the rehearsal started (a running stack's supervisor restarts its processes)"
        if name == "broker" and not self.rig.broker_is_local_and_ours:
            return "only on an isolated stack in its own vhost on the local broker (rabbitmqctl)"
        if name == "database" and not (self.rig.owned and database.restartable(self.rig.stack.infra.postgres_url)):
            return "only on an isolated stack on this machine's PostgreSQL cluster (pg_ctlcluster)"
        return None

    # --- the schedule --------------------------------------------------------------------------
    def start(self) -> None:
        """Inject every enabled fault at its time, from background threads."""
        actions = {
            "notifications": self._kill_notifications,
            "smtp": self._smtp_down,
            "checkout-worker": self._kill_checkout_worker,
            "accounts": self._stop_accounts,
            "broker": self._restart_broker,
            "database": self._restart_database,
        }
        for name in self.enabled:
            thread = threading.Thread(target=self._at, args=(self.at[name], name, actions[name]), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _at(self, offset: float, name: str, action) -> None:
        time.sleep(max(0.0, self.timeline.opens_at + offset - time.time()))
        try:
            action()
        except Exception as error:  # a fault that could not be injected is reported, not fatal
            self.timeline.note(name, "could not inject", repr(error))

    def recover(self) -> float:
        """Lift every fault still in force (the crowd has gone); return when everything is back."""
        for thread in self._threads:
            thread.join(timeout=120)
        if "accounts" in self.enabled:
            self.rig.stack.start("accounts-api")
            self.timeline.note("accounts", "restarted")
        if "notifications" in self.enabled:
            self.rig.stack.start("notifications-consumer")
            self.timeline.note("notifications", "consumer restarted")
        if "smtp" in self.enabled:
            if "notifications" in self.enabled and self.smtp_outlasts > 0:
                time.sleep(self.smtp_outlasts)
            self._smtp("none")
            self.timeline.note("smtp", "restored")
        return time.time()

    # --- the faults ----------------------------------------------------------------------------
    def _kill_notifications(self) -> None:
        self.rig.stack.kill("notifications-consumer")
        self.timeline.note("notifications", "consumer killed (SIGKILL)")

    def _smtp(self, mode: str) -> None:
        control = f"http://127.0.0.1:{self.rig.stack.ports['smtp-control']}/faults"
        requests.post(control, json={"mode": mode}, timeout=5).raise_for_status()

    def _smtp_down(self) -> None:
        self._smtp("refuse")
        self.timeline.note("smtp", "down (refusing connections)")

    def _kill_checkout_worker(self) -> None:
        master = self.checkout_master()
        workers = master.children()
        if not workers:
            raise RuntimeError("checkout-api has no worker to kill")
        victim = random.choice(workers)
        victim.send_signal(signal.SIGKILL)
        self.timeline.note("checkout-worker", "worker SIGKILLed", f"pid {victim.pid}, master {master.pid}")

    def checkout_master(self) -> psutil.Process:
        process = self.rig.stack.processes.get("checkout-api")
        if process is not None:
            return psutil.Process(process.pid)
        port = self.rig.stack.ports["checkout"]
        listeners = [c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid]
        if not listeners:
            raise RuntimeError(f"no process listens on the checkout port {port} (or it is not ours to see)")
        # Workers and master share the listening socket; the master is the gunicorn whose parent is not one.
        process = psutil.Process(listeners[0])
        parent = process.parent()
        while parent is not None and "gunicorn" in " ".join(parent.cmdline()):
            process, parent = parent, parent.parent()
        return process

    def _stop_accounts(self) -> None:
        self.timeline.note("accounts", "stopping (SIGTERM)")
        self.rig.stack.stop("accounts-api")
        self.timeline.note("accounts", "stopped")

    def _restart_broker(self) -> None:
        self.timeline.note("broker", "stop_app")
        broker.restart()
        self.timeline.note("broker", "start_app done")

    def _restart_database(self) -> None:
        probe = Availability(self.rig.stack.infra.database_url("checkout"))
        probe.start()
        if not probe.answering.wait(30):
            raise RuntimeError("the database did not answer before its restart")
        self.timeline.note("database", "restarting", "pg_ctlcluster --mode fast restart")
        try:
            database.restart()
            self.timeline.note("database", "restart done")
        finally:
            probe.restarted.set()
            probe.join(timeout=60)
            probe.halt.set()
        if probe.went_at is None:
            self.timeline.note("database", "never seen unavailable", f"probed every {probe.interval * 1000:.0f} ms")
            return
        self.timeline.note("database", "unavailable", at=probe.went_at)
        if probe.back_at is not None:
            self.timeline.note("database", "available again", f"{probe.back_at - probe.went_at:.2f} s unavailable",
                               at=probe.back_at)


class Availability(threading.Thread):
    """Whether a database answers a query on a new connection, probed every `interval` seconds:
    `went_at`, when a probe first failed (its start); `back_at`, when one first succeeded again
    (its end). Ends when the database is back, or answers after `restarted` without a failure
    seen (an outage shorter than the interval)."""

    def __init__(self, url: str, interval: float = 0.05):
        super().__init__(name="database-availability", daemon=True)
        self.url, self.interval = url, interval
        self.went_at: float | None = None
        self.back_at: float | None = None
        self.answering, self.restarted, self.halt = threading.Event(), threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.time()
            if database.answers(self.url):
                self.answering.set()
                if self.went_at is not None:
                    self.back_at = time.time()
                    return
                if self.restarted.is_set():
                    return
            elif self.went_at is None and self.answering.is_set():
                self.went_at = started
            self.halt.wait(max(0.0, self.interval - (time.time() - started)))

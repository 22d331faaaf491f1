"""The consumer every service that subscribes to events runs: `python -m services.<service> consumer`.

Sequence, as in pika's examples: connect, declare the topology, set the prefetch, consume. Each
message is handled on one of `consumer_threads` worker threads, so the connection thread keeps
answering heartbeats while a handler waits on SMTP or the database; the ack goes back through
`add_callback_threadsafe`.

Per message: one unit of work records the message id in the inbox (a duplicate is acked and
skipped; a service whose handlers are idempotent by themselves skips the inbox), runs the
handler, and commits; only then is the message acked. A failure sends a copy
to the next retry tier (a delay queue that expires back into the work queue) or, after
`max_attempts` or on a `PermanentFailure`, to the dead-letter queue; the copy is confirmed by the
broker before the original is acked, so nothing is lost in between.

A message the broker gives back because the consumer that held it stopped without settling it
(the process died, its connection was lost; or pika turned it away as the runner paused) comes
again marked `redelivered`, and RabbitMQ 3.x counts the return towards the work queue's delivery
limit for every message that consumer held, handled or only prefetched. So the runner does not
handle it there: it sets it aside, a new copy at the back of `<service>.returned`. That lane is
read with `basic_get`, one message at a time, only while the runner is not paused or stopping,
and the message taken is handled at once on a thread of its own: nothing of the lane is ever
held unstarted, nor turned away by a cancel. A message given back from the lane was so being
handled when its consumer stopped; after RETURNS_BEFORE_PARKING such returns (`x-returns`) it
is parked, as the message that kills its consumer. Those held beside it are handled, not parked
with it. (Before, a message that killed its consumer twenty times took up to nineteen good ones
to the dead-letter queue.) A first-time killer in the work queue counts a return against the
lane's message if one is being handled beside it: once per killer, far from five.

A copy, and a replayed dead letter, leaves out the broker's own headers (its count of returns,
`x-delivery-count`, and its dead-lettering history: `x-death` and the `x-first-death-*`,
`x-last-death-*` headers); our `x-attempt`, `x-last-error` and `x-returns` keep ours. A message
the work queue once dead-lettered (past its delivery limit) names that queue in `x-death`; on RabbitMQ 3.x a retry copy carrying it looks like a dead-letter cycle when its delay
queue expires it back into the work queue, and the broker never delivers it. (4.x ignores an
`x-death` a client publishes; leaving it out costs nothing there.)
"""
from __future__ import annotations

import contextvars
import functools
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import pika

from shared import db, logs, tracing
from shared.config import Settings, lower_priority
from shared.heartbeat import Heartbeat
from shared.last_seen import LastSeen
from shared.messaging import connection as amqp
from shared.messaging import topology
from shared.messaging.deferral import Deferral
from shared.messaging.envelope import Envelope, MalformedEvent
from shared.messaging.housekeeping import Housekeeper, Task, machine_busy, purge_inbox
from shared.messaging.outbox import claim_message

log = logging.getLogger("floodgate.consumer")

Handler = Callable[[Envelope, object], None]
# Which delivery of the message in hand this is (1 = first), for handlers that log attempts.
current_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("current_attempt", default=1)
# What RabbitMQ writes on a message it gave back or dead-lettered (see the module's docstring).
BROKER_HEADERS = frozenset({
    "x-delivery-count",
    "x-death",
    "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
    "x-last-death-queue", "x-last-death-reason", "x-last-death-exchange",
})


class ConsumerCancelled(pika.exceptions.AMQPChannelError):
    """The broker cancelled our consumer; the runner reconnects."""


class PermanentFailure(Exception):
    """Raised by a handler when retrying cannot help; the message goes straight to the DLQ."""


# The most attempts a `PartnerDown` message is given, whatever its tiers: tiers of a second or
# less (tests, rehearsals) over a day would be tens of thousands.
PARTNER_DOWN_MAX_ATTEMPTS = 1000


class PartnerDown(Exception):
    """Raised by a handler when an outside service its message needs failed in a way that comes
    back by itself (checkout's payment provider unreachable, answering 5xx, 401 while a secret
    rotates). The message is retried through the service's tiers for the setting
    PARTNER_DOWN_SECONDS (a day; its last tier repeating), not the service's few attempts: an eleven-minute provider outage parked
    every refund of the drop as money owed, for an admin to replay by hand. Unlike
    `DependencyDown`, the consumer does not pause: other messages (expiries, emails noted) need
    no partner."""


class DependencyDown(Exception):
    """Raised by a handler when something every message needs is away (notifications' SMTP
    server; the service's own database is taken as away, `shared.db.away`, whatever the handler
    raised): the message is not at fault. It goes back to the end of the work queue as a new
    copy, its attempts uncounted, and the runner consumes nothing for a pause (`Pause`), then
    tries the next message. Messages so wait in the work queue, not in the retry tiers (an hour
    apart at their longest), and flow again within a pause of the dependency's return; an outage
    never parks one. (Deliveries pika received but had not handed over when the subscription is
    cancelled go back to the broker, marked redelivered: the next consumer to get one sets it
    aside in `<service>.returned`, a fresh copy counted from zero, see the module's docstring.)"""


class DatabaseAway(DependencyDown):
    """The service's own database is away (`shared.db.away`). Waited on like any dependency, but
    a message only so many times (`MAX_DATABASE_WAITS`): one whose every try finds the database
    away may be what takes it away (a statement that crashes its backend restarts them all, and
    recovery answers nobody), and uncounted it would never be parked. As the process starts, and
    after a pause for the database, the runner tries no message until the database answers a
    `SELECT 1` (an error `shared.db.unavailable` does not call an outage is an answer), so a
    wait is counted only against a message whose try found it gone when it had just answered:
    an outage, however long, counts one wait against each message in hand as it began, and none
    after. A connection refused at its start (a wrong password, too many clients) is taken as
    the database away, psycopg giving it no SQLSTATE: messages wait, uncounted, while every API
    of the service fails alike and its alerts fire; parked, they would need an admin's replay."""


# A message waits for its database this many times at most, counted only when the database
# answered just before its try (see `DatabaseAway`); its tries are counted from then on. Before
# that probe, the first message tried after each pause counted a wait: in a queue of a few
# messages, an outage of a quarter of an hour counted them all past this and parked them.
MAX_DATABASE_WAITS = 20
# Handlers at work and none finished for this long (beyond a deferral's wait) are stuck: a lock
# that is never given up, a call with no time limit. The runner then stops beating its
# heartbeat, so the pod is restarted (liveness) and the outage shows (`worker_heartbeats`),
# instead of the pod looking healthy while every message behind the stuck ones waits. Longer
# than any handling's own limits (notifications' SMTP send: about three minutes at most); two
# of one order's emails sent one after the other each finish, which is progress. (The returned
# lane's one handler is judged on its own, at twice this: `ConsumerRunner.stuck_for`.)
STUCK_HANDLER_SECONDS = 300.0

# A message set aside in `<service>.returned` is parked when it comes back from there this many
# times: its consumer stopped each time while handling it. More than one, as a lost connection,
# a broker restart or another message killing the process counts against it too.
RETURNS_BEFORE_PARKING = 5
# How long the runner leaves `<service>.returned` alone after finding it empty: a `basic_get` is
# a round trip, not to be paid for every turn of a busy consumer's loop.
RETURNED_EMPTY_SECONDS = 1.0

# A pause after `DependencyDown`: doubling from the first while the dependency stays down.
PAUSE_FIRST_SECONDS = 2.0
PAUSE_LONGEST_SECONDS = 15.0


@dataclass(frozen=True)
class Outcome:
    """What to do with a delivery after handling it: ack, retry after a delay, or park it."""

    # "ack" | "retry" | "dead" | "wait" (back to the queue it came from, uncounted: `DependencyDown`)
    # | "aside" (given back by a consumer that stopped: to `<service>.returned`, not handled)
    action: str
    delay_ms: int | None = None
    error: str | None = None
    database: bool = False  # a wait for the service's database (`DatabaseAway`), counted in `x-database-waits`
    returns: int = 0  # the times it came back from `<service>.returned` ("aside", or "dead" for it): `x-returns`


def next_step(attempt: int, max_attempts: int, retry_delays_ms: tuple[int, ...], error: str) -> Outcome:
    """After failed attempt number `attempt` (1-based): retry with the tier's delay, or park."""
    if attempt >= max_attempts or not retry_delays_ms:
        return Outcome("dead", error=error)
    tier = min(attempt, len(retry_delays_ms)) - 1
    return Outcome("retry", delay_ms=retry_delays_ms[tier], error=error)


def attempts_within(retry_delays_ms: tuple[int, ...], seconds: float) -> int:
    """How many attempts the tiers make before `seconds` have passed (the last tier repeating),
    PARTNER_DOWN_MAX_ATTEMPTS at most."""
    attempts, waited = 1, 0
    while retry_delays_ms and waited < seconds * 1000 and attempts < PARTNER_DOWN_MAX_ATTEMPTS:
        waited += max(1, retry_delays_ms[min(attempts, len(retry_delays_ms)) - 1])
        attempts += 1
    return attempts


def retry_or_park(attempt: int, settings: Settings, error: str, each_tier_once: bool = False) -> Outcome:
    """`next_step` after failed attempt `attempt` with the service's retry tiers and attempt limit
    (with `each_tier_once`, no more attempts than one in each tier)."""
    delays = topology.retry_delays(settings.service_name, settings.retry_delays_ms)
    limit = min(settings.max_attempts, len(delays) + 1) if each_tier_once else settings.max_attempts
    return next_step(attempt, limit, delays, error[:500])


def returned_outcome(from_returned_lane: bool, headers: Mapping, message_id: str | None) -> Outcome:
    """What to do with a message the broker gave back (`redelivered`) instead of handling it: set
    it aside at the back of `<service>.returned`, counting a return from that lane, or park it
    past RETURNS_BEFORE_PARKING of those (see the module's docstring)."""
    returns = _header_count(headers, "x-returns", message_id) + int(from_returned_lane)
    if returns >= RETURNS_BEFORE_PARKING:
        return Outcome("dead", returns=returns, error=f"its consumer stopped {returns} times while handling it, "
                                                      "with no other returned message in hand (a message that "
                                                      "kills its consumer)")
    return Outcome("aside", returns=returns)


def handle_delivery(
    body: bytes,
    attempt: int,
    handlers: Mapping[str, Handler],
    uow_factory: Callable[[], object],
    settings: Settings,
    inbox: bool = True,
    database_waits: int = 0,
) -> Outcome:
    """Run the handler for one delivery inside a unit of work and decide the outcome. With
    `inbox`, a message whose id the inbox already holds is a duplicate: acked, not handled.
    `database_waits`: how many times the message waited for its database before."""
    try:
        envelope = Envelope.from_json(body)
    except MalformedEvent as error:
        return Outcome("dead", error=str(error))
    handler = handlers.get(envelope.type)
    if handler is None:
        # Retried through each tier once, then parked: in a rolling deploy the new code's bindings
        # route a new event type here before this (older) consumer is replaced by one that handles
        # it; a type nobody will handle is parked within the tiers' time, where the alert sees it.
        log.warning("no handler for this event type yet", extra={"message_id": envelope.id,
                                                                  "event_type": envelope.type, "attempt": attempt})
        return retry_or_park(attempt, settings, f"no handler for {envelope.type}", each_tier_once=True)
    try:
        with uow_factory() as uow:
            if not inbox or claim_message(uow.session, envelope.id, envelope.type):
                handler(envelope, uow)
            else:
                log.info("duplicate message dropped", extra={"message_id": envelope.id, "event_type": envelope.type})
            uow.commit()
        return Outcome("ack")
    except PermanentFailure as error:
        log.error("permanent failure", extra={"message_id": envelope.id, "error": str(error)})
        return Outcome("dead", error=f"permanent: {error}")
    except DatabaseAway as error:
        return _waited_for_the_database(attempt, database_waits, settings, str(error))
    except PartnerDown as error:
        log.warning("an outside service failed; retried", extra={"message_id": envelope.id, "event_type": envelope.type,
                                                                 "attempt": attempt, "error": str(error)[:200]})
        delays = topology.retry_delays(settings.service_name, settings.retry_delays_ms)
        attempts = max(settings.max_attempts, attempts_within(delays, settings.partner_down_seconds))
        return next_step(attempt, attempts, delays, logs.without_values(str(error))[:500])
    except DependencyDown as error:
        return Outcome("wait", error=str(error)[:500])
    except Exception as error:
        if db.away(error, uow_factory):
            # A database restart or a pooler without a server: every message would fail alike.
            # Counted as attempts, they walked the retry tiers (an email 10 minutes late after
            # 70 s down, an hour after 11 minutes) and inventory parked its cancellations, their
            # units kept off sale until an admin replayed them.
            return _waited_for_the_database(attempt, database_waits, settings,
                                            f"the database is not answering: {error!r}")
        log.warning(
            "handler failed",
            exc_info=True,
            extra={"message_id": envelope.id, "event_type": envelope.type, "attempt": attempt},
        )
        return retry_or_park(attempt, settings, logs.without_values(repr(error)))  # logged, and kept with the message


def _waited_for_the_database(attempt: int, database_waits: int, settings: Settings, error: str) -> Outcome:
    """A wait for the database, or past `MAX_DATABASE_WAITS` a counted failure (`DatabaseAway`)."""
    error = logs.without_values(error)[:500]
    if database_waits >= MAX_DATABASE_WAITS:
        log.warning("the database was away at every try of this message: counting its tries from now on",
                    extra={"database_waits": database_waits, "attempt": attempt})
        return retry_or_park(attempt, settings, error)
    return Outcome("wait", error=error, database=True)


class Pause:
    """When the runner consumes nothing, a dependency being down (`DependencyDown`): for
    PAUSE_FIRST_SECONDS, doubling up to PAUSE_LONGEST_SECONDS while each try after a pause finds
    it down still, from the first again once a message goes through. Shared by the handler
    threads (which begin it) and the connection's thread (which cancels and resumes consuming)."""

    def __init__(self, first: float = PAUSE_FIRST_SECONDS, longest: float = PAUSE_LONGEST_SECONDS):
        self._first, self._longest = first, longest
        self._next = first
        self._until = 0.0
        self._database = True  # nothing known of it yet: a new replica in an outage probes first
        self._generation = 0
        self._lock = threading.Lock()

    def active(self) -> bool:
        return time.monotonic() < self._until

    def for_the_database(self) -> bool:
        """Whether the database is to answer a `SELECT 1` before the next message is tried: as
        the process starts, and after a pause begun for it (`DatabaseAway`), until a probe gets
        its answer (`database_answered`). A message that went through does not say so: it may
        have needed no statement (an email addressed to nobody), or committed before the pause."""
        return self._database

    def database_generation(self) -> int:
        """How many pauses were begun for the database: read before a probe, handed to
        `database_answered`, so that a probe that answered before a newer pause began does not
        end that pause's probing."""
        return self._generation

    def database_answered(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._database = False

    def begin(self, why: str | None, database: bool = False) -> None:
        with self._lock:
            if database:
                self._database = True
                self._generation += 1
            if self.active():
                return
            self._until = time.monotonic() + self._next
            log.warning("a dependency every message needs is down: consuming nothing for a while",
                        extra={"pause_seconds": self._next, "error": why})
            self._next = min(self._longest, self._next * 2)

    def went_through(self) -> None:
        with self._lock:
            self._next = self._first


@dataclass
class Taken:
    """The message the runner took from the returned lane, on connection `conn`."""

    conn: object
    future: Future
    settled: bool = False


class ConsumerRunner:
    """Consumes the service's work queue until SIGTERM, reconnecting with capped back-off."""

    def __init__(self, settings: Settings, handlers: Mapping[str, Handler], uow_factory: Callable[[], object],
                 process: str, last_seen: LastSeen | None = None, inbox: bool = True,
                 housekeeping: Sequence[tuple[str, Task]] = ()):
        self.settings = settings
        # a message may wait for a busy machine first (DEFER_WHILE_BUSY_SECONDS, 0 by default)
        self.deferral = Deferral.from_settings(settings)
        self.inbox = inbox
        self.process = process  # its name on the broker connection
        self.handlers = handlers
        self.uow_factory = uow_factory
        self.queue = topology.work_queue(settings.service_name)
        self.returned = topology.returned_queue(settings.service_name)
        self.stop = threading.Event()
        # Beaten only while consuming, so the service's `worker_heartbeats` row ages while the
        # broker is away and the outage shows and alerts; the pod stays alive meanwhile (`reconnects`).
        self.heartbeat = Heartbeat(settings.heartbeat_file, last_seen)
        self.reconnects = amqp.Reconnects(self.stop, settings.heartbeat_file, log)
        self.pause = Pause()
        # what the consumer deletes as it goes (shared/messaging/housekeeping.py)
        self.housekeeper = Housekeeper(housekeeping, self.stop, settings.housekeeping_interval_seconds,
                                       busy=machine_busy(settings.busy_cpu_share, self.stop))
        self.stuck_after = STUCK_HANDLER_SECONDS + self.deferral.seconds
        self._handling: dict[int, float] = {}  # handler thread -> when it took its message (monotonic)
        self._finished = 0.0  # when a handling last finished (monotonic)
        self._handling_lock = threading.Lock()
        self._told_stuck = 0.0
        self._returned_since: float | None = None  # when the lane's handler took its message (monotonic)
        # The message taken from the returned lane: its handling, the connection it came on, and
        # whether it was settled there (connection thread only).
        self._returned: Taken | None = None
        self._returned_empty_until = 0.0  # monotonic

    def stuck_for(self) -> float:
        """How long the work queue's handlers have been at work with no handling finishing, past
        `stuck_after`, or the returned lane's one handler at its message, past twice that; else
        0. The lane is judged on its own clock, so the work threads' finishes do not hide it
        stuck; it is allowed two handlings' time, as it may wait on a work thread's handling
        (two of one order's emails take turns on the order's row) before its own; and its
        finishes count as progress for the work threads, which may wait on it likewise."""
        with self._handling_lock:
            earliest = min(self._handling.values(), default=None)
            finished = self._finished
            lane_since = self._returned_since
        now = time.monotonic()
        work = now - max(earliest, finished) if earliest is not None else 0.0
        lane = now - lane_since if lane_since is not None else 0.0
        if work > self.stuck_after:
            return work
        return lane if lane > 2 * self.stuck_after else 0.0

    def _beat_unless_stuck(self) -> None:
        stuck = self.stuck_for()
        if not stuck:
            self.heartbeat.beat()
            self.reconnects.worked()
        elif time.monotonic() - self._told_stuck > 60:
            self._told_stuck = time.monotonic()
            log.error("a handler is stuck at one message: the heartbeat stops, so the pod is restarted",
                      extra={"seconds": round(stuck), "queue": self.queue})

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the runner gracefully (the message in hand is finished)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop.set())

    def run(self) -> None:
        """Consume until stopped, reconnecting to the broker with capped back-off (`amqp.Reconnects`)."""
        lower_priority(self.settings)
        self.housekeeper.start()  # after lowering the priority, which the thread inherits
        # One pool for the runner's life, not one per broker connection: a handler thread keeps
        # what it holds per thread (notifications' SMTP connection) across reconnects.
        with ThreadPoolExecutor(max_workers=max(1, self.settings.consumer_threads), thread_name_prefix="handler") as worker, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="returned") as returned:
            while not self.stop.is_set():
                try:
                    self._consume_until_stopped(worker, returned)
                except amqp.RECOVERABLE as error:
                    self.reconnects.wait("broker connection lost, reconnecting", error)
        self.housekeeper.join(timeout=5)  # a batch in hand commits or rolls back before the engine goes
        log.info("consumer stopped")

    def _consume_until_stopped(self, worker: ThreadPoolExecutor, returned_worker: ThreadPoolExecutor) -> None:
        conn = amqp.connect(
            self.settings.amqp_url, self.process, self.settings.amqp_heartbeat_seconds
        )
        in_flight: set[Future] = set()
        try:
            work = conn.channel()
            topology.declare(work, self.settings.retry_delays_ms)
            # Retry and dead-letter copies go out on their own confirmed channel.
            republish = conn.channel()
            republish.confirm_delivery()
            work.basic_qos(prefetch_count=self.settings.consumer_prefetch)
            on_message = functools.partial(self._submit, worker, in_flight, conn, republish, self.queue)
            returned = conn.channel()  # the returned lane, read with basic_get (see the module's docstring)
            cancelled: list = []
            # The broker cancels a consumer whose queue was deleted or whose node failed; pika's
            # blocking channel then drops it silently. We reconnect (declaring the topology again).
            work.add_on_cancel_callback(cancelled.append)
            # not while paused (a reconnect in a pause): pika would give back what came meanwhile
            tag = None if self.pause.active() else work.basic_consume(self.queue, on_message)
            log.info("consuming", extra={"queue": self.queue, "prefetch": self.settings.consumer_prefetch,
                                         "threads": self.settings.consumer_threads,
                                         "defer_while_busy_seconds": self.deferral.seconds})
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.5)
                if cancelled:
                    raise ConsumerCancelled(f"the broker cancelled the consumer of {self.queue}")
                if work.is_closed or returned.is_closed or republish.is_closed:
                    # closed by the broker (its delivery-acknowledgement timeout, say): pika's blocking
                    # connection says so only when the channel is next used, so it is looked at here
                    raise pika.exceptions.ChannelClosed(0, f"a channel of the consumer of {self.queue} was closed")
                # Paused: the deliveries in hand go back to the queue uncounted (`_handle`)
                if tag is not None and self.pause.active():
                    work.basic_cancel(tag)
                    tag = None
                elif tag is None and not self.pause.active():
                    tag = work.basic_consume(self.queue, on_message)
                    log.info("consuming again after a pause", extra={"queue": self.queue})
                if tag is not None and not self.stop.is_set():
                    self._take_returned(returned, returned_worker, conn, republish)
                self._beat_unless_stuck()
            # Graceful stop: no new deliveries, finish the messages in hand, return the rest.
            if tag is not None:
                work.basic_cancel(tag)
            _cancel_waiting(in_flight)
            while in_flight or (self._returned is not None and not self._returned.future.done()):
                conn.process_data_events(time_limit=0.1)
            conn.process_data_events(time_limit=0)
        finally:
            # Deliveries not started go back to the queue with the connection; those in hand
            # finish, and cannot settle on a lost connection (the broker redelivers them).
            _cancel_waiting(in_flight)
            if conn.is_open:
                conn.close()

    def _take_returned(self, channel, worker: ThreadPoolExecutor, conn, republish) -> None:
        """Take the next message of the returned lane and start handling it on the lane's own
        thread, unless the last one taken is not settled yet (being handled, or its ack queued
        on this connection; taken on a lost one, until its handling is over), or the lane was
        empty a moment ago. Deliveries of the work queue go on meanwhile."""
        taken = self._returned
        if taken is not None and ((taken.conn is conn and not taken.settled) or not taken.future.done()):
            return
        if time.monotonic() < self._returned_empty_until:
            return
        method, properties, body = channel.basic_get(self.returned)
        if method is None:
            self._returned, self._returned_empty_until = None, time.monotonic() + RETURNED_EMPTY_SECONDS
            return
        self._returned = Taken(conn, worker.submit(self._handle, conn, channel, republish, self.returned, method,
                                                   properties, body))

    def _submit(self, worker: ThreadPoolExecutor, in_flight: set[Future], conn, republish, queue: str,
                channel, method, properties, body) -> None:
        future = worker.submit(self._handle, conn, channel, republish, queue, method, properties, body)
        in_flight.add(future)
        future.add_done_callback(in_flight.discard)

    def _handle(self, conn, channel, republish, queue: str, method, properties, body) -> None:
        headers = properties.headers or {}
        request_id = headers.get("x-request-id") or properties.correlation_id
        logs.order_id_var.set(None)  # the worker thread's context outlives each message
        outcome = None
        # Whatever fails here outside the handler is logged and the message settled like a failed
        # handling: an exception left in the worker's Future would be read by nobody, and the
        # message, never acked, would hold a prefetch slot until the connection closed.
        with logs.log_context(request_id=request_id):
            attempt = _previous_attempts(headers, properties.message_id) + 1
            lane = queue == self.returned
            with self._handling_lock:
                if lane:
                    self._returned_since = time.monotonic()
                else:
                    self._handling[threading.get_ident()] = time.monotonic()
            try:
                if method.redelivered:  # its consumer stopped with it in hand: not handled here
                    outcome = returned_outcome(queue == self.returned, headers, properties.message_id)
                elif self.pause.active():  # not even tried: its dependency is down
                    outcome = Outcome("wait", error="consuming paused: a dependency is down")
                elif self.pause.for_the_database() and not self._database_answers():
                    # not tried either: its try would count a wait against it for an outage
                    outcome = Outcome("wait", error="the database is not answering yet")
                    self.pause.begin(outcome.error, database=True)
                else:
                    outcome = self._handle_now(body, attempt, properties, headers, queue)
            except Exception as error:
                log.error("message handling failed outside its handler", exc_info=True,
                          extra={"message_id": properties.message_id, "attempt": attempt})
                if outcome is None:
                    outcome = retry_or_park(attempt, self.settings, f"consumer: {error!r}")
            finally:
                with self._handling_lock:
                    if lane:
                        self._returned_since = None
                    else:
                        self._handling.pop(threading.get_ident(), None)
                    self._finished = time.monotonic()
            order_id = logs.order_id_var.get()  # bound by the handler, if it names an order
        settle = functools.partial(self._settle, channel, republish, queue, method, properties, body, attempt,
                                   outcome, request_id, order_id)
        try:
            conn.add_callback_threadsafe(settle)
        except Exception:  # the connection died; the broker redelivers the message
            log.warning("could not settle; message will be redelivered", extra={"message_id": properties.message_id})

    def _database_answers(self) -> bool:
        generation = self.pause.database_generation()
        if not db.answers(self.uow_factory):
            return False
        self.pause.database_answered(generation)
        return True

    def _handle_now(self, body: bytes, attempt: int, properties, headers: Mapping, queue: str) -> Outcome:
        if attempt == 1:  # a retry is late already
            self.deferral.wait(properties.timestamp, self.stop)
        current_attempt.set(attempt)
        # The handling is a span under the relay's publish of the message (its `traceparent`).
        with tracing.consuming(properties.type, properties.message_id, headers, queue, attempt) as span:
            outcome = handle_delivery(body, attempt, self.handlers, self.uow_factory, self.settings, self.inbox,
                                      database_waits=_header_count(headers, "x-database-waits", properties.message_id))
            if outcome.action != "ack":
                tracing.failed(span, f"{outcome.action}: {outcome.error}")
        if outcome.action == "wait":
            self.pause.begin(outcome.error, database=outcome.database)
        elif outcome.action == "ack":
            self.pause.went_through()
        return outcome

    def _settle(self, channel, republish, queue: str, method, properties, body, attempt, outcome: Outcome,
                request_id: str | None, order_id: str | None) -> None:
        # On the connection thread: the handler's log context is not here, so it comes along.
        service = self.settings.service_name
        with logs.log_context(request_id=request_id, order_id=order_id):
            if outcome.action != "ack":
                headers = _without_broker_headers(properties.headers)
                if outcome.action == "wait":  # back at the end of its queue, this attempt not counted
                    target = queue
                    headers["x-attempt"] = attempt - 1
                    if outcome.database:
                        headers["x-database-waits"] = _header_count(headers, "x-database-waits",
                                                                    properties.message_id) + 1
                elif outcome.action == "aside":  # not handled: its attempts stay as they were
                    target = self.returned
                    headers["x-returns"] = outcome.returns
                    self._returned_empty_until = 0.0  # the lane has one now
                else:
                    target = (topology.retry_queue(service, outcome.delay_ms) if outcome.action == "retry"
                              else topology.dead_letter_queue(service))
                    headers.update({"x-attempt": attempt, "x-last-error": outcome.error or ""})
                    if outcome.action == "retry":  # handled to its end: it did not take its consumer down
                        headers.pop("x-returns", None)
                    elif outcome.returns:  # parked for them (`returned_outcome`)
                        headers["x-returns"] = outcome.returns
                copy = pika.BasicProperties(
                    message_id=properties.message_id,
                    type=properties.type,
                    app_id=properties.app_id,
                    correlation_id=properties.correlation_id,
                    content_type=properties.content_type,
                    delivery_mode=pika.DeliveryMode.Persistent,
                    timestamp=properties.timestamp,  # when the event was published: DEFER_WHILE_BUSY reads it
                    headers=headers,
                )
                republish.basic_publish(exchange="", routing_key=target, body=body, properties=copy, mandatory=True)
                if outcome.action == "aside":
                    log.warning("message given back by a consumer that stopped with it in hand: set aside",
                                extra={"message_id": properties.message_id, "queue": target,
                                       "returns": outcome.returns})
                elif outcome.action != "wait":  # the pause says it once for all of them
                    log.log(
                        logging.WARNING if outcome.action == "retry" else logging.ERROR,
                        "message retried" if outcome.action == "retry" else "message dead-lettered",
                        extra={"message_id": properties.message_id, "attempt": attempt, "queue": target,
                               "error": outcome.error},
                    )
            channel.basic_ack(method.delivery_tag)
            if queue == self.returned and self._returned is not None:
                self._returned.settled = True


def _previous_attempts(headers: Mapping, message_id: str | None) -> int:
    """How many times the message was handled before (its `x-attempt`)."""
    return _header_count(headers, "x-attempt", message_id)


def _header_count(headers: Mapping, name: str, message_id: str | None) -> int:
    """Our count in header `name` (`x-attempt`, `x-database-waits`). A value that is not a whole
    number counts as none: the header is only our bookkeeping and says nothing against the
    event, which is handled rather than parked for an admin, and its next copy carries a number."""
    value = headers.get(name, 0) or 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        log.warning(f"malformed {name} header, counted as none",
                    extra={"message_id": message_id, "header": name, "value": repr(value)[:100]})
        return 0


def _without_broker_headers(headers: Mapping | None) -> dict:
    """A copy of `headers` for a message we publish again, without the broker's count of returns
    and dead-lettering history (see the module's docstring)."""
    return {name: value for name, value in (headers or {}).items() if name not in BROKER_HEADERS}


def _cancel_waiting(futures: set[Future]) -> None:
    for future in list(futures):
        future.cancel()  # only one not started yet is cancelled


def run(root) -> None:
    """Consume the service's events with its root's handlers until SIGTERM (a `shared.service.Root`),
    deleting what has aged as it goes (`housekeeping_tasks`)."""
    runner = ConsumerRunner(root.settings, root.event_handlers, root.unit_of_work, root.process,
                            LastSeen(root.engine, "consumer"), inbox=root.inbox, housekeeping=housekeeping_tasks(root))
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        root.close()


def housekeeping_tasks(root) -> list[tuple[str, Task]]:
    """What a consumer of `root`'s service purges: its inbox, when it keeps one, and the
    service's own `purges`."""
    tasks = list(root.purges.items())
    if root.inbox:
        retention = root.settings.inbox_retention_seconds
        tasks.insert(0, ("inbox", functools.partial(purge_inbox, root.engine, retention)))
    return tasks


def replay_dead_letters(url: str, service: str, message_ids: set[str] | None = None) -> list[str]:
    """Move dead letters of `service` (all of them, or those with the given ids) back to its work
    queue; the ids of those moved, in order. Their attempt count starts again, and the broker's
    dead-lettering history is left out (see the module's docstring).

    "All" is those parked when the replay starts (the queue's depth, read first): one that fails
    again and is parked meanwhile waits for the next replay instead of going round again in this
    one. Those another admin is reading at that moment (unacked) stay where they are. Those not
    asked for are parked again at the back (see `_park_again`), never returned."""
    def send_back(channel, properties, body: bytes) -> None:
        headers = _without_broker_headers(properties.headers)
        headers["x-attempt"] = 0
        # a replay has its waits for the database and its returns anew, as its attempts
        headers.pop("x-database-waits", None)
        headers.pop("x-returns", None)
        headers["x-replayed"] = True
        properties.headers = headers
        channel.basic_publish("", topology.work_queue(service), body, properties, mandatory=True)

    return [letter["message_id"] for letter in _take_dead_letters(url, service, message_ids, send_back, "replay")]


def discard_dead_letters(url: str, service: str, message_ids: set[str]) -> list[dict]:
    """Remove the dead letters of `service` with the given ids for good (what they asked for was
    settled by hand: a refund the provider refused, a shipped order's lost unit); those removed,
    in full, as `peek_dead_letters` shows them. Each is logged too. The others stay parked, at the
    back."""
    def log_discarded(_channel, properties, body: bytes) -> None:
        letter = _letter(properties, body)
        log.warning("dead letter discarded", extra={"service": service, **letter, "body": letter["body"][:2000]})

    return _take_dead_letters(url, service, message_ids, log_discarded, "discard")


def _take_dead_letters(url: str, service: str, message_ids: set[str] | None,
                       take: Callable[..., None], purpose: str) -> list[dict]:
    """Take the dead letters parked now (those with `message_ids`, or all): `take(channel,
    properties, body)` each, confirmed, then ack it; park the others again at the back. Those
    taken, as `_letter` shows them."""
    conn = amqp.connect(url, f"{service}-{purpose}")
    taken = []
    try:
        channel = conn.channel()
        queue = topology.dead_letter_queue(service)
        parked = channel.queue_declare(queue, passive=True).method.message_count
        channel.confirm_delivery()
        for _ in range(parked):
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            if message_ids is not None and properties.message_id not in message_ids:
                _park_again(channel, queue, method, properties, body)
                continue
            take(channel, properties, body)
            channel.basic_ack(method.delivery_tag)
            taken.append(_letter(properties, body))
    finally:
        if conn.is_open:
            conn.close()
    return taken


def peek_dead_letters(url: str, service: str, limit: int = 100) -> list[dict]:
    """The first `limit` dead letters of `service`, in the order they wait, left parked: each one
    read is parked again at the back (see `_park_again`), so with more than `limit` parked the
    next read shows the next ones."""
    conn = amqp.connect(url, f"{service}-dead-letters")
    letters = []
    try:
        channel = conn.channel()
        queue = topology.dead_letter_queue(service)
        # Only those parked now: past them the copies parked again would be read a second time.
        parked = channel.queue_declare(queue, passive=True).method.message_count
        channel.confirm_delivery()
        for _ in range(min(limit, parked)):
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            letters.append(_letter(properties, body))
            _park_again(channel, queue, method, properties, body)
    finally:
        if conn.is_open:
            conn.close()
    return letters


def _letter(properties, body: bytes) -> dict:
    """A dead letter as an admin reads it: what it was, how often it was tried, why it was parked."""
    headers = properties.headers or {}
    return {
        "message_id": properties.message_id,
        "type": properties.type,
        "attempts": _previous_attempts(headers, properties.message_id),
        "last_error": headers.get("x-last-error"),
        "body": body.decode("utf-8", "replace"),
    }


def _park_again(channel, queue: str, method, properties, body: bytes) -> None:
    """Put a dead letter read from `queue` back as a new message at its back (confirmed), then ack
    the one read. Never leave it unacked for the broker to put back: on a quorum queue such a
    return counts towards the delivery limit (on RabbitMQ 4.0 to 4.2 every one does), which 4.0
    and later set to 20 by default, and past it `<service>.dead` (dead-lettering nowhere) drops
    the message. A new message starts uncounted on every broker version, whatever the queue's
    arguments or policies. A read that dies between the two leaves a duplicate parked, which the
    consumers' deduplication absorbs."""
    channel.basic_publish("", queue, body, properties, mandatory=True)
    channel.basic_ack(method.delivery_tag)

"""The consumer runner against a fake broker with queues (`fake_broker.QueueBroker`): what it
publishes, acks, logs and beats, on its own threads as in production. No network."""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from devtools.client import poll
from shared import logs, tracing
from shared.config import Settings
from shared.heartbeat import reconnecting_file
from shared.messaging import topology
from shared.messaging.consumer import (MAX_DATABASE_WAITS, RETURNS_BEFORE_PARKING, ConsumerRunner, DatabaseAway,
                                      DependencyDown, Pause, PermanentFailure, current_attempt)
from shared.messaging.envelope import Envelope
from tests.unit.shared.fake_broker import (GIVE_UP_SECONDS, NoTransaction, QueueBroker, counted_pauses, eventually,
                                           parked_by_the_delivery_limit)

SERVICE = "checkout"
EVENT = "payment.refund_requested"
WORK = topology.work_queue(SERVICE)
RETRY = topology.retry_queue(SERVICE, 100)
DEAD = topology.dead_letter_queue(SERVICE)
RETURNED = topology.returned_queue(SERVICE)
# What RabbitMQ wrote on a message the work queue dead-lettered past its delivery limit.
PARKED_BY_THE_DELIVERY_LIMIT = parked_by_the_delivery_limit(WORK, EVENT)


class Recorded:
    """A `LastSeen` that counts what it is told."""

    def __init__(self):
        self.beats = 0

    def record(self):
        self.beats += 1


@pytest.fixture
def broker(monkeypatch):
    broker = QueueBroker()
    monkeypatch.setattr("shared.messaging.connection.connect", broker.connect)
    return broker


@pytest.fixture
def root_logging():
    """Puts back the root logger's handlers and level, which `logs.configure` replaces."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def runner_of(handler=None, last_seen=None, **settings) -> ConsumerRunner:
    settings = Settings(service_name=SERVICE, retry_delays_ms=(100, 1000), max_attempts=3, **settings)
    return ConsumerRunner(settings, {EVENT: handler or (lambda envelope, uow: None)}, NoTransaction, "tests",
                          last_seen, inbox=False)


def refund_requested(broker: QueueBroker, headers: dict | None = None) -> Envelope:
    envelope = Envelope(type=EVENT, data={"order_id": "o-1"}, source="checkout")
    broker.put(WORK, envelope.to_json(), message_id=envelope.id, type=EVENT, headers=headers)
    return envelope


def in_the_returned_lane(broker: QueueBroker, headers: dict | None = None) -> Envelope:
    """An event set aside in the lane by a consumer that stopped with it in hand (`headers`)."""
    envelope = Envelope(type=EVENT, data={"order_id": "o-lane"}, source="checkout")
    broker.put(RETURNED, envelope.to_json(), message_id=envelope.id, type=EVENT, headers=headers)
    return envelope


def raising(error: Exception):
    def handler(envelope, uow):
        raise error
    return handler


@contextmanager
def running(runner: ConsumerRunner):
    thread = threading.Thread(target=runner.run, name="consumer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        runner.stop.set()
        thread.join(GIVE_UP_SECONDS)
    assert not thread.is_alive(), "the runner did not stop"


@pytest.mark.parametrize("failure, queue", [(RuntimeError("SMTP said 451"), RETRY),
                                            (PermanentFailure("550 mailbox unavailable"), DEAD)])
def test_a_retried_or_parked_copy_leaves_the_broker_s_dead_lettering_history_behind(broker, failure, queue):
    """A replayed letter the delivery limit once parked: its retry copy naming the work queue in
    `x-death` would look like a dead-letter cycle to the broker when it expires back there."""
    refund_requested(broker, {**PARKED_BY_THE_DELIVERY_LIMIT, "x-attempt": 0, "x-replayed": True,
                              "x-request-id": "r-1"})

    with running(runner_of(raising(failure))):
        eventually(lambda: broker.acked, "the message settled")

    [copy] = broker.queues[queue]
    assert sorted(copy.properties.headers) == ["x-attempt", "x-last-error", "x-replayed", "x-request-id"]
    assert copy.properties.headers["x-attempt"] == 1


def test_while_the_broker_is_away_the_consumer_is_alive_not_ready_and_the_service_s_row_ages(broker, tmp_path):
    """Restarting cannot bring the broker back; a rollout must not count the pod ready; the
    `worker_heartbeats` row keeps showing the outage."""
    broker.down = True
    heartbeat, last_seen = tmp_path / "heartbeat", Recorded()

    with running(runner_of(last_seen=last_seen, heartbeat_file=str(heartbeat))):
        eventually(Path(reconnecting_file(str(heartbeat))).exists, "a beat while reconnecting")

    assert not heartbeat.exists()  # the readiness probe's file
    assert last_seen.beats == 0


def test_after_a_connection_that_consumed_the_next_outage_waits_from_the_shortest_pause_again(broker, monkeypatch,
                                                                                               tmp_path):
    pauses, heartbeat = counted_pauses(monkeypatch), tmp_path / "heartbeat"
    broker.refuse_connects = 3
    with running(runner_of(heartbeat_file=str(heartbeat))):
        eventually(heartbeat.exists, "a turn consuming")
        broker.refuse_connects = 2
        broker.lose(broker.connections[-1])
        eventually(lambda: len(broker.connections) == 2 and broker.consuming(), "a consumer again")

    assert pauses == [1, 2, 3, 1, 2, 3]


def test_a_broker_that_cancels_every_consumer_at_once_is_tried_ever_more_slowly(broker, monkeypatch, tmp_path):
    pauses, heartbeat = counted_pauses(monkeypatch), tmp_path / "heartbeat"
    broker.cancel_consumers = True
    with running(runner_of(heartbeat_file=str(heartbeat))):
        eventually(lambda: len(broker.connections) >= 4, "four connections cancelled")

    assert pauses[:4] == [1, 2, 3, 4]  # one back-off, never started again
    assert not heartbeat.exists()  # never ready


def test_a_message_whose_attempt_count_is_not_a_number_is_handled_as_a_first_delivery(broker, caplog):
    attempts = []
    refund_requested(broker, {"x-attempt": "three"})

    with caplog.at_level(logging.WARNING, logger="floodgate.consumer"), \
            running(runner_of(lambda envelope, uow: attempts.append(current_attempt.get()))):
        eventually(lambda: broker.acked, "the message acked")

    assert attempts == [1]
    assert "malformed x-attempt header, counted as none" in caplog.messages


def test_a_failure_outside_the_handler_is_logged_and_the_message_retried(broker, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no tracer")

    monkeypatch.setattr(tracing, "consuming", broken)
    refund_requested(broker)

    with caplog.at_level(logging.WARNING, logger="floodgate.consumer"), running(runner_of()):
        eventually(lambda: broker.acked, "the message settled")

    [copy] = broker.queues[RETRY]
    assert copy.properties.headers["x-last-error"] == "consumer: RuntimeError('no tracer')"
    [failed] = [record for record in caplog.records if record.message == "message handling failed outside its handler"]
    assert failed.levelname == "ERROR" and failed.exc_info


@pytest.mark.parametrize("failure, line, level", [(RuntimeError("SMTP said 451"), "message retried", "WARNING"),
                                                  (PermanentFailure("550 mailbox unavailable"), "message dead-lettered",
                                                   "ERROR")])
def test_the_line_saying_a_message_was_retried_or_parked_names_its_order(broker, root_logging, capsys, failure, line,
                                                                        level):
    def refund(envelope, uow):
        logs.bind_order_id(envelope.data["order_id"])
        raise failure

    logs.configure("checkout-consumer")  # one JSON object a line on stderr, as in production
    refund_requested(broker, {"x-request-id": "r-1"})

    with running(runner_of(refund)):
        eventually(lambda: broker.acked, "the message settled")

    written = [json.loads(each) for each in capsys.readouterr().err.splitlines() if each.startswith("{")]
    [settled] = [entry for entry in written if entry["message"] == line]
    assert (settled["level"], settled["order_id"], settled["request_id"]) == (level, "o-1", "r-1")


def test_while_a_dependency_is_down_messages_wait_in_the_queue_uncounted_and_flow_once_it_is_back(broker):
    """Notifications' SMTP server down: each email's attempts once went through the retry tiers
    (an hour apart at their longest), so mail came up to an hour after the server was back."""
    down, handled = threading.Event(), []
    down.set()

    def handler(envelope, uow):
        if down.is_set():
            raise DependencyDown("SMTP: connection refused")
        handled.append((envelope.id, current_attempt.get()))

    envelopes = [refund_requested(broker) for _ in range(3)]
    runner = runner_of(handler)
    runner.pause = Pause(first=0.05, longest=0.1)
    with running(runner):
        eventually(lambda: len(broker.acked) >= 9, "every message tried and put back a few times")
        assert handled == []
        down.clear()
        eventually(lambda: len(handled) == 3, "every message handled once the dependency is back")

    assert sorted(handled) == sorted((envelope.id, 1) for envelope in envelopes)  # no attempt spent
    assert list(broker.queues[RETRY]) == [] and list(broker.queues[DEAD]) == [] and list(broker.queues[WORK]) == []


def test_while_paused_the_runner_tries_no_message_and_holds_none(broker):
    """A pause is a pause: not a loop trying (and republishing) every message as fast as it can."""
    tries = []

    def handler(envelope, uow):
        tries.append(envelope.id)
        raise DependencyDown("SMTP: connection refused")

    for _ in range(5):
        refund_requested(broker)
    runner = runner_of(handler)
    runner.pause = Pause(first=60, longest=60)
    with running(runner):
        eventually(lambda: len(tries) == 1 and not broker.consuming(), "one try, then the subscription cancelled")
        eventually(lambda: len(broker.queues[WORK]) == 5, "every message back in the work queue")
        assert len(tries) == 1 and not broker.consuming()


def test_a_message_waiting_for_the_database_carries_its_count_of_waits_and_is_counted_past_them(broker):
    tries = []

    def handler(envelope, uow):
        tries.append(envelope.id)
        raise DatabaseAway("the database is not answering")

    refund_requested(broker)
    runner = runner_of(handler)
    runner.pause = Pause(first=60, longest=60)
    with running(runner):
        eventually(lambda: len(tries) == 1 and len(broker.queues[WORK]) == 1, "one try, the message back")
    [waiting] = broker.queues[WORK]
    assert (waiting.properties.headers["x-database-waits"], waiting.properties.headers["x-attempt"]) == (1, 0)

    refund_requested(broker, headers={"x-database-waits": MAX_DATABASE_WAITS})
    broker.queues[WORK].popleft()
    with running(runner_of(handler)):
        eventually(lambda: len(broker.queues[RETRY]) == 1, "past its waits, a counted try: to the retry tier")


class Database:
    """Units of work on a database that is `down` or not: entered, they count; a statement run
    on one while it is down fails as on a lost connection."""

    def __init__(self):
        self.down, self.probes = False, 0
        self.session = self

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def execute(self, statement):
        self.probes += 1
        if self.down:
            raise sqlalchemy.exc.OperationalError(str(statement), {}, ConnectionRefusedError("connection refused"))

    def commit(self):
        pass


def test_however_long_the_database_is_away_a_message_waits_for_it_uncounted_past_its_first_try(broker):
    """The first message tried after each pause counted a wait: in a quiet queue, an outage of a
    quarter of an hour counted it past MAX_DATABASE_WAITS, and it went to the retry tiers, then
    to the dead letters (an order's cancellation, its unit kept off sale until an admin came)."""
    database, tries = Database(), []

    def handler(envelope, uow):
        tries.append(envelope.id)
        if database.down:
            raise DatabaseAway("the database is not answering")

    first = refund_requested(broker)
    runner = ConsumerRunner(Settings(service_name=SERVICE, retry_delays_ms=(100, 1000), max_attempts=3),
                            {EVENT: handler}, database, "tests", inbox=False)
    runner.pause = Pause(first=0.01, longest=0.02)
    with running(runner):
        eventually(lambda: len(broker.acked) == 1, "the first message handled")
        database.down = True
        envelope = refund_requested(broker)
        eventually(lambda: database.probes > MAX_DATABASE_WAITS + 5 or broker.queues[RETRY],
                   "pause after pause, or the message counted")
        assert not broker.queues[RETRY] and not broker.queues[DEAD]
        database.down = False
        eventually(lambda: tries.count(envelope.id) == 2 and not broker.queues[WORK], "handled once the database is back")

    # as the outage began, and once it was over; its one wait counted, the first try's
    assert tries == [first.id, envelope.id, envelope.id]
    assert max((message.properties.headers or {}).get("x-database-waits", 0) for message in broker.acked) == 1
    assert not broker.queues[RETRY] and not broker.queues[DEAD]


def test_a_consumer_started_while_its_database_is_away_tries_nothing_until_it_answers(broker):
    """A replica started in an outage (KEDA scales notifications on its growing queue) tried its
    first messages unprobed, each counting a wait."""
    database, tries = Database(), []
    database.down = True

    def handler(envelope, uow):
        tries.append(envelope.id)

    envelope = refund_requested(broker)
    runner = ConsumerRunner(Settings(service_name=SERVICE, retry_delays_ms=(100, 1000), max_attempts=3),
                            {EVENT: handler}, database, "tests", inbox=False)
    runner.pause = Pause(first=0.01, longest=0.02)
    with running(runner):
        eventually(lambda: database.probes >= 3, "probes while the database is away")
        assert tries == []
        database.down = False
        eventually(lambda: tries == [envelope.id], "tried once it answers")


def test_a_handler_stuck_at_one_message_stops_the_heartbeat_so_the_pod_is_restarted(broker, monkeypatch, tmp_path):
    """A handler waiting for ever (a lock never given up) held every message behind it while the
    connection's loop beat on: liveness, readiness and `worker_heartbeats` all said healthy."""
    monkeypatch.setattr("shared.messaging.consumer.STUCK_HANDLER_SECONDS", 0.5)
    release, heartbeat, last_seen = threading.Event(), tmp_path / "heartbeat", Recorded()
    runner = runner_of(lambda envelope, uow: release.wait(GIVE_UP_SECONDS), last_seen=last_seen,
                       heartbeat_file=str(heartbeat))
    try:
        with running(runner):
            eventually(lambda: last_seen.beats > 0, "a beat while consuming")
            refund_requested(broker)
            eventually(lambda: runner.stuck_for() > 0, "the handler to be stuck")
            beats = last_seen.beats
            stamp = heartbeat.stat().st_mtime_ns
            # the connection's loop turns every half second: two turns, no beat
            threading.Event().wait(1.2)
            assert (last_seen.beats, heartbeat.stat().st_mtime_ns) == (beats, stamp)
            release.set()
            eventually(lambda: last_seen.beats > beats, "beats again once the handler is through")
    finally:
        release.set()


def test_a_handler_stuck_at_a_returned_message_is_stuck_while_the_work_queue_flows(broker, monkeypatch):
    """The work threads' finishes reset one clock for every handler: a lane message held for
    ever went unnoticed, and the lane was never read again."""
    monkeypatch.setattr("shared.messaging.consumer.STUCK_HANDLER_SECONDS", 0.2)
    release = threading.Event()

    def handler(envelope, uow):
        if envelope.data.get("order_id") == "o-lane":
            release.wait(GIVE_UP_SECONDS)

    in_the_returned_lane(broker)
    runner = runner_of(handler)
    try:
        with running(runner):
            def flowing_and_stuck() -> bool:
                refund_requested(broker)  # handled and finished on a work thread
                return runner.stuck_for() > 0
            poll(flowing_and_stuck, timeout=GIVE_UP_SECONDS, interval=0.05,
                 what="the lane's handler stuck while the work queue flows")
            assert len(broker.acked) >= 2  # the work queue did flow meanwhile
    finally:
        release.set()


@pytest.mark.parametrize("queue", [WORK, RETURNED])
def test_a_channel_the_broker_closed_is_noticed_and_the_runner_reconnects(broker, queue):
    """RabbitMQ closes the channel of a consumer that held a message past its acknowledgement
    timeout; pika's blocking connection says so only when the channel is next used, so the runner
    went on turning with no subscription, consuming nothing."""
    handled = []
    runner = runner_of(lambda envelope, uow: handled.append(envelope.id))
    with running(runner):
        eventually(lambda: broker.consuming(), "a consumer")
        [connection] = [c for c in broker.connections if c.is_open]
        eventually(lambda: any(RETURNED in channel.queues_read for channel in connection.channels), "the lane read")
        [channel] = [channel for channel in connection.channels if queue in channel.queues_read]
        channel.closed_by_broker = True
        eventually(lambda: len(broker.connections) >= 2 and broker.consuming(), "a new connection consuming")
        envelope = refund_requested(broker)
        eventually(lambda: envelope.id in handled, "the next message handled")


def test_one_slow_handler_among_others_that_finish_is_not_stuck(broker, monkeypatch):
    """Two of one order's emails sent one after the other (the second waits on the first's lock)
    can take longer than the limit together; each finishing is progress. Only handlers at work
    with none finishing stop the heartbeat."""
    monkeypatch.setattr("shared.messaging.consumer.STUCK_HANDLER_SECONDS", 0.5)
    release = threading.Event()
    first = []

    def handler(envelope, uow):
        if not first:
            first.append(envelope.id)
            release.wait(GIVE_UP_SECONDS)  # the slow one

    runner = runner_of(handler, consumer_threads=2)
    try:
        with running(runner):
            refund_requested(broker)
            eventually(lambda: first, "the slow handling to start")
            for _ in range(4):  # others finish every 0.3 s beside it
                refund_requested(broker)
                eventually(lambda: not broker.queues[WORK], "the next message taken")
                threading.Event().wait(0.3)
                assert runner.stuck_for() == 0
            release.set()
    finally:
        release.set()


def dies_at(broker: QueueBroker, poison: str, handled: list[tuple[str, int]]):
    """A handler that records (message id, attempt) and, at the `poison` message, takes its
    consumer down as a dying process would: the connection is lost (what it held goes back to
    the broker, counted), and this thread handles nothing more until the runner has connected
    again, past dropping what it had not started."""
    def handler(envelope, uow):
        handled.append((envelope.id, current_attempt.get()))
        if envelope.id == poison:
            [connection] = [c for c in broker.connections if c.is_open]
            opened = len(broker.connections)
            broker.lose(connection)
            eventually(lambda: len(broker.connections) > opened, "the consumer connected again")
    return handler


def test_a_message_that_kills_its_consumer_is_parked_alone_and_those_it_held_are_handled(broker, monkeypatch):
    """RabbitMQ 3.x counts a return towards the delivery limit (20) for every message the dying
    consumer held, handled or only prefetched: a message that killed its consumer twenty times
    parked the five good ones behind it too."""
    counted_pauses(monkeypatch)  # reconnects at once
    broker.delivery_limits = {WORK: (20, DEAD), RETURNED: (20, DEAD)}
    poison = refund_requested(broker).id
    good = [refund_requested(broker).id for _ in range(5)]
    handled: list[tuple[str, int]] = []

    with running(runner_of(dies_at(broker, poison, handled), consumer_threads=1)):
        def settled():
            parked = {message.properties.message_id for message in broker.queues[DEAD]}
            handled_copies = {message.properties.message_id for message in broker.acked
                              if (message.properties.headers or {}).get("x-returns") is not None}
            return poison in parked and set(good) <= parked | handled_copies
        eventually(settled, "the poison parked and the others settled")

    [parked] = broker.queues[DEAD]
    assert parked.properties.message_id == poison
    assert parked.properties.headers["x-returns"] == RETURNS_BEFORE_PARKING
    assert "kills its consumer" in parked.properties.headers["x-last-error"]
    assert sorted(message_id for message_id, _ in handled if message_id != poison) == sorted(good)  # once each
    assert [attempt for message_id, attempt in handled if message_id != poison] == [1] * len(good)
    # killed at its first try, then alone in the returned lane until parked
    assert [message_id for message_id, _ in handled].count(poison) == RETURNS_BEFORE_PARKING + 1
    assert not broker.queues[WORK] and not broker.queues[RETURNED]


def test_a_message_given_back_is_handled_in_the_returned_lane_with_its_attempts_as_they_were(broker):
    envelope = refund_requested(broker, headers={"x-attempt": 2, "x-delivery-count": 1})
    broker.queues[WORK][0].returns = 1  # given back by a consumer that stopped with it in hand
    attempts = []
    with running(runner_of(lambda envelope, uow: attempts.append(current_attempt.get()))):
        eventually(lambda: len(broker.acked) == 2, "set aside, then handled")

    assert attempts == [3]
    original, copy = broker.acked
    assert copy.properties.message_id == envelope.id and copy.properties.headers == {"x-attempt": 2, "x-returns": 0}


def test_a_probe_that_answered_before_a_newer_pause_for_the_database_does_not_end_its_probing():
    """A thread's probe got its answer; another's try then found the database gone and paused:
    the first thread's late word ended the probing, and the messages in hand after the pause
    were tried unprobed, each counting a wait."""
    pause = Pause(first=60, longest=60)
    answered_before = pause.database_generation()
    pause.begin("the database is not answering", database=True)
    pause.database_answered(answered_before)
    assert pause.for_the_database()
    pause.database_answered(pause.database_generation())
    assert not pause.for_the_database()


def test_a_returned_message_whose_handler_fails_is_retried_with_its_count_of_returns_forgotten(broker):
    """It was handled to its end (it failed, it did not take its consumer down): a retry copy
    that kept `x-returns` would bring it nearer to being parked as a killer at its next stop."""
    envelope = in_the_returned_lane(broker, {"x-returns": RETURNS_BEFORE_PARKING - 1, "x-attempt": 0})

    with running(runner_of(raising(RuntimeError("SMTP said 451")))):
        eventually(lambda: broker.queues[RETRY], "retried")

    [copy] = broker.queues[RETRY]
    assert copy.properties.message_id == envelope.id
    assert copy.properties.headers["x-attempt"] == 1 and "x-returns" not in copy.properties.headers


def test_a_graceful_stop_finishes_the_returned_message_in_hand_and_settles_it(broker):
    """A rollout's SIGTERM while the lane's thread handles a message: given back instead, it would
    count one more return (five park it as a killer) and be handled again."""
    envelope = in_the_returned_lane(broker, {"x-returns": 1})
    started, release = threading.Event(), threading.Event()

    def handler(envelope, uow):
        started.set()
        release.wait(GIVE_UP_SECONDS)

    runner = runner_of(handler)
    thread = threading.Thread(target=runner.run, name="consumer", daemon=True)
    thread.start()
    try:
        assert started.wait(GIVE_UP_SECONDS), "the lane's message was not taken"
        runner.stop.set()
        eventually(lambda: not broker.consuming(), "the work queue's consumer cancelled")
        release.set()
        thread.join(GIVE_UP_SECONDS)
    finally:
        release.set()
        runner.stop.set()
    assert not thread.is_alive(), "the runner did not stop"
    assert [message.properties.message_id for message in broker.acked] == [envelope.id]
    assert not broker.queues[RETURNED] and not broker.queues[DEAD]


def test_the_next_returned_message_is_taken_only_once_the_last_ones_ack_went_out(broker):
    """The lane holds one message at a time: handled, its ack still queued for the connection
    thread, the next one taken beside it would be given back with it if the consumer died then,
    and each would count a return it did not cause."""
    first, second = in_the_returned_lane(broker), in_the_returned_lane(broker)
    runner = runner_of()
    connection = broker.connect("amqp://", "tests")
    channel = connection.channel()
    submitted = []

    class Worker:
        def submit(self, *arguments):
            submitted.append(arguments)
            handled = Future()
            handled.set_result(None)
            return handled

    runner._take_returned(channel, Worker(), connection, republish=None)
    assert [json.loads(arguments[-1])["id"] for arguments in submitted] == [first.id]
    runner._take_returned(channel, Worker(), connection, republish=None)  # handled, not yet acked
    assert len(submitted) == 1 and len(broker.queues[RETURNED]) == 1
    runner._returned.settled = True  # what `_settle` says once its ack went out
    runner._take_returned(channel, Worker(), connection, republish=None)
    assert [json.loads(arguments[-1])["id"] for arguments in submitted] == [first.id, second.id]

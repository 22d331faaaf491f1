import logging
import os
import subprocess
import sys
import time

import sqlalchemy as sa

from shared.heartbeat import Heartbeat, age_seconds, reconnecting_file
from shared.last_seen import LastSeen
from tests.unit.shared.fake_database import FakeEngine


def check(*paths, max_age):
    return subprocess.run([sys.executable, "-m", "shared.heartbeat", *map(str, paths), "--max-age", str(max_age)]).returncode


def test_a_loop_that_beats_is_alive_and_one_that_stopped_is_not(tmp_path):
    path = tmp_path / "heartbeat"
    assert check(path, max_age=60) == 1  # never beat
    Heartbeat(str(path)).beat()
    assert age_seconds(str(path)) < 5 and check(path, max_age=60) == 0
    stale = time.time() - 120
    os.utime(path, (stale, stale))
    assert check(path, max_age=60) == 1


def test_a_worker_waiting_to_reconnect_is_alive_but_not_ready(tmp_path):
    working = tmp_path / "heartbeat"
    reconnecting = reconnecting_file(str(working))
    Heartbeat(reconnecting).beat()

    assert check(working, reconnecting, max_age=60) == 0  # liveness: either file will do
    assert check(working, max_age=20) == 1  # readiness: working only


def test_without_a_path_beating_writes_nothing(tmp_path):
    Heartbeat("").beat()
    assert list(tmp_path.iterdir()) == []


# --- the beat recorded where the service's API reads it (shared/last_seen.py) --------------------


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorded:
    def __init__(self):
        self.beats = 0

    def record(self):
        self.beats += 1


def test_a_beat_is_recorded_for_the_api_at_most_once_a_second():
    last_seen = Recorded()
    heartbeat = Heartbeat("", last_seen)
    heartbeat.beat()
    heartbeat.beat()  # the same second: nothing more
    assert last_seen.beats == 1


def test_the_last_beat_is_written_with_how_long_ago_it_was():
    clock, engine = Clock(), FakeEngine()
    last_seen = LastSeen(engine, "relay", instance="inventory-relay-7f9c:1", clock=clock)
    last_seen._beat = clock.now  # what record() notes, without starting the writer thread
    clock.now += 3.0  # the loop then got stuck: the write says the beat is 3 s old

    assert last_seen.write()

    (statement, params), = engine.statements("INSERT INTO worker_heartbeats")
    assert params == {"kind": "relay", "instance": "inventory-relay-7f9c:1", "ago": 3.0}
    assert "now() - make_interval(secs => :ago)" in statement  # the database's clock, not the pod's


def test_nothing_is_written_until_the_loop_beats_again():
    clock, engine = Clock(), FakeEngine()
    last_seen = LastSeen(engine, "consumer", instance="a", clock=clock)
    assert last_seen.write() and engine.executed == []  # never beat: no row
    last_seen._beat = clock.now
    last_seen.write()
    clock.now += 5
    last_seen.write()  # a stuck loop: its row ages
    assert len(engine.statements("INSERT")) == 1
    last_seen._beat = clock.now
    last_seen.write()
    assert len(engine.statements("INSERT")) == 2


def test_rows_of_processes_long_gone_are_forgotten_once_an_hour_by_their_own_kind():
    clock, engine = Clock(), FakeEngine()
    last_seen = LastSeen(engine, "sweeper", instance="a", clock=clock)
    for _ in range(3):
        last_seen._beat = clock.now
        last_seen.write()
        clock.now += 5
    clock.now += 3600
    last_seen._beat = clock.now
    last_seen.write()
    forgets = engine.statements("DELETE FROM worker_heartbeats")
    assert [params for _, params in forgets] == [{"kind": "sweeper"}, {"kind": "sweeper"}]


def test_a_database_that_refuses_the_write_does_not_stop_the_worker(caplog):
    clock = Clock()
    engine = FakeEngine(error=sa.exc.OperationalError("INSERT", {}, ConnectionRefusedError("down")))
    last_seen = LastSeen(engine, "admitter", instance="a", clock=clock)
    with caplog.at_level(logging.WARNING, logger="floodgate.heartbeat"):
        for _ in range(3):
            last_seen._beat = clock.now
            assert last_seen.write() is False
            clock.now += 5
    assert len(caplog.records) == 1  # once per outage
    engine.error = None
    last_seen._beat = clock.now
    assert last_seen.write() is True and len(engine.statements("INSERT")) == 1


def test_recording_starts_one_writer_thread_that_writes_the_beat():
    engine = FakeEngine()
    last_seen = LastSeen(engine, "relay", instance="a", every=0.01)
    last_seen.record()
    thread = last_seen._thread
    last_seen.record()
    assert last_seen._thread is thread and thread.daemon
    deadline = time.monotonic() + 5
    while not engine.statements("INSERT") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.statements("INSERT")

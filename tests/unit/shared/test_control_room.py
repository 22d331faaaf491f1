"""What every service tells the control room about its workers: /metrics' own heartbeat figures
(shared/last_seen.py), read into one line per kind of worker. A fake engine stands in: no
database."""
from __future__ import annotations

from shared.control_room import samples, workers
from shared.last_seen import heartbeat_figures
from tests.unit.shared.fake_database import FakeEngine


def test_each_kind_of_worker_shows_how_long_since_it_beat_and_how_many_run():
    engine = FakeEngine([{"kind": "consumer", "age": 2.5, "alive": 2}, {"kind": "relay", "age": 301.0, "alive": 0}])

    assert workers(heartbeat_figures("inventory", engine, 2.0)()) == [
        {"kind": "consumer", "last_beat_seconds_ago": 2.5, "alive": 2},
        {"kind": "relay", "last_beat_seconds_ago": 301.0, "alive": 0},
    ]
    assert len(engine.statements("SELECT")) == 1  # the one query /metrics makes


def test_a_service_whose_workers_never_beat_lists_none():
    assert workers(heartbeat_figures("accounts", FakeEngine([]), 2.0)()) == []


def test_samples_are_keyed_by_name_and_sorted_labels():
    engine = FakeEngine([{"kind": "sweeper", "age": 1.0, "alive": 1}])
    found = samples(heartbeat_figures("inventory", engine, 2.0)())

    assert found[("floodgate_worker_heartbeat_age_seconds", (("kind", "sweeper"), ("service", "inventory")))] == 1.0

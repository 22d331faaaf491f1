"""The record of what admins did (shared/admin_actions.py): who, when, what, and how it ended,
written in the transaction of the change, and read back newest first with the actions on no drop
in particular. A recording session and a Flask request stand in: no database, no network."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from flask import Flask, g

from shared.admin_actions import AdminAction, AdminActions
from shared.auth import Principal
from shared.control_room import requested_action

DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")
ADMIN = Principal(subject="admin-7", role="admin", email="ops@floodgate.test")


class RecordingSession:
    """Keeps each statement it is given and its parameters; reads answer `rows`."""

    def __init__(self, rows=()):
        self.executed = []
        self.rows = list(rows)

    def execute(self, statement, params=None):
        self.executed.append((statement, params))
        return [SimpleNamespace(_mapping=row) for row in self.rows]


def extend_window() -> AdminAction:
    return AdminAction(admin_subject="admin-7", admin_email="ops@floodgate.test", method="PATCH",
                       path=f"/drops/{DROP}", drop_id=DROP, body={"closes_at": "2014-10-27T18:00:00+00:00"},
                       request_id="req-1")


def test_an_action_is_written_with_who_what_and_its_outcome_in_the_sessions_transaction():
    session = RecordingSession()
    AdminActions(session).record(extend_window().ended({"state": "open"}))

    [(statement, params)] = session.executed
    assert str(statement).startswith("INSERT INTO admin_actions")
    assert params == {"admin_subject": "admin-7", "admin_email": "ops@floodgate.test", "method": "PATCH",
                      "path": f"/drops/{DROP}", "drop_id": DROP,
                      "body": {"closes_at": "2014-10-27T18:00:00+00:00"}, "outcome": {"state": "open"},
                      "request_id": "req-1"}
    # when: the database's clock, the transaction's own time
    assert "at" not in params


def test_a_drops_actions_are_read_with_those_on_no_drop_newest_first():
    at = datetime(2014, 10, 27, 16, 0, tzinfo=timezone.utc)
    stored = {"id": 2, "at": at, "admin_subject": "admin-7", "admin_email": None, "method": "POST",
              "path": "/dead-letters/replay", "drop_id": None, "body": {}, "outcome": {"replayed": 1},
              "request_id": None}
    session = RecordingSession([stored])

    [action] = AdminActions(session).recent(DROP, limit=20)

    assert action.outcome == {"replayed": 1} and action.at == at
    [(statement, _)] = session.executed
    compiled = statement.compile()
    sql = " ".join(str(compiled).split())
    assert "admin_actions.drop_id = :drop_id_1 OR admin_actions.drop_id IS NULL" in sql
    assert "ORDER BY admin_actions.id DESC" in sql
    assert {DROP, 20} <= set(compiled.params.values())


def test_the_requested_action_is_the_admins_method_path_and_body_as_sent():
    app = Flask(__name__)
    with app.test_request_context(f"/drops/{DROP}/line", method="PATCH", json={"state": "paused"}):
        g.principal = ADMIN
        action = requested_action(DROP)

    assert (action.admin_subject, action.admin_email) == ("admin-7", "ops@floodgate.test")
    assert (action.method, action.path, action.drop_id) == ("PATCH", f"/drops/{DROP}/line", DROP)
    assert action.body == {"state": "paused"} and action.outcome is None


def test_an_action_without_a_body_records_an_empty_one():
    app = Flask(__name__)
    with app.test_request_context("/dead-letters/replay", method="POST"):
        g.principal = ADMIN
        action = requested_action()

    assert action.body == {} and action.drop_id is None


@pytest.mark.parametrize("body", ['{"note": "\\u0000"}', '{"note": "\\ud800"}', '{"n": NaN}', '{"\\u0000": 1}'])
def test_a_body_postgresql_cannot_keep_is_recorded_as_a_note_instead_of_failing_the_action(body):
    """Ship and cancel take no body, so one an admin's tool sent is not validated; recorded as
    sent, it made the action's transaction fail (a 500, the ship or cancel rolled back)."""
    app = Flask(__name__)
    with app.test_request_context("/orders/o-1/ship", method="POST", data=body, content_type="application/json"):
        g.principal = ADMIN
        action = requested_action()

    assert list(action.body) == ["unrecorded"]
    json.dumps(action.body, allow_nan=False)

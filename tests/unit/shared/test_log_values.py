"""An unexpected database error is logged whole (shared/errors.py), and PostgreSQL's own message
may hold a row's values: they do not reach the log."""
import io
import json
import logging

import sqlalchemy as sa

from shared import logs


def test_a_database_errors_detail_lines_stay_out_of_the_log(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # configure's handler, for this test only
    monkeypatch.setattr(root, "level", root.level)
    logs.configure("test")
    stream = io.StringIO()
    root.handlers[0].stream = stream
    violation = Exception('duplicate key value violates unique constraint "accounts_email_key"\n'
                          "DETAIL:  Key (email)=(ann@example.com) already exists.\n"
                          "CONTEXT:  unnamed portal parameter $1 = '$argon2id$v=19$secret'")
    try:
        raise sa.exc.IntegrityError("INSERT INTO accounts (email, password_hash) VALUES (%s, %s)", {}, violation,
                                    hide_parameters=True)
    except sa.exc.IntegrityError:
        logging.getLogger("floodgate.test").exception("unhandled error")

    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert "accounts_email_key" in record["exc_info"] and "INSERT INTO accounts" in record["exc_info"]
    assert "ann@example.com" not in line and "argon2id" not in line

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
                          "CONTEXT:  unnamed portal parameter $1 = '$argon2id$v=19$secret'\n"
                          "Failing row contains (1 Rue Sainte-Catherine\nMontréal)")
    try:
        raise sa.exc.IntegrityError("INSERT INTO accounts (email, password_hash) VALUES (%s, %s)", {}, violation,
                                    hide_parameters=True)
    except sa.exc.IntegrityError:
        logging.getLogger("floodgate.test").exception("unhandled error")

    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert "accounts_email_key" in record["exc_info"] and "INSERT INTO accounts" in record["exc_info"]
    assert "ann@example.com" not in line and "argon2id" not in line and "Montréal" not in line


def test_a_handlers_database_error_is_kept_with_its_message_without_its_values():
    """The consumer logs a failed handler's error and keeps it in the retried message's
    header: as a repr, its line breaks are escaped, and a line filter missed them."""
    from shared.config import Settings
    from shared.messaging.consumer import handle_delivery
    from shared.messaging.envelope import Envelope

    def handler(envelope, uow):
        raise sa.exc.IntegrityError("INSERT INTO accounts (email) VALUES (%s)", {}, Exception(
            'duplicate key value violates unique constraint "accounts_email_key"\n'
            "DETAIL:  Key (email)=(ann@example.com) already exists.\n"), hide_parameters=True)

    class NoTransaction:
        session = None

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

    envelope = Envelope(type="account.registered", data={}, source="tests")
    outcome = handle_delivery(envelope.to_json(), 1, {"account.registered": handler}, NoTransaction,
                              Settings(service_name="notifications"), inbox=False)
    assert "accounts_email_key" in outcome.error and "ann@example.com" not in outcome.error

"""Checkout's load report against the real PostgreSQL: one row per API process, and the rows of
processes gone for an hour do not pile up (every deploy and restart starts new processes)."""
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from services.checkout.load_shedding import LoadReport
from services.checkout.models import CheckoutLoad
from shared.db import make_engine
from tests.integration.database import scratch_database


@pytest.fixture
def engine(infra):
    with scratch_database(infra, "load") as url:
        engine = make_engine(url, pool_size=1)
        CheckoutLoad.__table__.create(engine)
        yield engine
        engine.dispose()


def test_a_report_keeps_this_process_and_live_ones_and_clears_processes_gone_for_an_hour(engine):
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO checkout_load (process, refused, updated_at) VALUES "
            "('old-pod:7', 40, now() - interval '2 hours'), ('other-pod:9', 5, now() - interval '10 seconds')"))
    report = LoadReport(SimpleNamespace(refused_total=3), engine)
    report.report()
    report.report()
    with engine.connect() as connection:
        rows = dict(connection.execute(sa.text("SELECT process, refused FROM checkout_load")).all())
    assert rows == {report.process: 3, "other-pod:9": 5}

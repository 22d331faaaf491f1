"""The whole stack through a PgBouncer in transaction mode, as Kubernetes runs it: a small drop
sold concurrently, every order paid, confirmed and emailed once, and every connection the
services hold to PostgreSQL one of PgBouncer's (deploy/k8s/README.md, "PgBouncer").

PgBouncer is the Debian package (`make integration` installs it); without it this test fails,
saying so, rather than skip.
"""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from devtools.client import Floodgate, poll
from devtools.pgbouncer import LocalPgBouncer, PgBouncerMissing
from devtools.stack import SERVICES
from tests.integration.conftest import running_stack
from tests.integration.database import scalar

UNITS, BUYERS = 20, 40
# per database: far fewer than the services' processes open (APIs alone: 2 workers x 8 threads)
SERVER_CONNECTIONS = 6


@pytest.fixture(scope="module")
def pgbouncer(infra):
    bouncer = LocalPgBouncer(infra.postgres_url, server_connections=SERVER_CONNECTIONS)
    try:
        bouncer.start()
    except PgBouncerMissing as missing:
        pytest.fail(str(missing))
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def pooled_stack(infra, pgbouncer, tmp_path_factory):
    var_dir = Path(tmp_path_factory.mktemp("pooled-stack"))
    # a vhost of its own: on the session stack's, that stack's consumers would take half its events
    amqp_url, delete_vhost = infra.new_vhost()
    try:
        with running_stack(infra.postgres_url, amqp_url, var_dir, pooler_url=pgbouncer.url) as stack:
            yield stack
    finally:
        delete_vhost()


def until_answered(request, deadline: float) -> requests.Response:
    """Retry what checkout shed (429, after its Retry-After, capped), as a buyer's app does."""
    while True:
        answer = request()
        if answer.status_code != 429 or time.monotonic() > deadline:
            return answer
        time.sleep(min(float(answer.headers.get("Retry-After", "1")), 0.5))


def test_a_drop_sells_out_through_pgbouncer_in_transaction_mode(pooled_stack, pgbouncer):
    floodgate = Floodgate(pooled_stack)
    admin = floodgate.create_admin("admin@pgbouncer.test", "admin password for tests")
    drop = floodgate.create_drop(admin, quantity=UNITS)
    with ThreadPoolExecutor(8) as pool:
        tokens = [token for _, token in pool.map(lambda _: floodgate.register(), range(BUYERS))]

    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(BUYERS) as pool:
        answers = list(pool.map(
            lambda token: until_answered(lambda: floodgate.place_order(token, drop["id"]), deadline), tokens))
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {201: UNITS, 409: BUYERS - UNITS}, {a.status_code: a.text[:200] for a in answers}

    orders = [(token, answer.json()) for token, answer in zip(tokens, answers) if answer.status_code == 201]
    with ThreadPoolExecutor(UNITS) as pool:
        paid = list(pool.map(lambda placed: floodgate.pay(placed[1]), orders))
    assert [p.status_code for p in paid] == [200] * UNITS, [p.text[:200] for p in paid if p.status_code != 200]
    for token, order in orders:
        floodgate.wait_for_status(token, order["id"], "confirmed")

    drop_id = drop["id"]
    poll(lambda: scalar(pooled_stack, "inventory", "SELECT count(*) FROM reservations WHERE drop_id = :d AND "
                        "status = 'sold'", d=drop_id) == UNITS, what="every hold to become a sale")
    assert scalar(pooled_stack, "checkout", "SELECT count(*) FROM orders WHERE drop_id = :d", d=drop_id) == UNITS
    assert floodgate.get_drop(drop_id)["remaining"] == 0
    poll(lambda: all(floodgate.confirmations_of(order["id"]) for _, order in orders), timeout=60,
         what="a confirmation email for every order")
    assert [len(floodgate.confirmations_of(order["id"])) for _, order in orders] == [1] * UNITS

    # Every service's transactions went through PgBouncer ...
    prefix = pooled_stack.infra.database_prefix
    transactions = {row["database"]: int(row["total_xact_count"]) for row in pgbouncer.admin("SHOW STATS")}
    for service in SERVICES:
        assert transactions.get(f"{prefix}_{service}", 0) > 0, (service, transactions)
    assert transactions[f"{prefix}_checkout"] >= 2 * UNITS
    # ... many clients onto few server connections ...
    clients = Counter(row["database"] for row in pgbouncer.admin("SHOW CLIENTS"))
    servers = pgbouncer.admin("SHOW SERVERS")
    ours = [row for row in servers if row["database"].startswith(prefix)]
    assert all(n <= SERVER_CONNECTIONS for n in Counter(row["database"] for row in ours).values())
    assert sum(n for db, n in clients.items() if db.startswith(prefix)) > len(ours)
    # ... and PostgreSQL sees no connection to the stack's databases but PgBouncer's.
    backends = backend_pids(pooled_stack.infra.postgres_url, prefix)
    assert backends and backends <= {row["remote_pid"] for row in ours}, (backends, ours)


def backend_pids(postgres_url: str, prefix: str) -> set[int]:
    engine = sa.create_engine(f"{postgres_url.rstrip('/')}/postgres", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(sa.text("SELECT pid FROM pg_stat_activity WHERE datname LIKE :p"),
                                    {"p": f"{prefix}\\_%"}))
    finally:
        engine.dispose()

"""The ceiling: pgbench running the order path's writes as one transaction, on the same PostgreSQL.

The tables are created in a scratch database from the services' own SQLAlchemy tables (inventory's
products, drops, drop_stock_shards and reservations; checkout's orders; the shared outbox), so
their columns, constraints and indexes are the real ones. The transaction (order_transaction.sql)
takes one unit from a random stock row of the drop (as many rows as the rehearsal's drop has),
inserts the hold, the order and its outbox event. The real path does more (the buyer and address
allowances, the idempotency key, the order's history, two databases and an HTTP hop), so the ratio
of our placement rate to this one is a conservative measure of what the services cost.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shared.db import create_database_if_missing, drop_database

SCRIPT = Path(__file__).with_name("order_transaction.sql")
STOCK_PER_ROW = 10_000_000


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float | None
    transactions: int
    failed: int
    clients: int
    seconds: float
    stock_rows: int
    command: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prepare(database_url: str, stock_rows: int) -> str:
    """Create the scratch database and its tables; return the id of the drop pgbench sells."""
    from services.checkout.models import Order
    from services.inventory.models import Drop, Product, Reservation, StockShard
    from shared.messaging.outbox import OUTBOX

    create_database_if_missing(database_url)
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    drop_id, product_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        for table in (Product.__table__, Drop.__table__, StockShard.__table__, Reservation.__table__,
                      Order.__table__, OUTBOX):
            table.create(conn, checkfirst=True)
        conn.execute(sa.text(
            "INSERT INTO products (id, sku, name, description, price_amount, currency) "
            "VALUES (:p, 'PGBENCH-1', 'OnePlus One 64GB Sandstone Black', '', 29900, 'CAD')"), {"p": product_id})
        conn.execute(sa.text(
            "INSERT INTO drops (id, product_id, quantity, restocked, stock_shards, opens_at, closes_at, per_buyer_limit, "
            "shipping_countries) VALUES (:d, :p, :q, 0, :rows, now(), now() + interval '1 day', 1, '{}')"),
            {"d": drop_id, "p": product_id, "q": STOCK_PER_ROW * stock_rows, "rows": stock_rows})
        conn.execute(sa.text(
            "INSERT INTO drop_stock_shards (drop_id, shard, available) SELECT :d, s, :n FROM generate_series(0, :last) s"),
            {"d": drop_id, "n": STOCK_PER_ROW, "last": stock_rows - 1})
    engine.dispose()
    return str(drop_id)


def run(database_url: str, stock_rows: int, clients: int = 16, seconds: float = 10, threads: int = 2) -> PgbenchResult:
    """Prepare the scratch database, run pgbench against it, and drop the database again."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise RuntimeError("pgbench is not installed (apt install postgresql-client)")
    url = make_url(database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    argv = [pgbench, "-n", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
            "-c", str(clients), "-j", str(threads), "-T", str(int(seconds)), "-f", str(SCRIPT),
            "-D", "drop=", "-D", f"last_row={stock_rows - 1}", url.database]
    try:
        drop_id = prepare(database_url, stock_rows)
        argv[argv.index("drop=")] = f"drop={drop_id}"
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        drop_database(database_url)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return PgbenchResult(
        tps=tps,
        latency_ms=float(latency.group(1)) if latency else None,
        transactions=int(processed.group(1)) if processed else 0,
        failed=int(failed.group(1)) if failed else 0,
        clients=clients,
        seconds=seconds,
        stock_rows=stock_rows,
        command=" ".join(argv[:1] + ["-n", "-c", str(clients), "-j", str(threads), "-T", str(int(seconds)),
                                     "-f", "benchmarks/rehearsal/order_transaction.sql", "..."]),
    )

"""Holds per second on one drop: the inventory's own code next to pgbench running the same SQL.

    python -m benchmarks.inventory_holds [--seconds 10] [--shards 16] [--processes 4] [--threads 4]
    make bench-inventory

For a drop whose stock sits in 1 row and then in N rows, it measures
  - python:  `reservations.reserve` through a UnitOfWork (SQLAlchemy, psycopg), the code behind
             `POST /reservations` minus HTTP and JSON, from processes x threads clients;
  - pgbench: the same statements in the same transaction shape, with as many clients,
on the same scratch database in the same run, and prints both and their ratio. The database is
created (`fgbench_<random>_inventory`) and dropped by the benchmark. Not a test: it asserts
nothing but that no unit was oversold, and reports the figures.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.inventory.handlers import drops, reservations  # noqa: E402
from services.inventory.commands import AddProduct, ReserveStock, ScheduleDrop  # noqa: E402
from shared import db  # noqa: E402
from services.inventory.bootstrap import MIGRATIONS  # noqa: E402
from shared.migrate import upgrade  # noqa: E402

UNITS = 1_000_000  # more than any run sells, so every attempt is a hold
HOLD_TTL_SECONDS = 600

# What `reservations.reserve` sends for a new order that gets a unit
# (services/inventory/handlers/reservations.py: `reserve`, `_hold`, `take_stock`); the counts
# wrapped around the stock updates only let pgbench branch the way the Python code does.
PGBENCH_SCRIPT = """\
SELECT gen_random_uuid() AS order_id \\gset
BEGIN;
SELECT d.*, p.*, now(), (SELECT coalesce(sum(s.available), 0) FROM drop_stock_shards s WHERE s.drop_id = d.id)
  FROM drops d JOIN products p ON p.id = d.product_id WHERE d.id = ':drop';
INSERT INTO buyer_allowances (drop_id, buyer_id, taken) VALUES (':drop', 'buyer-:order_id', 1)
  ON CONFLICT (drop_id, buyer_id) DO UPDATE SET taken = buyer_allowances.taken + 1
  WHERE buyer_allowances.taken + 1 <= 1 RETURNING taken;
INSERT INTO reservations (order_id, drop_id, buyer_id, quantity, status, hold_expires_at)
  VALUES (':order_id', ':drop', 'buyer-:order_id', 1, 'held', now() + interval '600 seconds');
SAVEPOINT take_stock;
WITH t AS (UPDATE drop_stock_shards SET available = available - 1
  WHERE drop_id = ':drop' AND available >= 1 AND shard = (
    SELECT shard FROM drop_stock_shards WHERE drop_id = ':drop' AND available >= 1
    ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING available) SELECT count(*) AS got FROM t \\gset
\\if :got = 0
ROLLBACK TO SAVEPOINT take_stock;
SAVEPOINT take_stock;
WITH t AS (UPDATE drop_stock_shards SET available = available - 1
  WHERE drop_id = ':drop' AND available >= 1 AND shard = (
    SELECT shard FROM drop_stock_shards WHERE drop_id = ':drop' AND available >= 1
    ORDER BY shard LIMIT 1 FOR UPDATE)
  RETURNING available) SELECT count(*) AS got FROM t \\gset
\\endif
\\if :got = 0
ROLLBACK;
\\else
COMMIT;
\\endif
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def schedule(session_factory, shards: int) -> uuid.UUID:
    now = datetime.now(timezone.utc)
    with db.UnitOfWork(session_factory, "inventory") as uow:
        product = drops.add_product(AddProduct(f"BENCH-{uuid.uuid4().hex[:8]}", "bench", "", 100, "EUR"), uow)
        drop = drops.schedule_drop(
            ScheduleDrop(product.id, UNITS, now - timedelta(minutes=1), now + timedelta(hours=2), 1, stock_shards=shards),
            uow,
        )
        uow.commit()
    return drop.id


# --- the inventory's own code -----------------------------------------------------------------

def _client_process(url: str, drop_id: uuid.UUID, threads: int, ready, start, stop_at, counts, slot: int) -> None:
    session_factory = db.make_session_factory(db.make_engine(url, pool_size=threads))

    def loop() -> None:
        with db.UnitOfWork(session_factory, "inventory") as uow:  # connect before the clock starts
            uow.session.execute(sa.text("SELECT 1"))
        with ready.get_lock():
            ready.value += 1
        start.wait()
        while time.time() < stop_at.value:
            with db.UnitOfWork(session_factory, "inventory") as uow:
                order_id = uuid.uuid4()
                reservations.reserve(ReserveStock(order_id, drop_id, f"buyer-{order_id}", 1), uow, HOLD_TTL_SECONDS)
                uow.commit()
            with counts.get_lock():
                counts[slot] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def run_python(url: str, drop_id: uuid.UUID, seconds: float, processes: int, threads: int, label: str) -> float:
    context = multiprocessing.get_context("spawn")
    ready, start, stop_at = context.Value("i", 0), context.Event(), context.Value("d", 0.0)
    counts = context.Array("q", processes)
    clients = [context.Process(target=_client_process, args=(url, drop_id, threads, ready, start, stop_at, counts, n))
               for n in range(processes)]
    for client in clients:
        client.start()
    while ready.value < processes * threads:
        if not all(client.is_alive() for client in clients):
            raise RuntimeError("a client process died while starting")
        time.sleep(0.05)
    began = time.time()
    stop_at.value = began + seconds
    start.set()
    last = 0
    while any(client.is_alive() for client in clients):
        time.sleep(1)
        total = sum(counts[:])
        elapsed = time.time() - began
        if elapsed <= seconds + 1:
            log(f"  {label}: {elapsed:5.1f} s  {total:7d} holds  ({total - last} in the last second)")
        last = total
    for client in clients:
        client.join()
        if client.exitcode:
            raise RuntimeError(f"a client process failed ({client.exitcode})")
    return sum(counts[:]) / seconds


# --- pgbench ----------------------------------------------------------------------------------

def find_pgbench() -> str:
    for candidate in (shutil.which("pgbench"), "/usr/lib/postgresql/15/bin/pgbench"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("pgbench not found: install postgresql-client (or postgresql-contrib) 15")


def run_pgbench(url: str, drop_id: uuid.UUID, seconds: float, clients: int, label: str) -> tuple[float, float]:
    """pgbench's transactions per second, and its holds per second (counted in the database)."""
    target = make_url(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    env = dict(os.environ)
    if target.password:
        env["PGPASSWORD"] = target.password
    argv = [find_pgbench(), "-n", "-M", "simple", "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(int(seconds)),
            "-P", "1", "-f", script.name, "-D", f"drop={drop_id}",
            "-h", target.host or "127.0.0.1", "-p", str(target.port or 5432), "-U", target.username or "postgres",
            target.database]
    try:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        output = []
        for line in process.stderr:  # -P progress lines, shown as they come
            if line.startswith("progress:"):
                log(f"  {label}: {line.strip()}")
            else:
                output.append(line)
        stdout = process.stdout.read()
        process.wait()
    finally:
        os.unlink(script.name)
    if process.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{''.join(output)}\n{stdout}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", stdout)
    if not match:
        raise RuntimeError(f"no tps in pgbench output:\n{stdout}")
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    if failed and int(failed.group(1)):
        log(f"  {label}: {failed.group(1)} failed transactions")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            holds = conn.execute(sa.text("SELECT count(*) FROM reservations WHERE drop_id = :d"), {"d": drop_id}).scalar()
    finally:
        engine.dispose()
    return float(match.group(1)), holds / seconds


# --- the run ----------------------------------------------------------------------------------

def check_not_oversold(engine: sa.Engine, drop_id: uuid.UUID) -> tuple[int, int]:
    with engine.connect() as conn:
        available, negative = conn.execute(sa.text(
            "SELECT sum(available), count(*) FILTER (WHERE available < 0) FROM drop_stock_shards WHERE drop_id = :d"),
            {"d": drop_id}).one()
        held = conn.execute(sa.text(
            "SELECT coalesce(sum(quantity), 0) FROM reservations WHERE drop_id = :d AND status = 'held'"), {"d": drop_id}).scalar()
    assert negative == 0 and available + held == UNITS, (available, held)
    return held, available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--shards", type=int, default=16, help="stock rows of the sharded drop (1-64)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="per process; clients = processes x threads")
    parser.add_argument("--postgres-url", default=os.environ.get("POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"))
    args = parser.parse_args()
    clients = args.processes * args.threads

    url = f"{args.postgres_url.rstrip('/')}/fgbench_{uuid.uuid4().hex[:8]}_inventory"
    log(f"scratch database {make_url(url).database}; {clients} clients ({args.processes} processes x "
        f"{args.threads} threads) and pgbench -c {clients}; {args.seconds:g} s per phase")
    db.create_database_if_missing(url)
    engine = db.make_engine(url, pool_size=1)
    results = []
    try:
        upgrade(MIGRATIONS, url)
        session_factory = db.make_session_factory(engine)
        for shards in (1, args.shards):
            rows = f"{shards} row{'s' if shards > 1 else ''}"
            drop_id = schedule(session_factory, shards)
            python = run_python(url, drop_id, args.seconds, args.processes, args.threads, f"python  {rows}")
            check_not_oversold(engine, drop_id)
            drop_id = schedule(session_factory, shards)
            tps, pgbench = run_pgbench(url, drop_id, args.seconds, clients, f"pgbench {rows}")
            check_not_oversold(engine, drop_id)
            results.append((rows, python, pgbench, tps))
    finally:
        engine.dispose()
        db.drop_database(url)

    print()
    print(f"holds per second, one drop, {clients} concurrent clients, {args.seconds:g} s each, cpus: {os.cpu_count()}")
    print(f"{'stock':<10} {'inventory code':>15} {'pgbench same SQL':>17} {'ratio':>7} {'pgbench tx/s':>13}")
    for rows, python, pgbench, tps in results:
        print(f"{rows:<10} {python:>15.0f} {pgbench:>17.0f} {python / pgbench:>7.2f} {tps:>13.0f}")
    print("oversold: 0 (available + held = stock on every drop; no shard below zero)")


if __name__ == "__main__":
    main()

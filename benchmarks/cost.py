"""What an order costs, placed and then paid: throughput, latency and the machine's CPU per order,
split per process.

    make bench                                   # installs what it needs (requirements-bench.txt)
    python -m benchmarks.cost [--seconds 20] [--connections 16,64] [--buyers 200] [--out DIR]

One run:
1. starts an isolated stack (own databases, vhost and ports, as the rehearsal does; relays in one
   process, as `make run` runs them), signs the buyers in and opens a drop with more stock than
   any run sells, so every order is a real hold;
2. for each connection count, places orders with a light closed-loop generator
   (`benchmarks/loadgen.py`) for `--seconds`, then lets the pipeline drain (every outbox
   published, every queue empty, every `order.placed` email sent), sampling the CPU of every
   process on the machine from the first order to the drained pipeline;
3. pays for the newest `--pay` orders (default 1,000), 16 buyers at a time approving at the
   payment simulator, which calls checkout's webhook twice (approval, capture) before it answers,
   and lets the pipeline drain again (every order confirmed, sold at inventory and its
   confirmation emailed), sampling the CPU the same way: the cost of a paid order on top of a
   placed one;
4. reads the drop as a crowd of drop pages does (`GET /drops/{id}`, no token, 64 connections,
   `--page-seconds`, default 5): reads per second and inventory's CPU per read;
5. runs pgbench on the same order transaction on the same PostgreSQL (the ceiling), and the
   naive one-process checkout (`benchmarks/rehearsal/naive_checkout.py`) under the same generator
   with an instant SMTP server and with one taking 1 s a message;
6. prints the figures and their ratios, and writes `bench.json` and `bench.md` to
   var/bench/<timestamp>/.

Throughout steps 1-4 it samples the stack's memory every 2 s (`benchmarks/memory.py`: the PSS of
every stack process, against DESIGN.md's 1 GiB): at rest, each stage's peak and its end, split
per process.

CPU per placed order is the machine's busy CPU time (all cores, from /proc/stat) over the phase,
divided by the orders placed; the split names each stack process (a gunicorn master with its
workers), PostgreSQL (every postgres process), RabbitMQ (the Erlang VM), the load generator and
the benchmark itself, and `other` for the rest of the machine. Not a test: figures, no verdict
except that the drop was not oversold.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

from benchmarks.cpu import CpuMeter, stack_roots
from benchmarks import memory
from benchmarks.rehearsal import buyers as crowd_signup
from benchmarks.rehearsal import naive_checkout, pgbench
from benchmarks.rehearsal import rig as rigs
from benchmarks.rehearsal.cli import machine, say
from benchmarks.rehearsal.report import request_costs
from benchmarks.yardstick import speed_yardstick
from devtools.client import Floodgate
from devtools.stack import CONSUMERS, RELAYS, ROOT, SERVICES
from shared.db import create_database_if_missing
from shared.messaging import connection as amqp
from shared.messaging.topology import waiting_queues

UNITS = 1_000_000  # more than any run sells: every order is a hold, none a sell-out


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 1)


# --- the stack ----------------------------------------------------------------------------------

class Pipeline:
    """Whether everything an order set in motion has happened: outboxes published, queues empty,
    every `order.placed` email sent."""

    def __init__(self, rig):
        self.rig = rig
        self.engines = {s: sa.create_engine(rig.stack.infra.database_url(s), pool_size=1, max_overflow=0)
                        for s in SERVICES}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()

    def _scalar(self, service: str, sql: str) -> int:
        with self.engines[service].connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar() or 0)

    def placed_emails(self) -> int:
        return self._scalar("notifications", "SELECT count(*) FROM deliveries WHERE status = 'sent' "
                                             "AND event_type = 'order.placed'")

    def sending_window(self, newest: int) -> tuple[float, float]:
        """When the first and the last of the `newest` order.placed emails were sent (epoch s)."""
        with self.engines["notifications"].connect() as conn:
            return tuple(float(value) for value in conn.execute(sa.text(
                "SELECT extract(epoch FROM min(sent_at)), extract(epoch FROM max(sent_at)) FROM ("
                " SELECT sent_at FROM deliveries WHERE status = 'sent' AND event_type = 'order.placed'"
                " ORDER BY sent_at DESC LIMIT :n) newest"), {"n": newest}).one())

    def orders(self) -> int:
        return self._scalar("checkout", "SELECT count(*) FROM orders")

    def pending(self) -> int:
        outboxes = sum(self._scalar(s, "SELECT count(*) FROM outbox WHERE published_at IS NULL") for s in RELAYS)
        conn = amqp.connect(self.rig.amqp_url, "bench-pipeline", socket_timeout=2)
        try:
            channel = conn.channel()
            queued = sum(channel.queue_declare(queue, passive=True).method.message_count
                         for s in CONSUMERS for queue in waiting_queues(s))
        finally:
            conn.close()
        return outboxes + queued

    def wait_drained(self, timeout: float = 300, until=None) -> float:
        """Seconds until drained (twice in a row, 0.25 s apart) and, when given, `until()` true."""
        started = time.monotonic()
        calm = 0
        while calm < 2:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the pipeline did not drain in {timeout}s")
            orders = self.orders()
            done = self.pending() == 0 and self.placed_emails() >= orders and (until is None or until())
            calm = calm + 1 if done else 0
            time.sleep(0.25)
        return time.monotonic() - started

    def approval_links(self, most: int) -> list[str]:
        """The payment links of the newest `most` orders awaiting payment."""
        with self.engines["checkout"].connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT approval_url FROM orders WHERE status = 'awaiting_payment' ORDER BY created_at DESC LIMIT :n"),
                {"n": most}).scalars())

    def paid_counts(self) -> dict:
        """What paying for orders sets in motion, counted: orders confirmed (checkout), units sold
        (inventory), confirmation emails sent (notifications)."""
        return {
            "confirmed": self._scalar("checkout", "SELECT count(*) FROM orders WHERE status = 'confirmed'"),
            "sold": self._scalar("inventory", "SELECT coalesce(sum(quantity), 0) FROM reservations WHERE status = 'sold'"),
            "emailed": self._scalar("notifications", "SELECT count(*) FROM deliveries WHERE status = 'sent' "
                                                     "AND event_type = 'order.confirmed'"),
        }


# --- load ---------------------------------------------------------------------------------------

def generate(url: str, tokens: list[str], drop_id: str, connections: int, seconds: float, workdir: Path,
             first_number: int = 100, stop_after_orders: int = 0, **more) -> tuple[dict, subprocess.Popen]:
    """Start the load generator (`more`: other settings of benchmarks/loadgen.py); its
    configuration (with the file it writes) and its process."""
    config = {"url": url, "tokens": tokens, "drop_id": drop_id, "connections": connections, "seconds": seconds,
              "first_number": first_number, "stop_after_orders": stop_after_orders,
              "out": str(workdir / f"load-{uuid.uuid4().hex[:6]}.json"), **more}
    config_path = workdir / f"loadgen-{uuid.uuid4().hex[:6]}.json"
    config_path.write_text(json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen", str(config_path)], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return config, process


def summarise(result: dict, seconds: float) -> dict:
    answers = {int(k): v for k, v in result["answers"].items()}
    created = answers.get(201, [])
    every = [ms for status, values in answers.items() if status > 0 for ms in values]
    return {
        "orders": len(created),
        "orders_per_second": round(len(created) / seconds, 1),
        "answers": {str(k): len(v) for k, v in sorted(answers.items())},
        "p50_201_ms": percentile(created, 50), "p99_201_ms": percentile(created, 99),
        "p50_all_ms": percentile(every, 50), "p99_all_ms": percentile(every, 99),
        "loadgen_cpu_seconds": round(result.get("cpu_seconds", 0.0), 2),
    }


# What the stack and its servers did not spend: the generator, this benchmark, the rest of the machine.
NOT_THE_STACK = ("load generator", "benchmark (this process)", "other")


def wait_for_load(process: subprocess.Popen, progress) -> float:
    """Wait for the load generator, calling `progress(seconds so far)` every second; its seconds."""
    started = time.monotonic()
    while process.poll() is None:
        time.sleep(1)
        progress(time.monotonic() - started)
    if process.returncode != 0:
        raise RuntimeError("the load generator failed")
    return time.monotonic() - started


def cpu_figures(meter: CpuMeter, cpu: dict[str, float], count: int, not_the_stack=NOT_THE_STACK) -> dict:
    """The measured window's CPU per unit of work (`count` of them): per process group, the whole
    machine's, and the stack's (every group but `not_the_stack`)."""
    count = max(1, count)
    return {
        "window_seconds": round(meter.seconds, 1),
        "cpu_ms_per_order": {name: round(value * 1000 / count, 2) for name, value in
                             sorted(cpu.items(), key=lambda item: -item[1])},
        "machine_cpu_ms_per_order": round(meter.machine_seconds * 1000 / count, 2),
        "stack_cpu_ms_per_order": round(sum(v for k, v in cpu.items() if k not in not_the_stack) * 1000 / count, 2),
    }


def phase(rig, pipeline: Pipeline, tokens: list[str], drop_id: str, connections: int, seconds: float,
          workdir: Path, first_number: int) -> dict:
    """Place orders at `connections` for `seconds`, drain, and account for every CPU second."""
    meter = CpuMeter(stack_roots(rig.stack))
    meter.start()
    since = time.time()
    config, process = generate(f"{rig.stack.url('checkout')}/orders", tokens, drop_id, connections, seconds,
                               workdir, first_number)
    meter.roots[process.pid] = "load generator"
    wait_for_load(process, lambda elapsed: say(
        f"\r  {connections:>3} connections: {elapsed:5.1f}s, orders so far {pipeline.orders():>7} "))
    say("  draining ...")
    drain_seconds = pipeline.wait_drained()
    cpu = meter.stop()
    result = json.loads(Path(config["out"]).read_text())
    figures = summarise(result, seconds)
    calls = hold_calls(rig, since, time.time())
    figures.update(connections=connections, seconds=seconds, drain_seconds=round(drain_seconds, 1),
                   inventory_hold_calls=calls, **cpu_figures(meter, cpu, figures["orders"]))
    figures.update(speed_yardstick(figures))
    say(f"\r  {connections:>3} connections: {figures['orders_per_second']:>7.1f} orders/s, p99 (201) "
        f"{figures['p99_201_ms']} ms, {figures['machine_cpu_ms_per_order']} ms CPU/order (machine), "
        f"drained in {figures['drain_seconds']} s\n")
    return figures


def hold_calls(rig, since: float, until: float) -> int:
    """Checkout's calls to inventory for holds between `since` and `until` (inventory's request
    log): with orders placed, how many orders shared each call."""
    holds = ("POST /reservations/batch", "POST /reservations")
    return sum(row["count"] for row in request_costs(rig.stack.var_dir / "logs", since, until)
               if row["service"] == "inventory-api" and row["request"] in holds)


def payments(rig, pipeline: Pipeline, most: int, connections: int, workdir: Path) -> dict:
    """Pay for the newest `most` orders awaiting payment: each buyer approves at the payment
    simulator, which calls checkout's webhook twice (the approval, then the capture) before it
    answers; wait until every one is confirmed, sold at inventory and its confirmation emailed,
    and account for every CPU second, as a placement phase does."""
    links = pipeline.approval_links(most)
    before = pipeline.paid_counts()
    target = urlsplit(links[0])
    paths = [f"{urlsplit(link).path}/approve?{urlsplit(link).query}" for link in links]
    meter = CpuMeter(stack_roots(rig.stack))
    meter.start()
    config, process = generate(f"{target.scheme}://{target.netloc}/", [], "", connections, 600, workdir,
                               request="post", paths=paths, each_token_once=True)
    meter.roots[process.pid] = "load generator"
    paying_seconds = wait_for_load(process, lambda elapsed: say(
        f"\r  payments: {elapsed:5.1f}s, confirmed so far "
        f"{pipeline.paid_counts()['confirmed'] - before['confirmed']:>6} of {len(links)} "))
    result = json.loads(Path(config["out"]).read_text())
    approved = len(result["answers"].get("200", []))
    say("  draining ...")
    wanted = {name: count + approved for name, count in before.items()}
    drain_seconds = pipeline.wait_drained(until=lambda: pipeline.paid_counts() == wanted)
    cpu = meter.stop()
    latencies = result["answers"].get("200", [])
    figures = {
        "orders_paid": approved, "connections": connections, "answers": {k: len(v) for k, v in result["answers"].items()},
        "paid_per_second": round(approved / paying_seconds, 1),
        "p50_approve_ms": percentile(latencies, 50), "p99_approve_ms": percentile(latencies, 99),
        "drain_seconds": round(drain_seconds, 1),
        # the payment simulator stands in for the provider, which is not on the stack's machines
        **cpu_figures(meter, cpu, approved, not_the_stack=(*NOT_THE_STACK, "payments")),
    }
    say(f"\r  payments: {approved} orders paid ({figures['paid_per_second']}/s), confirmed, sold and emailed; "
        f"{figures['stack_cpu_ms_per_order']} ms CPU per paid order (the stack), drained in {figures['drain_seconds']} s\n")
    return figures


def email_backlog(rig, pipeline: Pipeline, tokens: list[str], drop_id: str, orders: int, workdir: Path,
                  first_number: int) -> dict:
    """With the notifications consumer stopped, place `orders` orders (their emails wait in
    RabbitMQ), then start it and time the backlog: emails per second for one consumer and the
    CPU each email costs it and the SMTP server."""
    stack = rig.stack
    stack.stop("notifications-consumer")
    already = pipeline.placed_emails()
    config, process = generate(f"{stack.url('checkout')}/orders", tokens, drop_id, 16, 300, workdir, first_number,
                               stop_after_orders=orders)
    while process.poll() is None:
        time.sleep(1)
        say(f"\r  email backlog: {pipeline.orders():>7} orders placed with the email consumer stopped ")
    placed = len(json.loads(Path(config["out"]).read_text())["answers"].get("201", []))
    while pipeline.pending() > placed:  # every order.placed event in the consumer's queue
        time.sleep(0.25)
    say("\n  email backlog: starting the email consumer ...")
    started = time.monotonic()
    process = stack.start("notifications-consumer")
    meter = CpuMeter({process.pid: "notifications-consumer", stack.processes["smtp"].pid: "smtp"})
    meter.start()
    target = already + placed
    while (sent := pipeline.placed_emails()) < target:
        if time.monotonic() - started > 600:
            raise TimeoutError(f"{target - sent} emails still unsent after 600 s")
        time.sleep(0.1)
    seconds = time.monotonic() - started
    cpu = meter.stop()
    first, last = pipeline.sending_window(placed)
    figures = {
        "emails": placed,
        "seconds_to_all_sent": round(seconds, 1),
        "seconds_to_first_sent": round(seconds - (last - first), 1),
        # the consumer's rate once running (its start, about a second of imports, not counted)
        "emails_per_second": round((placed - 1) / max(last - first, 1e-3), 1),
        "consumer_cpu_ms_per_email": round(cpu.get("notifications-consumer", 0) * 1000 / placed, 2),
        "smtp_server_cpu_ms_per_email": round(cpu.get("smtp", 0) * 1000 / placed, 2),
    }
    say(f"\r  email backlog: {placed} emails sent {seconds:.1f} s after the consumer started "
        f"({figures['emails_per_second']}/s, {figures['consumer_cpu_ms_per_email']} ms CPU each)\n")
    return figures


def page_reads(rig, drop_id: str, connections: int, seconds: float, workdir: Path) -> dict:
    """Every drop page reads the drop (`GET /drops/{id}`, no token) when it loads and every 10 s
    after: read it as a crowd of pages would for `seconds`, and account for every CPU second."""
    meter = CpuMeter(stack_roots(rig.stack))
    meter.start()
    config, process = generate(rig.stack.url("inventory"), [], drop_id, connections, seconds, workdir,
                               request="get", paths=[f"/drops/{drop_id}"])
    meter.roots[process.pid] = "load generator"
    wait_for_load(process, lambda elapsed: say(f"\r  drop page reads: {elapsed:5.1f}s "))
    cpu = meter.stop()
    answers = json.loads(Path(config["out"]).read_text())["answers"]
    read = answers.get("200", [])
    count = max(1, len(read))
    figures = {
        "connections": connections, "seconds": seconds, "answers": {k: len(v) for k, v in answers.items()},
        "reads_per_second": round(len(read) / seconds, 1),
        "p50_ms": percentile(read, 50), "p99_ms": percentile(read, 99),
        "inventory_cpu_ms_per_read": round(cpu.get("inventory-api", 0) * 1000 / count, 2),
        "postgresql_cpu_ms_per_read": round(cpu.get("PostgreSQL", 0) * 1000 / count, 3),
        "machine_cpu_ms_per_read": round(meter.machine_seconds * 1000 / count, 2),
    }
    say(f"\r  drop page reads: {figures['reads_per_second']}/s, p99 {figures['p99_ms']} ms, "
        f"{figures['inventory_cpu_ms_per_read']} ms of inventory's CPU each\n")
    return figures


def naive(rig, tokens: list[str], connections: int, seconds: float, smtp_seconds: float, workdir: Path) -> dict:
    """The naive one-process checkout under the same generator, its SMTP server taking `smtp_seconds`."""
    database = rig.scratch_database(f"naive{int(smtp_seconds * 1000)}")
    create_database_if_missing(database)
    drop_id = str(uuid.uuid4())
    naive_checkout.prepare(database, drop_id, UNITS)
    with naive_checkout.running(database, smtp_seconds, workdir / "naive.log", workdir / "naive-mail") as host:
        config, process = generate(f"{host}/orders", tokens, drop_id, connections, seconds, workdir)
        process.wait()
        figures = summarise(json.loads(Path(config["out"]).read_text()), seconds)
    figures.update(connections=connections, seconds=seconds, smtp_seconds_per_message=smtp_seconds)
    say(f"  naive checkout, SMTP {smtp_seconds:g} s/message: {figures['orders_per_second']} orders/s, "
        f"p99 (201) {figures['p99_201_ms']} ms\n")
    return figures


# --- report -------------------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def markdown(figures: dict) -> str:
    lines = [f"# Cost per order — {figures['run']['started']}", "",
             f"`{figures['run']['command']}` on {figures['run']['machine']}", ""]
    for p in figures["phases"]:
        lines += [f"## {p['connections']} connections, {p['seconds']:g} s", "",
                  "| figure | value |", "|---|---|",
                  f"| orders placed / s | **{p['orders_per_second']}** ({p['orders']} orders) |",
                  f"| answers | {', '.join(f'{k}: {v}' for k, v in p['answers'].items())} |",
                  f"| `POST /orders` p50 / p99, 201s | {p['p50_201_ms']} / {p['p99_201_ms']} ms |",
                  f"| `POST /orders` p50 / p99, all answers | {p['p50_all_ms']} / {p['p99_all_ms']} ms |",
                  f"| pipeline drained after the load | {p['drain_seconds']} s |",
                  f"| calls to inventory for holds | {p['inventory_hold_calls']} "
                  f"({p['orders'] / max(1, p['inventory_hold_calls']):.1f} orders placed a call) |",
                  f"| **machine CPU per placed order** | **{p['machine_cpu_ms_per_order']} ms** "
                  f"(stack and its servers: {p['stack_cpu_ms_per_order']} ms) |",
                  f"| this machine's speed: the SMTP server's CPU per message (same code every run) "
                  f"| {p.get('smtp_cpu_ms_per_message')} ms; the stack's CPU per order / it: "
                  f"{p.get('stack_cpu_per_yardstick')} |", "",
                  "| process | CPU ms per placed order |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in p["cpu_ms_per_order"].items()]
        lines.append("")
    pay = figures.get("payments")
    if pay:
        placed = figures["phases"][0]
        lines += [f"## Paying for {pay['orders_paid']} orders, {pay['connections']} buyers at a time", "",
                  "Each buyer approves at the payment simulator, which calls checkout's webhook twice (the "
                  "approval, then the capture) before it answers; drained when every order is confirmed, "
                  "sold at inventory and its confirmation emailed.", "",
                  "| figure | value |", "|---|---|",
                  f"| orders paid / s | **{pay['paid_per_second']}** |",
                  f"| answers | {', '.join(f'{k}: {v}' for k, v in pay['answers'].items())} |",
                  f"| approval p50 / p99 (both webhooks answered) | {pay['p50_approve_ms']} / {pay['p99_approve_ms']} ms |",
                  f"| pipeline drained after the payments | {pay['drain_seconds']} s |",
                  f"| **machine CPU per paid order** | **{pay['machine_cpu_ms_per_order']} ms** "
                  f"(the stack and its servers, without the payment simulator: {pay['stack_cpu_ms_per_order']} ms) |",
                  f"| an order placed ({placed['connections']} connections) and paid, the stack | "
                  f"{round(placed['stack_cpu_ms_per_order'] + pay['stack_cpu_ms_per_order'], 2)} ms |", "",
                  "| process | CPU ms per paid order |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in pay["cpu_ms_per_order"].items()]
        lines.append("")
    b = figures.get("email_backlog")
    if b:
        lines += ["## Email backlog: the consumer stopped while orders were placed, then started", "",
                  "| figure | value |", "|---|---|",
                  f"| emails waiting | {b['emails']} |",
                  f"| all sent after the consumer started | {b['seconds_to_all_sent']} s "
                  f"(the first after {b['seconds_to_first_sent']} s) |",
                  f"| **emails per second, one consumer** | **{b['emails_per_second']}** |",
                  f"| CPU per email: consumer / SMTP server | {b['consumer_cpu_ms_per_email']} / "
                  f"{b['smtp_server_cpu_ms_per_email']} ms |", ""]
    reads = figures.get("page_reads")
    if reads:
        lines += [f"## The drop page's read (`GET /drops/{{id}}`), {reads['connections']} connections, "
                  f"{reads['seconds']:g} s", "",
                  "| figure | value |", "|---|---|",
                  f"| **reads / s** | **{reads['reads_per_second']}** |",
                  f"| answers | {', '.join(f'{k}: {v}' for k, v in reads['answers'].items())} |",
                  f"| p50 / p99 | {reads['p50_ms']} / {reads['p99_ms']} ms |",
                  f"| CPU per read: inventory API / PostgreSQL / the machine | {reads['inventory_cpu_ms_per_read']} / "
                  f"{reads['postgresql_cpu_ms_per_read']} / {reads['machine_cpu_ms_per_read']} ms |", ""]
    lines += memory.markdown(figures.get("memory") or {})
    r = figures["ratios"]
    pg, n0, n1 = figures.get("pgbench"), figures.get("naive_instant_smtp"), figures.get("naive_1s_smtp")
    lines += ["## The ceiling and the peer, same run", "", "| figure | value |", "|---|---|"]
    if pg:
        lines.append(f"| pgbench, the same order transaction, {pg['clients']} clients | {pg['tps']:,.0f} tx/s |")
    if n0:
        lines.append(f"| naive checkout, instant SMTP, {n0['connections']} connections | {n0['orders_per_second']} orders/s "
                     f"(p99 {n0['p99_201_ms']} ms) |")
    if n1:
        lines.append(f"| naive checkout, SMTP 1 s/message, {n1['connections']} connections | {n1['orders_per_second']} "
                     f"orders/s (p99 {n1['p99_201_ms']} ms) |")
    lines += ["", "| ratio (Floodgate at the best phase) | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in r.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="load per phase (default 20)")
    parser.add_argument("--connections", default="16,64", help="one phase per count (default 16,64)")
    parser.add_argument("--buyers", type=int, default=200, help="signed-in buyers the orders rotate over (default 200)")
    parser.add_argument("--pay", type=int, default=1000,
                        help="orders paid for after the placement phases, 16 at a time; 0 skips (default 1000)")
    parser.add_argument("--email-backlog", type=int, default=1000,
                        help="orders whose emails wait for a stopped consumer, then drain; 0 skips (default 1000)")
    parser.add_argument("--page-seconds", type=float, default=5,
                        help="the drop page's read (GET /drops/{id}) at 64 connections; 0 skips (default 5)")
    parser.add_argument("--pgbench-seconds", type=float, default=10, help="0 skips pgbench (default 10)")
    parser.add_argument("--naive-seconds", type=float, default=10, help="0 skips the naive checkout (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default var/bench/<timestamp>)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every process of the stack, e.g. GUNICORN_THREADS=4")
    args = parser.parse_args(argv)
    stack_env = dict(item.split("=", 1) for item in args.env)
    started = datetime.now(timezone.utc)
    out = args.out or ROOT / "var" / "bench" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="load-", dir=out))
    command = "python -m benchmarks.cost " + " ".join(argv if argv is not None else sys.argv[1:])
    say(f"Cost per order: report folder {out}\n  starting an isolated stack ...\n")
    rig = rigs.isolated(out / "stack", env=stack_env, combine_relays=True)
    pipeline = Pipeline(rig)
    memory_meter = memory.MemoryMeter(lambda: stack_roots(rig.stack))
    try:
        memory_meter.begin("at rest, started")
        memory_meter.start()
        floodgate = Floodgate(rig.stack)
        admin = floodgate.create_admin(f"admin-{uuid.uuid4().hex[:6]}@bench.example", "bench admin, dev only")
        memory_meter.begin(f"signing in {args.buyers} buyers")
        say(f"  signing in {args.buyers} buyers ...\n")
        tokens = [token for _, token in crowd_signup.sign_up(rig.stack.url("accounts"), args.buyers, progress=say)]
        drop = floodgate.create_drop(admin, quantity=UNITS, opens_in=-1, lasts=3600, per_buyer_limit=UNITS)
        say(f"  drop {drop['id']}: {UNITS:,} units over {drop.get('stock_shards')} stock rows\n")
        pipeline.wait_drained()
        phases = []
        for index, connections in enumerate(int(c) for c in args.connections.split(",")):
            memory_meter.begin(f"placing, {connections} connections")
            phases.append(phase(rig, pipeline, tokens, drop["id"], connections, args.seconds, workdir,
                                first_number=100 + index * 10_000_000))
        paid = None
        if args.pay > 0:
            memory_meter.begin("paying")
            paid = payments(rig, pipeline, args.pay, 16, workdir)
        backlog = None
        if args.email_backlog > 0:
            memory_meter.begin("the email backlog")
            backlog = email_backlog(rig, pipeline, tokens, drop["id"], args.email_backlog, workdir,
                                    first_number=100 + len(phases) * 10_000_000)
        reads = None
        if args.page_seconds > 0:
            memory_meter.begin("drop page reads")
            reads = page_reads(rig, drop["id"], 64, args.page_seconds, workdir)
        memory_meter.begin("at rest, after the load")
        time.sleep(memory_meter.interval)  # a sample of the stack idle once more
        memory_use = memory_meter.stop()
        say(f"  the stack's memory: {memory_use['peak_mib']} MiB at its peak, during {memory_use['peak_during']} "
            f"(budget {memory.BUDGET_MIB} MiB)\n")
        remaining = floodgate.get_drop(drop["id"])["remaining"]
        sold = pipeline.orders()
        if remaining != UNITS - pipeline.orders():
            raise SystemExit(f"!!! stock does not add up: {remaining} left of {UNITS} after {pipeline.orders()} orders")
        pg = None
        if args.pgbench_seconds > 0:
            say(f"  pgbench, the same transaction, 16 clients, {args.pgbench_seconds:g}s ...\n")
            pg = pgbench.run(rig.scratch_database("pgbench"), stock_rows=int(drop.get("stock_shards") or 1),
                             clients=16, seconds=args.pgbench_seconds).as_dict()
            say(f"  pgbench: {pg['tps']:,.0f} tx/s\n")
        naive_instant = naive_slow = None
        if args.naive_seconds > 0:
            naive_instant = naive(rig, tokens, 64, args.naive_seconds, 0, workdir)
            naive_slow = naive(rig, tokens, 64, args.naive_seconds, 1, workdir)
        best = max(phases, key=lambda p: p["orders_per_second"])
        figures = {
            "run": {"started": started.isoformat(), "command": command, "machine": machine(), "sold": sold,
                    "env": stack_env},
            "phases": phases, "payments": paid, "email_backlog": backlog, "page_reads": reads, "memory": memory_use,
            "pgbench": pg,
            "naive_instant_smtp": naive_instant, "naive_1s_smtp": naive_slow,
            "ratios": {
                "placement / pgbench": ratio(best["orders_per_second"], pg and pg["tps"]),
                "placement / naive, instant SMTP": ratio(best["orders_per_second"],
                                                         naive_instant and naive_instant["orders_per_second"]),
                "placement / naive, SMTP 1 s": ratio(best["orders_per_second"],
                                                     naive_slow and naive_slow["orders_per_second"]),
            },
        }
        (out / "bench.json").write_text(json.dumps(figures, indent=2))
        (out / "bench.md").write_text(markdown(figures))
        say("\n" + markdown(figures) + f"\nReport: {out / 'bench.md'}\n")
    finally:
        if memory_meter.is_alive():
            memory_meter.stop()
        pipeline.close()
        rig.teardown()


if __name__ == "__main__":
    main()

"""Drop rehearsal: one command runs a realistic drop against the stack, breaks things on purpose,
and reports the figures.

    python -m benchmarks.rehearsal [--units 300] [--buyers 1000]
        [--faults notifications,smtp,checkout-worker,accounts] [--fault-at checkout-worker=0.5]
        [--line | --no-line] [--admission-factor 1.0] [--admission-rate 200]
        [--use-running] [--naive-seconds 15] [--pgbench-seconds 10] [--out DIR]

Steps: bring up an isolated stack (own databases, vhost and ports; or --use-running), register
and sign in the buyers (or mint their tokens, above --mint-above buyers), create the drop and put
a line on it (--no-line: none), let the crowd join the line before the opening with Locust (or,
without a line, release it at the opening) while the faults hit on schedule, lift the faults,
wait for every confirmed order to be sold and emailed, check the books and the line, run pgbench
and the naive checkout for comparison, and write report.json, report.md and PNG plots to
var/rehearsal/<timestamp>/. The exit status is 1 when a must-hold figure fails (a 5xx but a 503
with Retry-After, an oversold unit, a confirmed order without its sale or email, a duplicate; with
a line: an admission out of the seed's order, more passes in play than remaining units x factor,
a waiting buyer not told sold out within 5 s).

The `broker` fault (restart RabbitMQ) and the `database` fault (restart PostgreSQL mid-rush) are not
in the defaults: they disturb every other user of the local broker or database cluster. Add them
explicitly (--faults ...,broker,database), on a machine whose servers are yours.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import psutil

from benchmarks import memory
from benchmarks.cpu import CpuMeter, stack_roots
from benchmarks.rehearsal import buyers as crowd_signup
from benchmarks.rehearsal import (checks, faults as faults_mod, naive_checkout, observe, pgbench, report, rig as rigs,
                                  waiting_room)
from benchmarks.rehearsal.events import EventReader
from benchmarks.rehearsal.sampler import Sampler
from devtools.client import Floodgate
from devtools.otlp_collector import Collector
from devtools.stack import ROOT
from shared.db import create_database_if_missing

ADMIN_PASSWORD = "rehearsal admin, dev only"  # the isolated stack's admin: development only
JOINS_PER_SECOND = 300  # the default join window spreads the crowd's joins at about this rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rehearsal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=300, help="units in the drop (default 300)")
    parser.add_argument("--buyers", type=int, default=1000, help="buyers in the crowd (default 1000)")
    parser.add_argument("--faults", default=",".join(faults_mod.DEFAULT),
                        help=f"comma-separated, from {', '.join(faults_mod.ALL)}; 'none' for none "
                             f"(default: {','.join(faults_mod.DEFAULT)}; broker and database are opt-in)")
    parser.add_argument("--fault-at", action="append", default=[], metavar="FAULT=SECONDS",
                        help=f"when a fault starts, from the opening (defaults: {faults_mod.DEFAULT_AT})")
    parser.add_argument("--smtp-outlasts", type=float, default=3.0,
                        help="seconds the SMTP server stays down after notifications is back (default 3)")
    parser.add_argument("--use-running", action="store_true", help="use the `make run` stack instead of starting one")
    parser.add_argument("--lead", type=float, default=None,
                        help="seconds from creating the drop to its opening (default 6; with a line, 8 + --join-seconds)")
    parser.add_argument("--line", action=argparse.BooleanOptionalAction, default=True,
                        help="put a line (waiting room) on the drop: the crowd joins it before the opening, "
                             "polls its tickets and orders with the pass it gets (default); --no-line: the whole "
                             "crowd orders at the opening, as before the waiting room")
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                        help="export every process's spans to a collector in this process and put the slowest "
                             "order's trace in the report (default; it costs CPU: --no-trace for cost runs)")
    parser.add_argument("--control-room", action=argparse.BooleanOptionalAction, default=True,
                        help="watch the drop's control room in headless Chromium and keep a screenshot of it at "
                             "the sell-out (default)")
    parser.add_argument("--admission-factor", type=float, default=1.0,
                        help="the line's admission_factor: passes in play at most remaining units x this (default 1.0)")
    parser.add_argument("--admission-rate", type=float, default=200.0,
                        help="the line's admission_rate, buyers admitted per second at most (default 200)")
    parser.add_argument("--pass-ttl-seconds", type=int, default=120, help="the line's pass_ttl_seconds (default 120)")
    parser.add_argument("--admitters", type=int, default=1,
                        help="admitter processes, sharing the line and its pace (default 1; prod runs 2)")
    parser.add_argument("--join-seconds", type=float, default=None,
                        help=f"the buyers join the line at random moments of this many seconds, ending 2 s before "
                             f"the opening (default: buyers / {JOINS_PER_SECOND}, at least 3)")
    parser.add_argument("--late-buyers", type=int, default=0,
                        help="of the buyers, this many join after the opening instead (at random moments of its "
                             "first --join-seconds), so that admissions reach the later arrivals, admitted in arrival "
                             "order (default 0: everyone joins the pre-queue)")
    parser.add_argument("--mint-above", type=int, default=1000,
                        help="above this many buyers, mint their access tokens from the stack's signing key "
                             "(benchmarks/line.py) instead of registering each through accounts (default 1000)")
    parser.add_argument("--drop-seconds", type=float, default=None,
                        help="longest the crowd may stay after the opening (default 60; with a line, 120: "
                             "a buyer leaves once told sold out)")
    parser.add_argument("--give-up-seconds", type=float, default=20.0,
                        help="a buyer stops retrying an order, or waiting for its confirmation, after this long (default 20)")
    parser.add_argument("--settle-seconds", type=float, default=90.0,
                        help="longest to wait after recovery for every sale and email (default 90)")
    parser.add_argument("--pgbench-seconds", type=float, default=10.0, help="0 skips pgbench (default 10)")
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument("--naive-seconds", type=float, default=15.0, help="0 skips the naive checkout (default 15)")
    parser.add_argument("--register-threads", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default var/rehearsal/<timestamp>)")
    parser.add_argument("--keep", action="store_true", help="keep the isolated stack's databases and vhost")
    args = parser.parse_args(argv)
    args.fault_list = [] if args.faults.strip() in ("", "none") else [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.fault_list) - set(faults_mod.ALL)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}; choose from {', '.join(faults_mod.ALL)}")
    args.fault_times = {}
    for item in args.fault_at:
        name, _, seconds = item.partition("=")
        if name not in faults_mod.ALL:
            parser.error(f"--fault-at: unknown fault {name!r}")
        args.fault_times[name] = float(seconds)
    if args.units < 1 or args.buyers < 1:
        parser.error("--units and --buyers must be at least 1")
    if not 0 <= args.late_buyers <= args.buyers:
        parser.error("--late-buyers must be between 0 and --buyers")
    if args.admitters < 1 or (args.admitters > 1 and args.use_running):
        parser.error("--admitters must be at least 1, and more than 1 only on an isolated stack")
    if args.join_seconds is None:
        args.join_seconds = max(3.0, args.buyers / JOINS_PER_SECOND)
    if args.drop_seconds is None:
        args.drop_seconds = 120.0 if args.line else 60.0
    if args.lead is None:
        args.lead = 6.0 + (args.join_seconds + 2.0 if args.line else 0.0)
    return args


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}, load average {load:.1f} at start"


_last_status = [0.0]


def say(text: str) -> None:
    """Write to the terminal; a line starting with \\r is a status line that replaces the last one
    (when the output is not a terminal, status lines go out one a line, at most every 2 s)."""
    if text.startswith("\r") and not sys.stdout.isatty():
        if time.monotonic() - _last_status[0] < 2:
            return
        _last_status[0] = time.monotonic()
        text = text[1:].rstrip() + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()


def run_load(out: Path, name: str, config: dict, live) -> list[dict]:
    """Run the Locust process; call `live(new_events, all_events)` every second; return every event."""
    config_path, events_path = out / f"{name}.config.json", out / f"{name}.events.jsonl"
    config["events"] = str(events_path)
    config_path.write_text(json.dumps(config))
    reader, events = EventReader(events_path), []
    with open(out / f"{name}.locust.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.rehearsal.load", str(config_path)], cwd=ROOT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)
        meter = psutil.Process(process.pid)
        cpu_seconds = 0.0
        try:
            while process.poll() is None:
                try:
                    times = meter.cpu_times()
                    cpu_seconds = times.user + times.system
                except psutil.Error:
                    pass
                time.sleep(1)
                new = reader.read_new()
                events.extend(new)
                live(new, events)
        except BaseException:
            process.send_signal(signal.SIGINT)
            process.wait(10)
            raise
    events.extend(reader.read_new())
    events.append({"ev": "load_cpu", "t": time.time(), "cpu_seconds": round(cpu_seconds, 1)})
    if process.returncode != 0:
        raise RuntimeError(f"the load process failed ({process.returncode}); see {out / (name + '.locust.log')}")
    return events


class DropCpu:
    """CPU seconds per process group of the rehearsal's own stack (benchmarks.cpu), from the
    opening (a timer starts the meter then) until `stop()`; the crowd (Locust, a child of this
    process) is a group of its own."""

    def __init__(self, rig, opens_at: float):
        self._roots = {**stack_roots(rig.stack), os.getpid(): "the crowd (Locust)"}
        self._meter: CpuMeter | None = None
        self._timer = threading.Timer(max(0.0, opens_at - time.time()), self._start)
        self._timer.start()

    def _start(self) -> None:
        self._meter = CpuMeter(self._roots)
        self._meter.start()

    def stop(self) -> dict | None:
        """{"seconds": wall seconds measured, "machine_seconds": busy CPU seconds of the whole
        machine, "groups": {group: CPU seconds}}, or None when the crowd left before the opening."""
        self._timer.cancel()
        self._timer.join()
        if self._meter is None:
            return None
        groups = self._meter.stop()
        return {"seconds": round(self._meter.seconds, 2), "machine_seconds": round(self._meter.machine_seconds, 2),
                "groups": {name: round(used, 2) for name, used in sorted(groups.items(), key=lambda kv: -kv[1])}}


class Progress:
    """One status line a second while the crowd is in."""

    def __init__(self, opens_at: float, sampler: Sampler | None, line: dict | None = None):
        self.opens_at, self.sampler, self.line = opens_at, sampler, line
        self.placed = self.confirmed = self.sold_out = self.shed = self.server_errors = self.cut = 0
        self.joined = 0
        self.window: list[float] = []
        self.last_placed = 0

    def __call__(self, new: list[dict], _all: list[dict]) -> None:
        for e in new:
            if e["ev"] == "spawned":
                late = e["t"] - (self.line["join_from"] if self.line else self.opens_at)
                if self.line:
                    say(f"\n  {e['users']} buyers spawned; they join the line from {self.line['join_from'] - e['t']:.1f}s "
                        f"to {self.line['join_until'] - e['t']:.1f}s from now, the opening is in {self.opens_at - e['t']:.1f}s\n"
                        if late < 0 else f"\n  !!! the crowd was spawned {late:.1f}s after its join window began: "
                                         f"raise --lead !!!\n")
                else:
                    say(f"\n  {e['users']} buyers waiting, {-late:.1f}s before the opening\n" if late < 0 else
                        f"\n  !!! the crowd was spawned {late:.1f}s after the opening: raise --lead !!!\n")
            elif e["ev"] == "joined" and not e.get("again"):
                self.joined += 1
            elif e["ev"] == "placed":
                self.placed += 1
            elif e["ev"] == "confirmed":
                self.confirmed += 1
            elif e["ev"] == "sold_out":
                self.sold_out += 1
            elif e["ev"] == "request":
                if e["name"] == report.POST_ORDERS:
                    self.window.append(e["ms"])
                if e["status"] in (429, 503):
                    self.shed += 1
                elif e["status"] >= 500:
                    self.server_errors += 1
                elif e["status"] == 0:
                    self.cut += 1
        t = time.time() - self.opens_at
        s = self.sampler.latest if self.sampler else {}
        in_line = (f"  line: joined {self.joined:>6} admitted {s.get('admitted_through', '-')!s:>5} "
                   f"passes {s.get('active_passes', '-')!s:>4}/{s.get('line_remaining', '-')!s:<4}") if self.line else ""
        if t < 0:
            say(f"\r  opening in {-t:4.1f}s ...{in_line}  ")
            return
        rate, self.last_placed = self.placed - self.last_placed, self.placed
        p99 = report.percentile(self.window[-2000:], 99)
        alarm = f"  5xx {self.server_errors} !!!" if self.server_errors else "  5xx 0"
        say(f"\r  t={t:+6.1f}s placed {self.placed:>6} ({rate:>4}/s) confirmed {self.confirmed:>6} sold-out {self.sold_out:>6}"
            f" 429/503 {self.shed:>5} cut {self.cut:>3}{alarm}  p99 {p99 if p99 is not None else '-':>6} ms"
            f"  remaining {s.get('remaining', '-')!s:>5} queue {s.get('queue', '-')!s:>5} outbox {s.get('outbox', '-')!s:>4}"
            f"{in_line}  ")


def naive_run(rig, out: Path, buyers: list, units: int, seconds: float) -> dict:
    """The naive reference under the same crowd for `seconds`, with a 1 s-per-message SMTP server."""
    database = rig.scratch_database("naive")
    create_database_if_missing(database)
    drop_id = str(uuid.uuid4())
    naive_checkout.prepare(database, drop_id, units)
    with naive_checkout.running(database, 1, out / "naive.processes.log", out / "naive-mail") as host:
        opens_at = time.time() + 4
        progress = Progress(opens_at, None)
        events = run_load(out, "naive", {"mode": "naive", "host": host, "drop_id": drop_id,
                                         "buyers": buyers, "opens_at": opens_at, "stop_at": opens_at + seconds,
                                         "give_up_seconds": seconds}, progress)
        say("\n")
    answered = [e for e in events if e["ev"] == "request" and e["name"] == report.POST_ORDERS and e["status"] != 0]
    orders = sum(1 for e in events if e["ev"] == "placed")
    decided = sum(1 for e in events if e["ev"] in ("placed", "sold_out", "gave_up"))
    return {"users": len(buyers), "seconds": seconds, "orders": orders, "orders_per_second": round(orders / seconds, 2),
            "latency": report.latency([e["ms"] for e in answered]), "unanswered": len(buyers) - decided,
            "answers": dict(Counter(e["kind"] for e in answered))}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    wall = time.monotonic()
    machine_info = machine()
    out = args.out or ROOT / "var" / "rehearsal" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.rehearsal " + shlex.join(argv if argv is not None else sys.argv[1:])
    line_text = (f"a line (factor {args.admission_factor:g}, at most {args.admission_rate:g} admitted/s, "
                 f"{args.admitters} admitter{'s' if args.admitters > 1 else ''})" if args.line else "no line")
    say(f"Drop rehearsal: {args.units} units, {args.buyers} buyers, {line_text}, "
        f"faults: {', '.join(args.fault_list) or 'none'}\n  report folder {out}\n")

    say("  starting an isolated stack (own databases, vhost, ports) ...\n" if not args.use_running
        else "  using the running stack ...\n")
    phases, mark = {}, [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = phases.get(name, 0) + now - mark[0]
        mark[0] = now

    collector = Collector().__enter__() if args.trace and not args.use_running else None
    stack_env = observe.tracing_env(collector) if collector else {}
    rig = rigs.running(out / "stack") if args.use_running else rigs.isolated(out / "stack", env=stack_env)
    for number in range(2, args.admitters + 1):  # beside the stack's own, as prod's replicas are
        rig.stack.start("checkout-admitter", as_name=f"checkout-admitter-{number}")
    phase("stack up")
    # the stack's memory (benchmarks/memory.py), from its start to the drop's settling; a process
    # a fault restarts is followed under its name
    memory_meter = memory.MemoryMeter(lambda: stack_roots(rig.stack)) if rig.owned else None
    if memory_meter is not None:
        memory_meter.begin("at rest, started")
        memory_meter.start()
        memory_meter.begin("the buyers signing in")
    memory_use = None
    if args.use_running:
        say("  !!! the running stack limits registrations and line joins per client address, and every buyer comes "
            f"from 127.0.0.1: start it with {' and '.join(f'{name}={value}' for name, value in rigs.ONE_ADDRESS_CROWD.items())} !!!\n")
    failed = False
    try:
        floodgate = Floodgate(rig.stack)
        admin_email = f"admin-{uuid.uuid4().hex[:6]}@rehearsal.example"
        admin = floodgate.create_admin(admin_email, ADMIN_PASSWORD)
        if args.buyers > args.mint_above:
            say(f"  minting {args.buyers} buyers' access tokens from the stack's signing key (benchmarks/line.py) ...\n")
            buyers = crowd_signup.mint(rig, args.buyers, lifetime_seconds=3600)
            buyers_made = "minted (benchmarks/line.py)"
        else:
            say(f"  registering and signing in {args.buyers} buyers ({args.register_threads} threads) ...\n")
            buyers = crowd_signup.sign_up(rig.stack.url("accounts"), args.buyers, args.register_threads, progress=say)
            buyers_made = "registered and signed in"

        phase("buyers signed in")
        if memory_meter is not None:
            memory_meter.begin("before the opening (the crowd joining)")
        drop = floodgate.create_drop(admin, quantity=args.units, opens_in=args.lead, lasts=3600)
        opens_at = datetime.fromisoformat(drop["opens_at"]).timestamp()
        say(f"  drop {drop['id']}: {args.units} units over {drop.get('stock_shards', '?')} stock rows, opens in {opens_at - time.time():.1f}s\n")
        line, window = None, None
        if args.line:
            line = floodgate.put_line(admin, drop, admission_factor=args.admission_factor,
                                      admission_rate=args.admission_rate, pass_ttl_seconds=args.pass_ttl_seconds)
            window = {"join_from": opens_at - 2.0 - args.join_seconds, "join_until": opens_at - 2.0,
                      "late_buyers": args.late_buyers, "late_from": opens_at + 0.5,
                      "late_until": opens_at + 0.5 + args.join_seconds}
            say(f"  a line on it: commitment {line['commitment'][:16]}..., factor {line['admission_factor']:g}, "
                f"at most {line['admission_rate']:g} admitted/s, passes valid {line['pass_ttl_seconds']}s\n")

        timeline = faults_mod.Timeline(opens_at)
        injector = faults_mod.Faults(rig, args.fault_list, args.fault_times, timeline, args.smtp_outlasts)
        for name, reason in injector.skipped.items():
            say(f"  fault {name} skipped: {reason}\n")
        sampler = Sampler(rig, drop["id"], line=args.line)
        sampler.start()
        camera = None
        if args.control_room:
            camera = observe.ControlRoomCamera(f"{rig.stack.url('checkout')}/drops/{drop['id']}/control-room",
                                               admin_email, ADMIN_PASSWORD, lambda: sampler.latest.get("remaining") == 0,
                                               out, give_up_at=opens_at + args.drop_seconds)
            camera.start()
        injector.start()
        # the CPU of every process of our own stack, from the opening until the crowd has gone
        meter = DropCpu(rig, opens_at) if rig.owned else None
        progress = Progress(opens_at, sampler, window)
        opening = None
        if memory_meter is not None:
            opening = threading.Timer(max(0.0, opens_at - time.time()), memory_meter.begin, ("the drop, faults on",))
            opening.start()
        events = run_load(out, "drop", {"mode": "drop", "host": rig.stack.url("checkout"),
                                        "line_host": rig.stack.url("line-status"), "drop_id": drop["id"],
                                        "buyers": buyers, "opens_at": opens_at, "stop_at": opens_at + args.drop_seconds,
                                        "give_up_seconds": args.give_up_seconds, "confirm_timeout_seconds": args.give_up_seconds,
                                        "line": args.line, **(window or {})},
                          progress)
        phase("drop")
        drop_cpu = meter.stop() if meter else None
        if camera is not None:
            camera.join(timeout=30)
        crowd_left = time.time()
        say(f"\n  the crowd has gone ({crowd_left - opens_at:.1f}s after the opening); lifting the faults ...\n")
        recovered_at = injector.recover()
        if memory_meter is not None:
            opening.cancel()  # a crowd gone before the opening
            opening.join()
            memory_meter.begin("recovery and settling")
        say("  waiting for every confirmed order to be sold and emailed ...\n")
        verdict = checks.settle(rig, drop["id"], recovered_at, args.settle_seconds, progress=say)
        time.sleep(1)
        sampler.stop()
        if memory_meter is not None:
            memory_use = {**memory_meter.stop(), "note": (
                "The rehearsal's stack runs a relay per service, so that a fault can stop one: three more "
                "processes than `make run`'s, which relays every outbox from one (`make bench` measures that shape).")}
        phase("recovery")
        line_figures = None
        if args.line:
            say("  checking the line: fairness, passes against the stock, sold out heard ...\n")
            line_figures = waiting_room.figures(rig, drop["id"], events, sampler.samples, opens_at, line["commitment"])
            line_figures["admitters"] = args.admitters

        pg = None
        if args.pgbench_seconds > 0:
            say(f"  pgbench: the same transaction, {args.pgbench_clients} clients, {args.pgbench_seconds:.0f}s ...\n")
            pg = pgbench.run(rig.scratch_database("pgbench"), stock_rows=int(drop.get("stock_shards") or 1),
                             clients=args.pgbench_clients, seconds=args.pgbench_seconds)
            say(f"  pgbench: {pg.tps:,.0f} tx/s\n")
            phase("pgbench")
        naive = None
        if args.naive_seconds > 0:
            say(f"  the naive checkout under the same crowd for {args.naive_seconds:.0f}s ...\n")
            naive = naive_run(rig, out, buyers, args.units, args.naive_seconds)
            phase("naive")

        crowd = report.crowd_figures(events, opens_at)
        series = report.per_second(events, opens_at, max(e["t"] for e in events) - opens_at + 1)
        headline = report.headline(crowd, verdict, series, pg, naive)
        figures = {
            "run": {"started": started.isoformat(), "command": command, "machine": machine_info, "units": args.units,
                    "buyers": args.buyers, "buyers_made": buyers_made, "late_buyers": args.late_buyers if args.line else 0, "stack": "isolated" if rig.owned else "running",
                    "faults": injector.enabled, "faults_skipped": injector.skipped,
                    "wall_seconds": time.monotonic() - wall, "phases": phases, "drop_id": drop["id"],
                    "load_average_max": max((s["load1"] for s in sampler.samples), default=None)},
            "headline": headline, "crowd": crowd, "checks": verdict, "timeline": timeline.entries,
            "database_restart": report.database_restart(events, timeline.entries, verdict, opens_at),
            "pgbench": pg.as_dict() if pg else None, "naive": naive, "line": line_figures, "cpu": drop_cpu,
            "memory": memory_use,
            "request_costs": report.request_costs(rig.stack.var_dir / "logs", opens_at, crowd_left) if rig.owned else None,
            "observed": {"control_room": camera.result if camera else None,
                         "slowest_order_trace": observe.slowest_order_trace(collector) if collector else None},
        }
        report.write(out, figures, series, sampler.samples, opens_at)
        say("\n" + (out / "report.md").read_text().split("## Faults")[0])
        failed = not all(ok for _, ok, _ in report.verdicts(figures))
        if crowd["unexpected_5xx"]:
            say(f"\n!!! {crowd['unexpected_5xx']} requests were answered with a 5xx other than a 503 with Retry-After: "
                f"{crowd['server_errors_by_kind']} !!!\n")
        say(f"\nReport: {out / 'report.md'} (JSON: report.json; plots: *.png)\n")
    finally:
        if memory_meter is not None and memory_meter.is_alive():
            memory_meter.stop()
        rig.teardown(keep=args.keep)
        if collector is not None:
            collector.__exit__(None, None, None)
    if failed:
        say("\nREHEARSAL FAILED: a must-hold figure does not hold (see Verdicts above).\n")
        sys.exit(1)

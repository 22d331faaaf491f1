"""The waiting room under load: joins per second and polls per second, and the machine's CPU for each.

    make bench-line                               # installs what it needs (requirements-bench.txt)
    python -m benchmarks.line [--seconds 10] [--connections 64] [--out DIR]

The issue's targets, on a 2-core machine: at least 1,000 joins/s and 3,000 polls/s.

One run:
1. starts an isolated stack (own databases, vhost and ports; relays in one process), as
   `benchmarks/cost.py` does, with the per-client join limit lifted: every join comes from
   127.0.0.1, which the limit (30 a minute per API process) would answer 429 within a second;
   this measures a join, not the throttle;
2. creates an admin, a drop opening in a day and a line on it (pre-queue), mints the buyers'
   access tokens (below) and checks that one is accepted: its join answers 201;
3. joins: for `--seconds` at `--connections` keep-alive connections, each request
   `POST /drops/{id}/line/tickets` at the line's public edge by a fresh account (each token once);
4. polls: the crowd's poll, `GET /drops/{id}/line/tickets/{ticket_id}` on the public status
   edge (`checkout-line-status`, no token), for every ticket that joined, round-robin;
5. polls after the opening (unless `--skip-opening`): the line's opening is moved to now (or
   `--opens-in` seconds from now, as a drop's scheduled opening is: the admitter reads a big
   pre-queue ahead in the minute before its opening), the
   admitter reveals the seed and places the pre-queue, and the same tickets are polled while
   it admits them. With `--crowd N`, N more tickets are made in the database before the opening
   (as a join makes them: a big line without minting N tokens), and the opening is watched
   first: one buyer joins every 20 ms from the moment the opening is moved until every
   pre-queue position is written (how long those joins took, as a join at the opening waits
   for it), and when the first admission and the last position came, after the opening;
6. prints a table, and writes bench.json and bench.md to var/bench-line/<timestamp>/.

Each phase runs the light generator of `benchmarks/loadgen.py` (one asyncio process, raw HTTP/1.1)
and samples the CPU of every process from its first request to its last (`CpuMeter`, from
benchmarks/cost.py): machine CPU per join or poll is the machine's busy CPU over the phase
divided by the successful answers; the split names checkout's API, PostgreSQL, the generator, and
`other` for whatever else the machine ran meanwhile.

Why the buyers' tokens are minted here rather than signed in: a join needs a distinct account per
request, so a 10 s phase needs tens of thousands of accounts, and registering one goes through
argon2id (tens of ms of a core each): minutes of setup, measuring accounts rather than the line.
The benchmark's own stack encrypts accounts' signing keys with the public development KEK, so the
benchmark reads accounts' active signing key from that stack's accounts database, opens it with
`key_encryption.configured` under the stack's accounts settings, and signs with accounts' own
`TokenIssuer`: ES256 under a key in accounts' JWKS, with the claims a real buyer's token carries (a
fresh uuid as `sub`, role buyer, an email, `acct` its creation time). Checkout verifies them as
any other, so a join costs what a real one does; the accounts exist only in the tokens, and the
line never looks anything up in accounts. This works only against a development stack: a
production KEK is a secret the benchmark never has.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import orm

from benchmarks.cost import percentile
from benchmarks.cpu import CpuMeter, stack_roots
from benchmarks.rehearsal import rig as rigs
from benchmarks.rehearsal.cli import machine, say
from devtools.client import Floodgate, poll, session
from devtools.line_crowd import CROWD
from devtools.stack import ROOT
from services.accounts import config as accounts_config, key_encryption
from services.accounts.models import Account
from services.accounts.repository import SigningKeys
from services.accounts.tokens import TokenIssuer
from shared.config import api_process_shape

TARGETS = {"joins": 1_000, "polls": 3_000}  # per second, the issue's
UNITS = 1_000_000  # the line never sells out while admitting
ADMISSION_RATE = 200.0  # buyers admitted per second after the opening (the admin's ceiling)
JOINS_PER_SECOND_PROVISIONED = 3_000  # tokens minted per second of the join phase, by default


# --- buyers -------------------------------------------------------------------------------------

def mint_buyers(rig, count: int, lifetime_seconds: int) -> list[str]:
    """`count` access tokens of new buyers, signed as accounts signs them (see the docstring)."""
    settings = accounts_config.Settings.from_env(rig.stack.env("accounts"), service_name="accounts")
    keys = key_encryption.configured(settings.signing_key_encryption_keys, settings.deployment_environment)
    engine = sa.create_engine(rig.stack.infra.database_url("accounts"), pool_size=1, max_overflow=0)
    try:
        with orm.Session(engine) as session:
            active = SigningKeys(session).active()
    finally:
        engine.dispose()
    if not active:
        raise SystemExit("accounts has no signing key yet (nobody signed in?)")
    # longer-lived than a real token (900 s) only so that a long run does not outlive them; the
    # lifetime changes nothing in how a token is verified
    issuer = TokenIssuer(settings.jwt_issuer, settings.jwt_audience,
                         max(settings.access_token_ttl_seconds, lifetime_seconds), keys)
    run = uuid.uuid4().hex[:6]
    tokens, started = [], time.monotonic()
    for index in range(count):
        now = datetime.now(timezone.utc)
        buyer = Account(id=uuid.uuid4(), email=f"line-{run}-{index}@bench.example", role="buyer", tier=None,
                        created_at=now)
        tokens.append(issuer.issue(buyer, active[0], now).token)
        if (index + 1) % 1000 == 0 or index + 1 == count:
            elapsed = time.monotonic() - started
            say(f"\r  minting buyers' tokens: {index + 1:>7}/{count}  ({(index + 1) / elapsed:,.0f}/s) ")
    say("\n")
    return tokens


# --- load ---------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str  # "joins", "polls", "polls after the opening"
    method: str
    url: str
    expected: int  # the status of a successful answer
    tokens: list[str]  # the buyers' tokens; for polls of the status edge, the paths polled
    each_token_once: bool
    request: str = "bearer"  # or "get": the status edge's polls, no token


def run_phase(rig, phase: Phase, connections: int, seconds: float, workdir: Path,
              progress=lambda: "") -> tuple[dict, dict]:
    """Drive one phase; its figures, and the generator's raw result."""
    stamp = uuid.uuid4().hex[:6]
    config = {"url": phase.url, "request": phase.request, "method": phase.method, "tokens": phase.tokens,
              "paths": phase.tokens,
              "each_token_once": phase.each_token_once, "connections": connections, "seconds": seconds,
              "out": str(workdir / f"load-{stamp}.json"), "ready_file": str(workdir / f"ready-{stamp}")}
    config_path = workdir / f"loadgen-{stamp}.json"
    config_path.write_text(json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen", str(config_path)], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    ready = Path(config["ready_file"])
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the load generator exited ({process.returncode}) before its first request")
        time.sleep(0.02)
    meter = CpuMeter({**stack_roots(rig.stack), process.pid: "load generator"})
    meter.start()
    started = time.monotonic()
    while process.poll() is None:
        time.sleep(1)
        say(f"\r  {phase.name}: {min(seconds, time.monotonic() - started):5.1f}/{seconds:g}s {progress()}")
    cpu = meter.stop()
    if process.returncode != 0:
        raise RuntimeError("the load generator failed")
    result = json.loads(Path(config["out"]).read_text())
    figures = summarise(phase, result, cpu, meter, connections)
    outcome = (f"  {phase.name}: {figures['per_second']:,.0f}/s, p50/p99 {figures['p50_ms']}/{figures['p99_ms']} ms, "
               f"{figures['machine_cpu_ms_each']} ms machine CPU each, answers {figures['answers']}\n")
    # not a status line: said even when the last status line was said a moment ago
    say(("\r" if sys.stdout.isatty() else "") + outcome)
    return figures, result


def summarise(phase: Phase, result: dict, cpu: dict, meter: CpuMeter, connections: int) -> dict:
    answers = {int(k): v for k, v in result["answers"].items()}
    good = answers.get(phase.expected, [])
    every = [ms for status, values in answers.items() if status > 0 for ms in values]
    count = max(1, len(good))
    window = max(meter.seconds, 1e-6)
    outside = ("load generator", "benchmark (this process)", "other")
    return {
        "phase": phase.name,
        "request": f"{phase.method} {phase.url.split('/', 3)[-1]}",
        "connections": connections,
        "seconds": round(result["seconds"], 2),
        "buyers": len(phase.tokens),
        "ran_out_of_buyers": bool(result.get("exhausted")),
        "successes": len(good),
        "per_second": round(len(good) / result["seconds"], 1),
        "target_per_second": TARGETS.get(phase.name.split()[0]),
        "answers": {str(k): len(v) for k, v in sorted(answers.items())},
        "p50_ms": percentile(good, 50), "p99_ms": percentile(good, 99),
        "p99_all_ms": percentile(every, 99),
        "machine_cpu_busy_percent": round(100 * meter.machine_seconds / (window * (os.cpu_count() or 1)), 1),
        "machine_cpu_ms_each": round(meter.machine_seconds * 1000 / count, 3),
        "stack_cpu_ms_each": round(sum(v for k, v in cpu.items() if k not in outside) * 1000 / count, 3),
        "cpu_ms_each": {name: round(value * 1000 / count, 3)
                        for name, value in sorted(cpu.items(), key=lambda item: -item[1]) if value > 0},
        "loadgen_cpu_seconds": round(result.get("cpu_seconds", 0.0), 2),
    }


# --- the line -----------------------------------------------------------------------------------

def check_a_minted_token(floodgate: Floodgate, token: str, drop_id: str) -> None:
    """Before measuring: checkout accepts a minted token, a join makes a ticket and a second
    returns it."""
    first = floodgate.join_line(token, drop_id)
    if first.status_code != 201:
        raise SystemExit(f"a minted token's join answered {first.status_code}, not 201: {first.text}")
    again = floodgate.join_line(token, drop_id)
    if again.status_code != 200 or again.json()["ticket_id"] != first.json()["ticket_id"]:
        raise SystemExit(f"joining again answered {again.status_code}, not the same ticket: {again.text}")
    if floodgate.my_ticket(token, drop_id)["state"] != "pre_queue":
        raise SystemExit("a pre-queue ticket's poll does not say pre_queue")


def open_now(floodgate: Floodgate, admin: str, drop: dict, opens_in: float = 1.0, timeout: float = 120) -> dict:
    """Move the line's opening to `opens_in` seconds from now and wait for the admitter to open it."""
    opens_at = (datetime.now(timezone.utc) + timedelta(seconds=opens_in)).isoformat()
    floodgate.put_line(admin, drop, opens_at=opens_at, admission_rate=ADMISSION_RATE)

    def opened() -> dict | None:
        line = floodgate.get_line(drop["id"]).json()
        return line if line.get("seed") else None

    return poll(opened, timeout=opens_in + timeout, interval=0.2, what="the line to open")


JOIN_EVERY_SECONDS = 0.02  # the joins watched at a big line's opening
OPENING_JOINERS = 4_500  # tokens minted for them: a minute and a half's worth, after `--opens-in`


def make_crowd(engine, drop_id: str, count: int) -> None:
    """`count` tickets in the line's pre-queue, made straight in checkout's database."""
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(sa.text(CROWD), {"d": drop_id, "n": count})
    say(f"  {count:,} more tickets made in the database in {time.monotonic() - started:.1f} s\n")


def watch_opening(floodgate: Floodgate, admin: str, drop: dict, engine, tokens: list[str], opens_in: float,
                  timeout: float = 600) -> dict:
    """Open the line `opens_in` seconds from now with buyers joining meanwhile, one every
    JOIN_EVERY_SECONDS from now until every
    pre-queue position is written: how long those joins took, and when the first admission and
    the last pre-queue position came, in seconds after the opening."""
    stop, joins = threading.Event(), []
    http = session()

    def keep_joining():
        url = floodgate.stack.url("line-status") + f"/drops/{drop['id']}/line/tickets"
        for token in tokens:
            if stop.is_set():
                return
            began = time.monotonic()
            answer = http.post(url, headers={"Authorization": f"Bearer {token}"})
            joins.append((round((time.monotonic() - began) * 1000, 1), answer.status_code))
            stop.wait(JOIN_EVERY_SECONDS)

    joiner = threading.Thread(target=keep_joining, daemon=True)
    joiner.start()
    try:
        line = open_now(floodgate, admin, drop, opens_in)
        say(f"  the line opened: a pre-queue of {line['pre_queue_size']:,}; writing its positions ...\n")
        # when the first admission and the pre-queue's last position were committed, within a poll
        statement = sa.text("SELECT placed, pre_queue_size, admitted_through, "
                            "extract(epoch FROM clock_timestamp() - opened_at) AS since, "
                            "extract(epoch FROM opened_at - opens_at) AS late FROM lines WHERE drop_id = :d")
        deadline, placed_after, admitted_after = time.monotonic() + timeout, None, None
        while True:
            with engine.connect() as conn:
                row = conn.execute(statement, {"d": drop["id"]}).one()
            if row.placed >= row.pre_queue_size and placed_after is None:
                placed_after = float(row.since)
            if row.admitted_through > 0 and admitted_after is None:
                admitted_after = float(row.since)
            if placed_after is not None and admitted_after is not None:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the pre-queue was not placed and admitted from within {timeout:g} s "
                                 f"({row.placed:,} placed)")
            say(f"\r  placed {row.placed:>9,} of {row.pre_queue_size:,}, {float(row.since):5.1f} s after the opening ")
            time.sleep(0.1)
    finally:
        stop.set()
        joiner.join()
    took = [ms for ms, status in joins if status in (200, 201)]
    say("\n")
    return {"pre_queue": row.pre_queue_size, "opens_in_seconds": opens_in,
            "opened_late_seconds": round(float(row.late), 2), "placed_after_seconds": round(placed_after, 2),
            "first_admission_after_seconds": round(admitted_after, 2),
            "joins": len(joins), "joins_answered": {str(k): sum(1 for _, s in joins if s == k)
                                                    for k in sorted({s for _, s in joins})},
            "join_p50_ms": percentile(took, 50), "join_p99_ms": percentile(took, 99),
            "join_max_ms": max(took, default=None)}


def ticket_ids(engine, drop_id: str) -> list[str]:
    with engine.connect() as conn:
        return [str(row.id) for row in conn.execute(sa.text("SELECT id FROM line_tickets WHERE drop_id = :d"),
                                                    {"d": drop_id})]


def line_counts(engine, drop_id: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT joined, admitted_through FROM lines WHERE drop_id = :d"),
                           {"d": drop_id}).one()
    return int(row.joined), int(row.admitted_through)


# --- report -------------------------------------------------------------------------------------

def markdown(figures: dict) -> str:
    run = figures["run"]
    lines = [f"# The waiting room under load — {run['started']}", "",
             f"`{run['command']}` on {run['machine']}; checkout's API: {run['api']}; "
             f"{run['buyers_minted']:,} buyers minted ({run['mint_per_second']:,.0f} tokens/s).", "",
             "| phase | per second | target | p50 / p99 ms | answers | machine CPU each | stack CPU each | "
             "machine busy |", "|---|---|---|---|---|---|---|---|"]
    for p in figures["phases"]:
        target = f"≥ {p['target_per_second']:,}" if p["target_per_second"] else ""
        answers = ", ".join(f"{k}: {v}" for k, v in p["answers"].items())
        lines.append(f"| {p['phase']} ({p['buyers']:,} buyers) | **{p['per_second']:,.0f}** | {target} | "
                     f"{p['p50_ms']} / {p['p99_ms']} | {answers} | {p['machine_cpu_ms_each']} ms | "
                     f"{p['stack_cpu_ms_each']} ms | {p['machine_cpu_busy_percent']}% |")
    lines += ["", f"{figures['phases'][0]['connections']} keep-alive connections, one generator process; "
                  "machine CPU each is all cores' busy time over the phase over the successful answers; "
                  "answer -1 is a request still in flight when the phase ended (not counted).", ""]
    for p in figures["phases"]:
        lines += [f"## {p['phase']}: CPU ms per successful answer", "", "| process | CPU ms |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in p["cpu_ms_each"].items()]
        lines.append("")
    if figures.get("opening"):
        o = figures["opening"]
        lines += [f"The opening of a pre-queue of {o['pre_queue']:,} ({o['opened_late_seconds']} s after its "
                  f"opening time): every position written "
                  f"{o['placed_after_seconds']} s after it (polled every 0.1 s), the first admission "
                  f"{o['first_admission_after_seconds']} s after it; {o['joins']:,} joins meanwhile "
                  f"(one every {JOIN_EVERY_SECONDS * 1000:g} ms from the moment the opening was moved to "
                  f"{o['opens_in_seconds']:g} s later; answers "
                  f"{o['joins_answered']}) took p50 / p99 / max **{o['join_p50_ms']} / {o['join_p99_ms']} / "
                  f"{o['join_max_ms']} ms**.", ""]
    if figures.get("after_opening"):
        o = figures["after_opening"]
        lines += [f"After the opening: {o['pre_queue']:,} placed by the seed; {o['admitted']:,} admitted by the "
                  f"end of the phase (the admin's rate {ADMISSION_RATE:g}/s).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.line", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="load per phase (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--buyers", type=int, default=0,
                        help=f"tokens minted for the join phase; the phase stops early if they run out "
                             f"(default {JOINS_PER_SECOND_PROVISIONED:,} per second of it)")
    parser.add_argument("--skip-opening", action="store_true", help="no polls after the opening")
    parser.add_argument("--opens-in", type=float, default=1.0,
                        help="seconds from the moment the opening is moved to the opening (default 1: now); a "
                             "drop's scheduled opening gives the admitter time to read a big pre-queue ahead")
    parser.add_argument("--crowd", type=int, default=0,
                        help="tickets made in the database before the opening, and the opening watched (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default var/bench-line/<timestamp>)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every process of the stack, e.g. WEB_CONCURRENCY=3")
    args = parser.parse_args(argv)
    stack_env = dict(item.split("=", 1) for item in args.env)
    buyers = args.buyers or int(args.seconds * JOINS_PER_SECOND_PROVISIONED)
    started = datetime.now(timezone.utc)
    out = args.out or ROOT / "var" / "bench-line" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="load-", dir=out))
    command = "python -m benchmarks.line " + " ".join(argv if argv is not None else sys.argv[1:])
    say(f"The waiting room under load: report folder {out}\n  starting an isolated stack ...\n")
    rig = rigs.isolated(out / "stack", env=stack_env, combine_relays=True)
    checkout_db = sa.create_engine(rig.stack.infra.database_url("checkout"), pool_size=1, max_overflow=0)
    try:
        floodgate = Floodgate(rig.stack)
        admin = floodgate.create_admin(f"admin-{uuid.uuid4().hex[:6]}@bench.example", "bench admin, dev only")
        drop = floodgate.create_drop(admin, quantity=UNITS, opens_in=86_400, lasts=3600, per_buyer_limit=1)
        floodgate.put_line(admin, drop, admission_rate=ADMISSION_RATE)
        say(f"  drop {drop['id']} opens in a day; its line is in pre-queue\n")
        mint_started = time.monotonic()
        opening_joiners = (OPENING_JOINERS + int(args.opens_in / JOIN_EVERY_SECONDS)
                           if args.crowd and not args.skip_opening else 0)
        tokens = mint_buyers(rig, buyers + 1 + opening_joiners, lifetime_seconds=int(4 * args.seconds) + 1800)
        mint_per_second = len(tokens) / (time.monotonic() - mint_started)
        joiners, tokens = tokens[:opening_joiners], tokens[opening_joiners:]
        check_a_minted_token(floodgate, tokens.pop(), drop["id"])
        say("  a minted token is accepted: its join answered 201, joining again 200 with the same ticket\n")

        tickets_url = f"{rig.stack.url('line-status')}/drops/{drop['id']}/line/tickets"
        joined_so_far = lambda: f"joined {line_counts(checkout_db, drop['id'])[0]:>7} "  # noqa: E731
        joins, result = run_phase(rig, Phase("joins", "POST", tickets_url, 201, tokens, True),
                                  args.connections, args.seconds, workdir, joined_so_far)
        if joins["ran_out_of_buyers"]:
            say(f"  !!! the {buyers:,} minted buyers ran out after {joins['seconds']} s: raise --buyers\n")
        phases = [joins]
        edge = rig.stack.url("line-status")
        polled = [f"/drops/{drop['id']}/line/tickets/{ticket_id}" for ticket_id in ticket_ids(checkout_db, drop["id"])]
        polls, _ = run_phase(rig, Phase("polls", "GET", edge, 200, polled, False, request="get"),
                             args.connections, args.seconds, workdir)
        phases.append(polls)
        after_opening = opening = None
        if args.crowd:
            make_crowd(checkout_db, drop["id"], args.crowd)
        if not args.skip_opening:
            say(f"  moving the opening to {args.opens_in:g} s from now; waiting for the admitter to open the line ...\n")
            if args.crowd:
                opening = watch_opening(floodgate, admin, drop, checkout_db, joiners, args.opens_in)
                line = floodgate.get_line(drop["id"]).json()
            else:
                line = open_now(floodgate, admin, drop, args.opens_in)
            say(f"  the line opened: {line['pre_queue_size']:,} placed by the revealed seed\n")
            admitted = lambda: f"admitted {line_counts(checkout_db, drop['id'])[1]:>6} "  # noqa: E731
            opened, _ = run_phase(rig, Phase("polls after the opening", "GET", edge, 200, polled, False, request="get"),
                                  args.connections, args.seconds, workdir, admitted)
            phases.append(opened)
            after_opening = {"pre_queue": line["pre_queue_size"], "admitted": line_counts(checkout_db, drop["id"])[1]}
        figures = {
            "run": {"started": started.isoformat(), "command": command, "machine": machine(), "env": stack_env,
                    "api": "gunicorn, {} workers x {} threads".format(*api_process_shape(stack_env)),
                    "buyers_minted": buyers, "mint_per_second": round(mint_per_second)},
            "phases": phases, "opening": opening, "after_opening": after_opening,
        }
        (out / "bench.json").write_text(json.dumps(figures, indent=2))
        (out / "bench.md").write_text(markdown(figures))
        say("\n" + markdown(figures) + f"\nReport: {out / 'bench.md'}\n")
    finally:
        checkout_db.dispose()
        rig.teardown()


if __name__ == "__main__":
    main()

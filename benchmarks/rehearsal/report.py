"""Figures from the event log, the sampler and the checks; written as JSON, Markdown and PNG plots."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from benchmarks import memory

POST_ORDERS = "POST /orders"
SPARKS = "▁▂▃▄▅▆▇█"
# After a database restart each pooled connection fails once (a 503) before the pool reconnects.
AFTERMATH_SECONDS = 5.0


def percentile(values: list[float], p: float, digits: int = 1) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return round(ordered[rank], digits)


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(" " if v == 0 else SPARKS[min(len(SPARKS) - 1, math.ceil(v / top * len(SPARKS)) - 1)] for v in values)


def latency(values: list[float]) -> dict:
    return {"count": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
            "p99_ms": percentile(values, 99), "max_ms": round(max(values), 1) if values else None}


def crowd_figures(events: list[dict], opens_at: float) -> dict:
    """What the buyers saw: answers, latencies, errors by kind, orders placed and confirmed."""
    requests_ = [e for e in events if e["ev"] == "request"]
    orders = [e for e in requests_ if e["name"] == POST_ORDERS]
    placed = sorted(e["t"] - opens_at for e in events if e["ev"] == "placed")
    confirmed = sorted(e["t"] - opens_at for e in events if e["ev"] == "confirmed")
    errors: dict[str, Counter] = defaultdict(Counter)
    for e in requests_:
        if e["status"] >= 400 or e["status"] == 0:
            errors[e["name"]][e["kind"]] += 1
    server_errors = [e for e in requests_ if e["status"] >= 500]
    retryable = [e for e in server_errors if _retryable_503(e)]
    return {
        "buyers_finished": sum(1 for e in events if e["ev"] == "done"),
        "orders_placed": len(placed),
        "orders_confirmed_seen_by_buyers": len(confirmed),
        "told_sold_out": sum(1 for e in events if e["ev"] == "sold_out"),
        "told_sold_out_by_the_line": sum(1 for e in events if e["ev"] == "sold_out" and e.get("via") == "line"),
        "gave_up": dict(Counter(e.get("reason", "?") for e in events if e["ev"] == "gave_up")),
        "post_orders_answers": dict(Counter(e["kind"] for e in orders)),
        "post_orders_latency_all": latency([e["ms"] for e in orders]),
        "post_orders_latency_201": latency([e["ms"] for e in orders if e["status"] == 201]),
        "errors_by_kind": {name: dict(kinds) for name, kinds in errors.items()},
        "server_errors_5xx": len(server_errors),
        # a 2xx whose body never came whole (a worker killed while answering); the buyer retried
        "cut_answers": dict(Counter(e["name"] for e in events if e["ev"] == "cut_answer")),
        # a 503 with Retry-After asks the buyer to come back, as a 429 does (the database restarting)
        "retryable_503": len(retryable),
        "unexpected_5xx": len(server_errors) - len(retryable),
        "server_errors_by_kind": dict(Counter(f"{e['name']}: {_answer(e)}" for e in server_errors)),
        "crowd_seconds": round(max(e["t"] for e in events) - opens_at, 1) if events else None,
        "first_placed_s": round(placed[0], 3) if placed else None,
        "last_placed_s": round(placed[-1], 3) if placed else None,
        "last_confirmed_s": round(confirmed[-1], 3) if confirmed else None,
        "requests_total": len(requests_),
        # the load generator shares the machine: its CPU time is CPU the stack did not get
        "load_generator_cpu_seconds": next((e["cpu_seconds"] for e in events if e["ev"] == "load_cpu"), None),
    }


def _retryable_503(event: dict) -> bool:
    return event["status"] == 503 and bool(event.get("retry_after"))


def _answer(event: dict) -> str:
    """The kind of answer, and for a 429 or 503 whether it said when to come back."""
    if event["status"] in (429, 503):
        return f"{event['kind']} {'with' if event.get('retry_after') else 'WITHOUT'} Retry-After"
    return event["kind"]


def database_restart(events: list[dict], timeline: list[dict], checks: dict, opens_at: float) -> dict | None:
    """The database fault's figures: when PostgreSQL restarted, how long it answered no query,
    what the buyers were answered meanwhile and just after (stale pooled connections), and what
    must hold afterwards. None when the fault did not run."""
    noted: dict[str, float] = {}
    for entry in timeline:
        if entry["fault"] == "database":
            noted.setdefault(entry["action"], entry["t"])
    if "restarting" not in noted:
        return None
    went, back = noted.get("unavailable"), noted.get("available again")
    outage = (went, back) if went is not None and back is not None else (noted["restarting"], noted.get("restart done"))

    def answered(e: dict) -> float:
        return e["t"] + e["ms"] / 1000 - opens_at

    def answers(start: float | None, end: float | None) -> dict:
        counts: dict[str, Counter] = defaultdict(Counter)
        if start is not None and end is not None:
            for e in events:
                if e["ev"] == "request" and start <= answered(e) <= end:
                    counts[e["name"]][_answer(e)] += 1
        return {name: dict(kinds) for name, kinds in counts.items()}

    settled = outage[1] + AFTERMATH_SECONDS if outage[1] is not None else float("inf")
    unexpected = [e for e in events if e["ev"] == "request" and e["status"] >= 500 and not _retryable_503(e)
                  and noted["restarting"] <= answered(e) <= settled]
    return {
        "restarted_at_s": noted["restarting"],
        "restart_command_seconds": round(noted["restart done"] - noted["restarting"], 2) if "restart done" in noted else None,
        "unavailable_from_s": went,
        "unavailable_until_s": back,
        "unavailable_seconds": round(back - went, 2) if went is not None and back is not None else None,
        "answers_while_unavailable": answers(*outage),
        "answers_just_after": answers(outage[1], outage[1] + AFTERMATH_SECONDS if outage[1] is not None else None),
        "aftermath_seconds": AFTERMATH_SECONDS,
        "unexpected_5xx": dict(Counter(f"{e['name']}: {_answer(e)}" for e in unexpected)),
        "sold_units": checks["sold_units"],
        "confirmed_units": checks["confirmed_units"],
        "holds_without_order": len(checks["holds_without_order"]),
    }


def per_second(events: list[dict], opens_at: float, horizon: float) -> dict:
    """Series for the plots, one point a second from the opening."""
    seconds = max(1, int(math.ceil(horizon)))
    placed, confirmed, answers = [0] * seconds, [0] * seconds, [0] * seconds
    buckets: list[list[float]] = [[] for _ in range(seconds)]
    for e in events:
        i = int(e["t"] - opens_at)
        if not 0 <= i < seconds:
            continue
        if e["ev"] == "placed":
            placed[i] += 1
        elif e["ev"] == "confirmed":
            confirmed[i] += 1
        elif e["ev"] == "request" and e["name"] == POST_ORDERS:
            answers[i] += 1
            buckets[i].append(e["ms"])
    return {
        "t": list(range(seconds)),
        "placed": placed,
        "confirmed": confirmed,
        "post_orders_answers": answers,
        "p50": [percentile(b, 50) for b in buckets],
        "p95": [percentile(b, 95) for b in buckets],
        "p99": [percentile(b, 99) for b in buckets],
    }


def headline(crowd: dict, checks: dict, series: dict, pg, naive: dict | None) -> dict:
    """The figures the report opens with; the placement rate is the rate while stock lasted."""
    sell_out = crowd["last_placed_s"] if checks["available_after"] == 0 else None
    # If the stock never ran out, the rate until the last order; never over less than 0.1 s.
    window = sell_out if sell_out is not None else crowd["last_placed_s"]
    placed_rate = crowd["orders_placed"] / max(window, 0.1) if window is not None else None
    return {
        "sell_out_seconds": sell_out,
        "placed_per_second": round(placed_rate, 1) if placed_rate else None,
        "confirmed_per_second": round(crowd["orders_confirmed_seen_by_buyers"] / crowd["last_confirmed_s"], 1)
        if crowd["last_confirmed_s"] else None,
        "peak_answers_per_second": max(series["post_orders_answers"]) if series["post_orders_answers"] else None,
        "pgbench_tps": round(pg.tps, 1) if pg else None,
        "ratio_to_pgbench": round(placed_rate / pg.tps, 3) if pg and placed_rate else None,
        "naive_orders_per_second": naive["orders_per_second"] if naive else None,
        "naive_p99_ms": naive["latency"]["p99_ms"] if naive else None,
    }


def plots(out: Path, series: dict, samples: list[dict], opens_at: float, timeline: list[dict],
          line: dict | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def markers(ax):
        for entry in timeline:
            ax.axvline(entry["t"], color="grey", alpha=0.35, linestyle=":")
            ax.annotate(f"{entry['fault']}: {entry['action'].split(' (')[0]}", (entry["t"], 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=6, color="grey")

    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    fig, ax = plt.subplots(figsize=(9, 4))
    mid = [t + 0.5 for t in series["t"]]
    ax.bar(series["t"], series["post_orders_answers"], width=0.9, align="edge", color="#ddd", label="POST /orders answered")
    ax.plot(mid, series["placed"], marker="o", ms=3, label="orders placed (201)")
    ax.plot(mid, series["confirmed"], marker="o", ms=3, label="orders confirmed (seen by buyer)")
    ax.set(xlabel="seconds from opening", ylabel="per second", title="Orders per second")
    markers(ax)
    ax.legend(fontsize=8)
    save(fig, "orders_per_second.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    for key in ("p50", "p95", "p99"):
        ax.plot([t + 0.5 for t in series["t"]], [v if v is not None else float("nan") for v in series[key]],
                marker="o", ms=3, label=key)
    ax.axhline(250, color="red", alpha=0.4, linestyle="--", label="p99 target 250 ms")
    ax.set(xlabel="seconds from opening (request start)", ylabel="ms", title="POST /orders latency percentiles")
    markers(ax)
    ax.legend(fontsize=8)
    save(fig, "latency_percentiles.png")

    t = [s["t"] - opens_at for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [s["remaining"] if s["remaining"] is not None else float("nan") for s in samples], drawstyle="steps-post")
    ax.set(xlabel="seconds from opening", ylabel="units", title="Remaining stock (GET /drops/{id})")
    markers(ax)
    save(fig, "remaining_stock.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [s["queue"] if s["queue"] is not None else float("nan") for s in samples], label="notifications.events ready")
    ax.plot(t, [s["retrying"] if s.get("retrying") is not None else float("nan") for s in samples], label="notifications retry tiers")
    ax.plot(t, [s["outbox"] if s["outbox"] is not None else float("nan") for s in samples], label="checkout outbox unpublished")
    ax.set(xlabel="seconds from opening", ylabel="messages", title="Queue depth")
    markers(ax)
    ax.legend(fontsize=8)
    save(fig, "queue_depth.png")

    if line:
        fig, ax = plt.subplots(figsize=(9, 4))
        opened = line["opens_at"] + (line["opened_after_opening_s"] or 0.0) - opens_at
        per_second = line["admissions_per_second"]
        ax.bar([opened + i for i in range(len(per_second))], per_second, width=0.9, align="edge", color="#cde",
               label="admitted per second")
        judged = [s for s in samples if s.get("active_passes") is not None and s.get("line_remaining") is not None]
        ax.plot([s["t"] - opens_at for s in judged], [s["active_passes"] for s in judged], drawstyle="steps-post",
                label="active passes (admitted, unused, unexpired)")
        ax.plot([s["t"] - opens_at for s in judged], [s["line_remaining"] * s["factor"] for s in judged],
                drawstyle="steps-post", linestyle="--", label="remaining units x factor (the line's)")
        ax.set(xlabel="seconds from opening", ylabel="buyers / units", title="The line: admissions and passes in play")
        markers(ax)
        ax.legend(fontsize=8)
        save(fig, "line.png")
    return files


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}"
    return f"{value}{unit}"


def verdicts(figures: dict) -> list[tuple[str, bool, str]]:
    checks, crowd = figures["checks"], figures["crowd"]
    restart = figures.get("database_restart")
    during_restart = [] if restart is None else [
        ("database restart: sold units = units of confirmed orders", restart["sold_units"] == restart["confirmed_units"],
         f"{restart['sold_units']} / {restart['confirmed_units']}"),
        ("database restart: units held without an order = 0", restart["holds_without_order"] == 0,
         str(restart["holds_without_order"])),
    ]
    run = figures["run"]
    # Every other must-hold is "nothing went wrong", which a drop where nobody could buy passes
    # too: with more buyers than units, each of whom got an answer (none gave up, none was cut
    # off by the run's end), the stock must have gone to them. Otherwise (a fault that made some
    # give up, a run cut short) units may rightly be left: then no buyer may have been told sold
    # out while they were.
    left = checks["available_after"]
    if run["buyers"] > run["units"] and not sum(crowd["gave_up"].values()):
        sold = [(f"the drop sold out ({run['buyers']:,} buyers, every one answered, for {run['units']:,} units)",
                 left == 0, f"{left} unit(s) never held or sold")]
    else:
        sold = [("no buyer told sold out while units were left unsold", not (crowd["told_sold_out"] and left),
                 f"{crowd['told_sold_out']:,} told sold out, {left} unit(s) never held or sold")]
    return [
        ("no 5xx answer (but a 503 with Retry-After)", crowd["unexpected_5xx"] == 0, str(crowd["unexpected_5xx"])),
        *sold,
        *line_verdicts(figures.get("line")),
        ("oversold units = 0", checks["oversold_units"] == 0, str(checks["oversold_units"])),
        ("stock accounted for (available + held + sold = quantity)", checks["stock_accounted_for"], ""),
        ("confirmed orders without a sale = 0", not checks["confirmed_without_sale"], str(len(checks["confirmed_without_sale"]))),
        ("confirmed orders without an email = 0", not checks["confirmed_without_email"], str(len(checks["confirmed_without_email"]))),
        ("duplicate emails = 0", checks["duplicate_emails"] == 0, str(checks["duplicate_emails"])),
        *during_restart,
    ]


def line_verdicts(line: dict | None) -> list[tuple[str, bool, str]]:
    """The line's must-holds (waiting_room.py says how each is judged)."""
    if not line:
        return []
    fair, passes, heard = line["fairness"], line["passes_within_stock"], line["sold_out"]
    if "checks" in fair:
        failed = [name for name, ok in fair["checks"].items() if not ok]
        fair_value = (f"{fair['admitted']:,} admissions compared: pre-queue of {fair['pre_queue']:,} by the seed, "
                      f"then {fair['later_arrivals']:,} later arrivals" if not failed
                      else f"fails: {'; '.join(failed)} (first difference at admission {fair['first_difference_at']})")
    else:
        fair_value = fair["why"]
    told = heard.get("told") or {}
    heard_value = (heard["why"] if heard["sold_out_at"] is None else
                   f"{heard['waiting']:,} waiting: {heard['later_than_limit']} later than {heard['limit_seconds']:g} s, "
                   f"{heard['never_told']} never told; slowest {_fmt(told.get('max_s'), ' s')}")
    return [
        ("line: admission order = the revealed seed's order, then arrival order", fair["holds"], fair_value),
        *([_passes_verdict(passes)] if passes["judged"] else []),
        (f"line: every waiting buyer told sold out within {heard['limit_seconds']:g} s of the sell-out", heard["holds"],
         heard_value),
    ]


def _passes_verdict(passes: dict) -> tuple[str, bool, str]:
    return ("line: samples with more passes in play (holder holds no unit yet) than remaining units x factor = 0",
            passes["violating_samples"] == 0 and passes["samples"] > 0,  # no sample read judges nothing
            f"{passes['violating_samples']} of {passes['samples']} samples (most passes in play: "
            f"{_fmt(passes['max_active_passes'])})")


def warnings(figures: dict) -> list[tuple[str, bool, str]]:
    """What a buyer would notice without anything being lost: shown, not failed on."""
    checks, crowd = figures["checks"], figures["crowd"]
    gave_up = sum(crowd["gave_up"].values())
    return [
        ("units held without an order (unsold until the hold expires)", not checks["holds_without_order"],
         str(len(checks["holds_without_order"]))),
        ("idempotency keys claimed and never answered (left by an older version; a retry takes them over)",
         not checks.get("stuck_idempotency_keys"), str(checks.get("stuck_idempotency_keys"))),
        ("buyers who gave up without an answer", gave_up == 0, f"{gave_up} {crowd['gave_up'] or ''}".strip()),
        ("confirmation emails for orders not confirmed", not checks["emails_for_unconfirmed_orders"],
         str(len(checks["emails_for_unconfirmed_orders"]))),
        ("503s with Retry-After (retryable; expected only around a database restart)",
         not crowd["retryable_503"] or figures.get("database_restart") is not None, str(crowd["retryable_503"])),
        *line_warnings(figures.get("line"), figures["run"]["buyers"] - figures["run"].get("late_buyers", 0)),
    ]


def line_warnings(line: dict | None, buyers: int) -> list[tuple[str, bool, str]]:
    """`buyers`: those meant to join before the opening."""
    if not line:
        return []
    outside = max(0, buyers - line["pre_queue"])
    passes = line["passes_within_stock"]
    shown = [("line: buyers meant for the pre-queue not in it (joined late, or never)", outside == 0,
              f"{outside} of {buyers:,} ({line['later_arrivals']} joined after the opening in all)")]
    if not passes["judged"]:
        name, ok, value = _passes_verdict(passes)
        shown.append((name, ok, f"{value}; a factor above 1: shown, not failed on"))
    shown.append(("line: samples with more passes in play than the line's remaining units x factor, as checkout "
                  "alone sees it (an order in flight counts twice)", passes["checkout_view_violating_samples"] == 0,
                  f"{passes['checkout_view_violating_samples']} of {passes['checkout_view_samples']} samples (most "
                  f"passes whose holder already held a unit: {_fmt(passes['max_passes_holding_a_unit'])})"))
    return shown


def _answers_text(answers: dict) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{n} × {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
                     for name, kinds in answers.items()) or "none"


def database_restart_markdown(restart: dict) -> list[str]:
    took = restart["restart_command_seconds"]
    unavailable = (f"{restart['unavailable_from_s']:+.2f} s to {restart['unavailable_until_s']:+.2f} s: "
                   f"**{restart['unavailable_seconds']:.2f} s**" if restart["unavailable_seconds"] is not None
                   else "not seen (shorter than the probe's 50 ms)")
    unexpected = sum(restart["unexpected_5xx"].values())
    return [
        "| figure | value |",
        "|---|---|",
        f"| restart issued (`pg_ctlcluster --mode fast restart`) | {restart['restarted_at_s']:+.2f} s from the opening; "
        f"the command returned after {_fmt(took, ' s')} |",
        f"| PostgreSQL unavailable (a new connection answered no query) | {unavailable} |",
        f"| answers while it was unavailable | {_answers_text(restart['answers_while_unavailable'])} |",
        f"| answers in the {restart['aftermath_seconds']:.0f} s after it was back | {_answers_text(restart['answers_just_after'])} |",
        f"| 5xx but a 503 with Retry-After, from the restart to {restart['aftermath_seconds']:.0f} s after | "
        f"{unexpected}{' ' + str(restart['unexpected_5xx']) if unexpected else ''} |",
        f"| sold units / units of confirmed orders | {restart['sold_units']} / {restart['confirmed_units']} |",
        f"| units held without an order | {restart['holds_without_order']} |",
    ]


def _spread_text(spread: dict, unit: str = "s") -> str:
    if not spread or not spread["count"]:
        return "n/a"
    return (f"{_fmt(spread['p50_s'])} / {_fmt(spread['p95_s'])} / {_fmt(spread['max_s'])} {unit} "
            f"(n={spread['count']:,})")


def _seconds(spread: dict) -> dict:
    """A spread measured in seconds, in ms (latencies read better so)."""
    return {k: (round(v * 1000, 1) if k != "count" and v is not None else v) for k, v in spread.items()}


def line_markdown(line: dict) -> list[str]:
    settings, fair, passes, heard = line["settings"], line["fairness"], line["passes_within_stock"], line["sold_out"]
    told = heard.get("told") or {}
    sell_out = ("did not sell out" if heard["sold_out_at"] is None else
                f"{heard['sold_out_at'] - line['opens_at']:+.2f} s (inventory's last unit held); sampler: remaining 0 "
                f"first read at {_rel(heard['first_sample_remaining_zero'], line['opens_at'])}, and the line's 0 units "
                f"with no pass in play at {_rel(heard['first_sample_no_units_no_passes'], line['opens_at'])}")
    out = [
        "| figure | value |",
        "|---|---|",
        f"| line | admission factor {settings['admission_factor']:g}, at most {settings['admission_rate']:g} admitted/s, "
        f"passes valid {settings['pass_ttl_seconds']} s; {line.get('admitters', 1)} admitter process(es); opened (seed revealed) "
        f"{_fmt(line['opened_after_opening_s'], ' s')} after the opening time |",
        f"| buyers joined / tickets | {line['buyers_joined']:,} / {line['tickets']:,} ({line['joins_answered_before_opening']:,} "
        f"joins answered before the opening) |",
        f"| pre-queue (placed by the seed) / later arrivals | {line['pre_queue']:,} / {line['later_arrivals']:,} |",
        f"| admitted / passes used for an order / expired unused / never admitted | {line['admitted']:,} / "
        f"{line['passes_used']:,} / {line['passes_expired_unused']:,} / {line['never_admitted']:,} |",
        f"| time in line, joining to admission (tickets' joined_at, admitted_at), p50 / p95 / max | "
        f"{_spread_text(line['time_in_line_from_joining'])} |",
        f"| time in line after the opening, p50 / p95 / max | {_spread_text(line['time_in_line_after_opening'])} |",
        f"| joining to hearing \"admitted\" (the buyers' own clocks, polls included), p50 / p95 / max | "
        f"{_spread_text(line['time_to_hear_admitted_from_join'])} |",
        f"| how the buyers left the line | {', '.join(f'{k}: {v:,}' for k, v in line['buyers_left_the_line'].items() if v)} |",
        f"| joins answered | {', '.join(f'{k}: {v:,}' for k, v in line['join_answers'].items())}; p50 / p95 / max "
        f"{_spread_text(_seconds(line['join_latency']), 'ms')} |",
        f"| polls answered (the edge) | {', '.join(f'{k}: {v:,}' for k, v in line['poll_answers'].items())}; busiest "
        f"second (with the own polls) {line['busiest_poll_second']:,}; p50 / p95 / max "
        f"{_spread_text(_seconds(line['poll_latency']), 'ms')} |",
        f"| the buyers' own polls (checkout, signed in: the pass) | "
        f"{', '.join(f'{k}: {v:,}' for k, v in line.get('own_poll_answers', {}).items())}; p50 / p95 / max "
        f"{_spread_text(_seconds(line['own_poll_latency']), 'ms') if line.get('own_poll_latency') else 'n/a'} |",
        f"| sell-out | {sell_out} |",
        f"| waiting buyers told sold out (sell-out to the poll that said so), p50 / p95 / max | "
        f"{_spread_text(told) if told else 'n/a'}; {heard['later_than_limit']} later than {heard['limit_seconds']:g} s, "
        f"{heard['never_told']} never told ({heard.get('left_before_the_sell_out', 0)} had left before, "
        f"{heard.get('admitted_after_the_sell_out', 0)} admitted after it as units came back) |",
        f"| passes in play vs remaining units x factor | {passes['samples']:,} samples over {passes['seconds_covered']} s, "
        f"most passes in play {_fmt(passes['max_active_passes'])} (at most {_fmt(passes['max_passes_holding_a_unit'])} "
        f"of them already holding a unit), **{passes['violating_samples']} samples over** "
        f"({passes['checkout_view_violating_samples']} as checkout alone sees it) |",
        "",
        "### Admissions per second (from the line's opening)",
        "",
    ]
    per_second = line["admissions_per_second"]
    if per_second:
        out += [f"`{sparkline(per_second)}` ({len(per_second)} s, busiest {max(per_second):,}/s)", "",
                "| second | admitted |", "|---|---|"]
        shown = [(i, n) for i, n in enumerate(per_second) if n]
        out += [f"| {i} | {n:,} |" for i, n in shown[:40]]
        if len(shown) > 40:
            out.append(f"| ... | {sum(n for _, n in shown[40:]):,} more in {len(shown) - 40} seconds |")
    else:
        out.append("nobody was admitted")
    out += ["", "### Fairness (anyone can check it: `GET /drops/{id}/line/order`)", ""]
    if "checks" in fair:
        out += [f"- {'PASS' if ok else '**FAIL**'}: {name}" for name, ok in fair["checks"].items()]
        out += [f"- seed `{fair['seed']}`; {fair['algorithm']}",
                f"- {fair['compared']:,} admissions compared with the expected order"
                + (f"; first difference at admission {fair['first_difference_at']}" if fair["first_difference_at"] is not None
                   else "; no difference")]
        if fair["joined_before_opening_but_missing"]:
            out.append(f"- joined before the opening but not in the pre-queue: {fair['joined_before_opening_but_missing']}")
    else:
        out.append(f"- **FAIL**: {fair['why']}")
    for title, chosen in (("Samples with more passes in play (holder holds no unit yet) than available units x factor",
                           passes["violations"]),
                          ("Samples with more passes in play than the line's remaining units x factor, as checkout "
                           "alone sees it", passes["checkout_view_violations"])):
        if chosen:
            out += ["", f"{title} (first 20):", "",
                    "| t (s from opening) | passes in play | of them holding a unit | available (inventory) | "
                    "remaining (the line's copy) | factor |", "|---|---|---|---|---|---|"]
            out += [f"| {v['t'] - line['opens_at']:+.2f} | {v['active_passes']} | {v['holding_a_unit']} | {v['available']} "
                    f"| {v['line_remaining']} | {v['factor']:g} |" for v in chosen]
    return out


def _rel(t: float | None, origin: float) -> str:
    return "n/a" if t is None else f"{t - origin:+.2f} s"


def observed_markdown(observed: dict) -> list[str]:
    """The drop as an operator saw it: the control room at the sell-out, the slowest order's trace."""
    lines = ["## The control room at the sell-out", ""]
    room = observed.get("control_room")
    if room is None:
        lines.append("Not taken (`--no-control-room`).")
    elif room.get("screenshot"):
        lines += [f"![the control room at the sell-out]({room['screenshot']})", "",
                  f"Taken {room['seconds_after_the_sampler_saw_it']} s after the sampler first read no units left."]
    else:
        lines.append(f"No screenshot: {room['why_not']}.")
    lines += ["", "## The slowest order's trace", ""]
    trace = observed.get("slowest_order_trace")
    if trace is None:
        lines.append("No trace (`--no-trace`, or no order was traced).")
        return lines
    lines += [f"Trace `{trace['trace_id']}`, order `{trace['order_id']}`: `POST /orders` took {trace['post_orders_ms']:,} ms, "
              f"the slowest of the {trace['orders_traced']:,} orders answered 201. Every span of the trace, in the "
              "order they began (ms from the first):", "",
              "| at ms | ms | process | span |", "|---|---|---|---|"]
    lines += [f"| {s['at_ms']:,} | {s['ms']:,} | {s['process']} | {'· ' * s['depth']}{s['name']} ({s['kind'].lower()}) |"
              for s in trace["spans"]]
    return lines


def request_costs(log_dir: Path, since: float = 0.0, until: float = math.inf) -> list[dict]:
    """Each API's requests by route, method and status, logged between `since` and `until`
    (epoch seconds), from the request lines of the stack's logs (shared/web.py logs every request
    with `cpu_ms`, the CPU its thread spent in the app): how many, and their CPU in all and per
    request; the dearest kinds first."""
    kinds: dict[tuple, list[float]] = defaultdict(list)
    for path in sorted(log_dir.glob("*-api.log")):
        for text in path.read_text(errors="replace").splitlines():
            if '"message": "request"' not in text:
                continue
            try:
                line = json.loads(text)
                # logging's asctime: the machine's local time, to the millisecond
                logged = datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if since <= logged <= until:
                    kinds[(line["service"], line["method"], line["route"], line["status"])].append(float(line["cpu_ms"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a killed worker, or written before these fields
    dearest_first = sorted(kinds.items(), key=lambda kind: -sum(kind[1]))
    return [{"service": service, "request": f"{method} {route}", "status": status, "count": len(cpu),
             "cpu_seconds": round(sum(cpu) / 1000, 2), "cpu_ms_mean": round(sum(cpu) / len(cpu), 2),
             "cpu_ms_p50": percentile(cpu, 50, digits=2)}
            for (service, method, route, status), cpu in dearest_first]


def cpu_markdown(cpu: dict | None, costs: list[dict] | None, orders: int) -> list[str]:
    lines = []
    if cpu:
        per_order = (lambda seconds: f"{1000 * seconds / orders:.1f}") if orders else (lambda seconds: "n/a")
        lines += [f"From the opening until the crowd had gone ({cpu['seconds']:.1f} s), the machine was busy "
                  f"{cpu['machine_seconds']:.1f} CPU seconds ({per_order(cpu['machine_seconds'])} ms per order placed). "
                  "Per process group (`/proc`):", "",
                  "| process group | CPU s | ms per order placed |", "|---|---|---|"]
        lines += [f"| {name} | {used:.2f} | {per_order(used)} |" for name, used in cpu["groups"].items() if used >= 0.01]
    if costs:
        lines += ["", "CPU per request answered in that time, as each API logged it (`cpu_ms`: the thread's CPU "
                      "in the app, from the first hook to the last; gunicorn's parsing and the refusals at the "
                      "order gate are outside it):", "",
                  "| service | request | status | count | CPU s | ms each (mean / p50) |", "|---|---|---|---|---|---|"]
        lines += [f"| {row['service']} | {row['request']} | {row['status']} | {row['count']} | {row['cpu_seconds']:.2f} "
                  f"| {row['cpu_ms_mean']:.2f} / {_fmt(row['cpu_ms_p50'])} |" for row in costs if row["cpu_seconds"] >= 0.01]
    return lines


def markdown(figures: dict, images: list[str]) -> str:
    crowd, checks, headline = figures["crowd"], figures["checks"], figures["headline"]
    run = figures["run"]
    lines = [
        f"# Drop rehearsal {run['started']}",
        "",
        f"`{run['command']}`  ",
        f"machine: {run['machine']}"
        + (f"; up to {run['load_average_max']:.1f} during the drop  " if run.get("load_average_max") is not None else "  "),
        f"stack: {run['stack']}; faults: {', '.join(run['faults']) or 'none'}"
        + (f" (skipped: {', '.join(f'{k}: {v}' for k, v in run['faults_skipped'].items())})" if run["faults_skipped"] else "")
        + f"; wall time {run['wall_seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in run.get("phases", {}).items()) + ")",
        "",
        "## Verdicts",
        "",
        "| must hold (PASS/FAIL), should hold (ok/WARN) | | value |",
        "|---|---|---|",
    ]
    for name, ok, value in verdicts(figures):
        lines.append(f"| {name} | {'PASS' if ok else '**FAIL**'} | {value} |")
    for name, ok, value in warnings(figures):
        lines.append(f"| {name} | {'ok' if ok else '**WARN**'} | {value} |")
    ratio = f"{headline['ratio_to_pgbench']:.3f}" if headline["ratio_to_pgbench"] is not None else "n/a"
    o = crowd["post_orders_latency_all"]
    o201 = crowd["post_orders_latency_201"]
    lines += [
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---|",
        f"| drop | {run['units']} units, {run['buyers']} buyers ({run.get('buyers_made', 'registered and signed in')}), "
        + ("through a line (below) |" if figures.get("line") else "released at once |"),
        f"| orders placed (201) | {crowd['orders_placed']} |",
        f"| orders confirmed (checkout database) | {checks['confirmed_orders']} |",
        f"| buyers told sold out | {crowd['told_sold_out']} |",
        f"| sell-out time (opening to last unit placed) | {_fmt(headline['sell_out_seconds'], ' s')} |",
        f"| orders placed per second (while stock lasted) | {_fmt(headline['placed_per_second'])} |",
        f"| orders confirmed per second (opening to last confirmation) | {_fmt(headline['confirmed_per_second'])} |",
        f"| POST /orders answered per second (busiest second) | {_fmt(headline['peak_answers_per_second'])} |",
        f"| POST /orders p50 / p95 / p99, all answers | {_fmt(o['p50_ms'])} / {_fmt(o['p95_ms'])} / {_fmt(o['p99_ms'])} ms (n={o['count']}, max {_fmt(o['max_ms'])}) |",
        f"| POST /orders p50 / p95 / p99, 201 only | {_fmt(o201['p50_ms'])} / {_fmt(o201['p95_ms'])} / {_fmt(o201['p99_ms'])} ms |",
        f"| load generator (Locust) CPU while the crowd was in | {_fmt(crowd['load_generator_cpu_seconds'], ' s')} of {_fmt(crowd['crowd_seconds'], ' s')} |",
        f"| time to all sales after recovery | {_fmt(checks['seconds_to_all_sales_after_recovery'], ' s')} |",
        f"| time to deliver every email after recovery | {_fmt(checks['seconds_to_all_emails_after_recovery'], ' s')} |",
        f"| pgbench, same transaction, same PostgreSQL | {_fmt(headline['pgbench_tps'])} tx/s |",
        f"| **placement rate / pgbench rate** | **{ratio}** |",
        f"| naive checkout (1 sync worker, SMTP 1 s/message) | {_fmt(headline['naive_orders_per_second'])} orders/s, p99 {_fmt(headline['naive_p99_ms'])} ms |",
        "",
        "### Answers to POST /orders",
        "",
        "| answer | count |",
        "|---|---|",
    ]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(crowd["post_orders_answers"].items(), key=lambda kv: -kv[1])]
    lines += ["", "### Errors by kind (every answer that was not 2xx, and cut connections)", ""]
    if crowd["errors_by_kind"]:
        lines += ["| request | kind | count |", "|---|---|---|"]
        for name, kinds in crowd["errors_by_kind"].items():
            lines += [f"| {name} | {kind} | {n} |" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])]
    else:
        lines.append("none")
    if crowd.get("cut_answers"):
        lines += ["", f"2xx answers cut short mid-body (a worker killed while answering; the buyers retried): "
                      f"{crowd['cut_answers']}"]
    if crowd["unexpected_5xx"]:
        lines += ["", f"**{crowd['unexpected_5xx']} ANSWERS WERE 5xx** (but a 503 with Retry-After): "
                      f"{crowd['server_errors_by_kind']}"]
    if crowd["gave_up"]:
        lines += ["", f"Buyers who gave up: {crowd['gave_up']}"]
    if figures.get("line"):
        lines += ["", "## The line", "", *line_markdown(figures["line"])]
    restart = figures.get("database_restart")
    if restart:
        lines += ["", "## Database restart", "", *database_restart_markdown(restart)]
    if figures.get("cpu") or figures.get("request_costs"):
        lines += ["", "## Where the CPU went", "",
                  *cpu_markdown(figures.get("cpu"), figures.get("request_costs"), crowd["orders_placed"])]
    if figures.get("memory"):
        lines += ["", *memory.markdown(figures["memory"])]
    if figures.get("observed"):
        lines += ["", *observed_markdown(figures["observed"])]
    lines += ["", "## Faults", "", "| t (s from opening) | fault | what happened |", "|---|---|---|"]
    lines += [f"| {e['t']:+.2f} | {e['fault']} | {e['action']}{' — ' + e['detail'] if e['detail'] else ''} |"
              for e in figures["timeline"]]
    naive = figures.get("naive")
    if naive:
        lines += ["", "## The naive checkout", "",
                  f"Same crowd ({naive['users']} buyers at once) for {naive['seconds']} s: "
                  f"{naive['orders']} orders ({_fmt(naive['orders_per_second'])}/s), "
                  f"p50 {_fmt(naive['latency']['p50_ms'])} ms, p99 {_fmt(naive['latency']['p99_ms'])} ms of the answered requests; "
                  f"{naive['unanswered']} buyers had no answer when the time was up."]
    pg = figures.get("pgbench")
    if pg:
        lines += ["", "## pgbench", "",
                  f"`{pg['command']}`: {_fmt(pg['tps'])} tx/s, {pg['clients']} clients, {pg['seconds']} s, "
                  f"{pg['stock_rows']} stock rows, average latency {_fmt(pg['latency_ms'])} ms, {pg['failed']} failed."]
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def write(out: Path, figures: dict, series: dict, samples: list[dict], opens_at: float) -> list[str]:
    images = plots(out, series, samples, opens_at, figures["timeline"], figures.get("line"))
    figures = dict(figures, series=series, samples=[dict(s, t=round(s["t"] - opens_at, 3)) for s in samples])
    (out / "report.json").write_text(json.dumps(figures, indent=2, default=str))
    (out / "report.md").write_text(markdown(figures, images))
    return images

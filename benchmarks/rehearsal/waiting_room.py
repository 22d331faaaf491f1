"""What the drop's line did, judged after the crowd has gone: from checkout's tickets, inventory's
reservations, what anyone can read (`GET /drops/{id}/line/order`), the sampler and the buyers' own
event log.

- **Fairness**: the revealed seed matches the commitment published when the line was put on;
  the published pre-queue order is the one `pre_queue_order` recomputes from the seed; it holds
  exactly the tickets the opening placed, and every buyer whose join was answered before the
  opening is in it; and the order the tickets were actually admitted in (`admitted_at`,
  ties broken by position) is that order followed by the later arrivals in arrival order (as far
  as admissions went: the admitted tickets are a prefix of it).
- **Passes within the stock**: no sample in which more passes were in play (admitted, unused,
  unexpired) than the remaining units x the admission factor (`passes_within_stock` says exactly
  which passes and which units; sampler.py how they are read).
- **Sold out heard**: the sell-out is the moment inventory's reservations first took the drop's
  last unit (their `created_at`, a released hold giving its unit back at its `updated_at`); each
  buyer whose ticket was waiting then (joined, not admitted) must have heard `sold_out` from a
  poll within SOLD_OUT_HEARD_WITHIN seconds of it.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import requests

from benchmarks.rehearsal.checks import rows
from benchmarks.rehearsal.events import JOIN_LINE, POLL_PLACE, POLL_TICKET
from benchmarks.rehearsal.report import percentile
from services.checkout.line import pre_queue_order

SOLD_OUT_HEARD_WITHIN = 5.0  # seconds, the must-show


def _spread(values: list[float]) -> dict:
    return {"count": len(values), "p50_s": percentile(values, 50, digits=3),
            "p95_s": percentile(values, 95, digits=3), "max_s": round(max(values), 3) if values else None}


def published_order(checkout_url: str, drop_id: str) -> dict:
    """Every page of `GET /drops/{id}/line/order`: the seed and the pre-queue's ticket ids."""
    tickets, offset, seed, algorithm = [], 0, None, None
    with requests.Session() as http:
        while offset is not None:
            response = http.get(f"{checkout_url}/drops/{drop_id}/line/order",
                                params={"limit": 10_000, "offset": offset}, timeout=30)
            response.raise_for_status()
            page = response.json()
            seed, algorithm = page["seed"], page["algorithm"]
            tickets += page["tickets"]
            offset = page["next_offset"]
    return {"seed": seed, "algorithm": algorithm, "tickets": tickets}


def sell_out_moment(rig, drop_id: str) -> float | None:
    """When inventory's holds first took the drop's last unit (epoch seconds), or None."""
    inventory = rig.stack.infra.database_url("inventory")
    [(quantity, restocked)] = rows(inventory, "SELECT quantity, restocked FROM drops WHERE id = :d", d=drop_id)
    changes = []
    for created, updated, status, units in rows(
            inventory, "SELECT created_at, updated_at, status, quantity FROM reservations WHERE drop_id = :d", d=drop_id):
        changes.append((created.timestamp(), units))
        if status == "released":
            changes.append((updated.timestamp(), -units))
    taken = 0
    for at, units in sorted(changes):
        taken += units
        if taken >= quantity + restocked:
            return at
    return None


def _tickets(rig, drop_id: str) -> tuple[dict, list[dict]]:
    checkout = rig.stack.infra.database_url("checkout")
    [line] = rows(checkout, "SELECT opens_at, opened_at, seed, commitment, joined, pre_queue_size, admitted_through, "
                             "admission_factor, admission_rate, pass_ttl_seconds FROM lines WHERE drop_id = :d", d=drop_id)
    tickets = [
        {"id": str(r.id), "arrival": r.arrival, "position": r.position, "joined_at": r.joined_at.timestamp(),
         "admitted_at": r.admitted_at.timestamp() if r.admitted_at else None,
         "used_at": r.used_at.timestamp() if r.used_at else None,
         "pass_expires_at": r.pass_expires_at.timestamp() if r.pass_expires_at else None}
        for r in rows(checkout, "SELECT id, arrival, position, joined_at, admitted_at, pass_expires_at, used_at "
                                 "FROM line_tickets WHERE drop_id = :d", d=drop_id)
    ]
    return line._asdict(), tickets


def _in_pre_queue(ticket: dict, line: dict) -> bool:
    return ticket["position"] is not None and ticket["position"] <= line["pre_queue_size"]


def fairness(line: dict, tickets: list[dict], published: dict, commitment: str, joined_before_opening: set[str]) -> dict:
    """The admission order against the one the revealed seed gives, then first come first served."""
    seed = bytes.fromhex(published["seed"]) if published["seed"] else None
    if seed is None:
        return {"holds": False, "why": "the seed was never revealed (the line did not open)"}
    recomputed = [str(t) for t in pre_queue_order(seed, published["tickets"])]
    pre_queue = {t["id"] for t in tickets if _in_pre_queue(t, line)}
    # arrival numbers come from a sequence: their order is the order of the joins' commits
    later = [t["id"] for t in sorted((t for t in tickets if not _in_pre_queue(t, line)), key=lambda t: t["arrival"])]
    expected = recomputed + later
    admitted = [t["id"] for t in sorted((t for t in tickets if t["admitted_at"] is not None),
                                        key=lambda t: (t["admitted_at"], t["position"]))]
    first_difference = next((i for i, (a, b) in enumerate(zip(admitted, expected)) if a != b), None)
    if first_difference is None and len(admitted) > len(expected):
        first_difference = len(expected)
    missing = joined_before_opening - set(published["tickets"])
    checks = {
        "seed matches the commitment published before the opening":
            hashlib.sha256(seed).hexdigest() == commitment == line["commitment"],
        "published order = pre_queue_order(seed, its ticket ids)": published["tickets"] == recomputed,
        "published pre-queue = the tickets placed at the opening (positions 1..N)": set(published["tickets"]) == pre_queue,
        "every buyer whose join was answered before the opening is in it": not missing,
        "admission order (admitted_at, then position) = seed's order, then arrival order": first_difference is None,
    }
    return {
        "holds": all(checks.values()),
        "checks": checks,
        "pre_queue": len(published["tickets"]),
        "later_arrivals": len(later),
        "admitted": len(admitted),
        "compared": min(len(admitted), len(expected)),
        "first_difference_at": first_difference,
        "joined_before_opening_but_missing": sorted(missing)[:20],
        "algorithm": published["algorithm"],
        "seed": published["seed"],
    }


def passes_within_stock(samples: list[dict]) -> dict:
    """Samples in which more passes were in play than the stock allows (see sampler.py):

    - judged (the must-hold): passes in play whose buyer holds no unit of the drop yet, against
      the units inventory still had a moment before, x the factor;
    - as checkout alone sees it: every pass in play against the units the admitter last read, x
      the factor. An order in flight (its unit held, its pass not yet marked used) counts here
      twice, once in the passes and once as a unit gone, so this one may be crossed for a moment
      without any admission too many; shown, not failed on.

    With a factor above 1 the bound falls by the factor for each unit sold while only one pass is
    spent, so it can be crossed between admissions without any admission too many: the judged
    figure is then shown, not failed on, too."""
    judged = [s for s in samples if s.get("available") is not None and s.get("active_passes") is not None
              and s.get("line_opened")]
    over = [s for s in judged if s["active_passes"] - s["passes_holding_a_unit"] > s["available"] * s["factor"] + 1e-9]
    checkout_view = [s for s in judged if s.get("line_remaining") is not None]
    over_in_checkout = [s for s in checkout_view if s["active_passes"] > s["line_remaining"] * s["factor"] + 1e-9]

    def described(chosen: list[dict]) -> list[dict]:
        return [{"t": s["t"], "active_passes": s["active_passes"], "holding_a_unit": s["passes_holding_a_unit"],
                 "available": s["available"], "line_remaining": s.get("line_remaining"), "factor": s["factor"]}
                for s in chosen[:20]]

    factor = max((s["factor"] for s in judged), default=1.0)
    return {
        "samples": len(judged),
        "violating_samples": len(over),
        "violations": described(over),
        "judged": factor <= 1.0,
        "checkout_view_samples": len(checkout_view),
        "checkout_view_violating_samples": len(over_in_checkout),
        "checkout_view_violations": described(over_in_checkout),
        "max_active_passes": max((s["active_passes"] for s in judged), default=None),
        "max_passes_holding_a_unit": max((s["passes_holding_a_unit"] for s in judged), default=None),
        "seconds_covered": round(judged[-1]["t"] - judged[0]["t"], 1) if len(judged) > 1 else 0.0,
    }


def heard_sold_out(tickets: list[dict], events: list[dict], sold_out_at: float | None) -> dict:
    """For each buyer waiting at the sell-out: how long until a poll told it `sold_out`."""
    if sold_out_at is None:
        return {"sold_out_at": None, "waiting": 0, "late_or_never": 0, "holds": True,
                "why": "the drop did not sell out"}
    buyer_of = {e["ticket_id"]: e["buyer"] for e in events if e["ev"] == "joined"}
    heard: dict[int, float] = {}
    left_at: dict[int, float] = {}
    for e in events:
        if e["ev"] == "sold_out" and e.get("via") == "line":
            heard.setdefault(e["buyer"], e["t"])
        elif e["ev"] in ("gave_up", "left_line") and "buyer" in e:
            left_at.setdefault(e["buyer"], e["t"])
    delays, never, left_before, admitted_after = [], [], 0, 0
    for t in tickets:
        if t["joined_at"] > sold_out_at or (t["admitted_at"] is not None and t["admitted_at"] <= sold_out_at):
            continue
        buyer = buyer_of.get(t["id"])
        if buyer is not None and buyer in left_at and left_at[buyer] <= sold_out_at and buyer not in heard:
            left_before += 1
            continue
        if t["admitted_at"] is not None and buyer not in heard:
            admitted_after += 1  # units came back and the line admitted it: it was never sold out to it
            continue
        if buyer in heard:
            delays.append(heard[buyer] - sold_out_at)
        else:
            never.append(t["id"])
    late = [d for d in delays if d > SOLD_OUT_HEARD_WITHIN]
    return {
        "sold_out_at": sold_out_at,
        "waiting": len(delays) + len(never),
        "told": _spread(delays),
        "later_than_limit": len(late),
        "never_told": len(never),
        "never_told_tickets": never[:20],
        "late_or_never": len(late) + len(never),
        "left_before_the_sell_out": left_before,
        "admitted_after_the_sell_out": admitted_after,
        "limit_seconds": SOLD_OUT_HEARD_WITHIN,
        "holds": not late and not never,
    }


def figures(rig, drop_id: str, events: list[dict], samples: list[dict], opens_at: float, commitment: str) -> dict:
    """Everything the report says about the line (see the module's docstring)."""
    line, tickets = _tickets(rig, drop_id)
    published = published_order(rig.stack.url("checkout"), drop_id)
    opened_at = line["opened_at"].timestamp() if line["opened_at"] else None
    joins = [e for e in events if e["ev"] == "joined"]
    joined_before_opening = {e["ticket_id"] for e in joins if e["t"] < opens_at}

    admitted = [t for t in tickets if t["admitted_at"] is not None]
    from_joining = [t["admitted_at"] - t["joined_at"] for t in admitted]
    after_opening = [t["admitted_at"] - max(t["joined_at"], opened_at or t["joined_at"]) for t in admitted]
    joined_when = {e["buyer"]: e["t"] for e in joins}
    heard_admitted = [e["t"] - joined_when[e["buyer"]] for e in events
                      if e["ev"] == "ticket" and e["state"] == "admitted" and e["buyer"] in joined_when]

    per_second: list[int] = []
    if opened_at is not None and admitted:
        per_second = [0] * (int(max(t["admitted_at"] for t in admitted) - opened_at) + 1)
        for t in admitted:
            per_second[max(0, int(t["admitted_at"] - opened_at))] += 1

    requests_ = [e for e in events if e["ev"] == "request" and e["name"] in (JOIN_LINE, POLL_PLACE, POLL_TICKET)]
    answers: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    for e in requests_:
        answers[e["name"]][e["kind"]] += 1
        if e["status"] and e["status"] < 500:
            latencies[e["name"]].append(e["ms"])
    polls_by_second = Counter(int(e["t"] - opens_at) for e in requests_ if e["name"] in (POLL_PLACE, POLL_TICKET))
    outcomes = Counter(e["state"] for e in events if e["ev"] == "left_line")
    outcomes["sold out (line)"] = sum(1 for e in events if e["ev"] == "sold_out" and e.get("via") == "line")
    outcomes["sold out (order)"] = sum(1 for e in events if e["ev"] == "sold_out" and e.get("via") == "order")
    outcomes["admitted"] = sum(1 for e in events if e["ev"] == "ticket" and e["state"] == "admitted")

    sold_out_at = sell_out_moment(rig, drop_id)
    first_zero = next((s["t"] for s in samples if s.get("remaining") == 0), None)
    first_zero_no_passes = next((s["t"] for s in samples if s.get("line_remaining") == 0 and s.get("active_passes") == 0),
                                None)
    return {
        "settings": {"admission_factor": line["admission_factor"], "admission_rate": line["admission_rate"],
                     "pass_ttl_seconds": line["pass_ttl_seconds"]},
        "opens_at": opens_at,
        "opened_after_opening_s": round(opened_at - opens_at, 3) if opened_at else None,
        "tickets": len(tickets),
        "buyers_joined": len({e["buyer"] for e in joins}),
        "joins_answered_before_opening": len(joined_before_opening),
        "pre_queue": line["pre_queue_size"],
        "later_arrivals": sum(1 for t in tickets if not _in_pre_queue(t, line)),
        "admitted": len(admitted),
        "passes_used": sum(1 for t in tickets if t["used_at"] is not None),
        "passes_expired_unused": sum(1 for t in admitted if t["used_at"] is None and t["pass_expires_at"]
                                     and t["pass_expires_at"] <= (samples[-1]["t"] if samples else 0)),
        "never_admitted": len(tickets) - len(admitted),
        "buyers_left_the_line": dict(outcomes),
        "time_in_line_from_joining": _spread(from_joining),
        "time_in_line_after_opening": _spread(after_opening),
        "time_to_hear_admitted_from_join": _spread(heard_admitted),
        "admissions_per_second": per_second,
        "join_answers": dict(answers[JOIN_LINE]),
        "poll_answers": dict(answers[POLL_PLACE]),  # the crowd's polls, at the public edge
        "join_latency": _spread([ms / 1000 for ms in latencies[JOIN_LINE]]),
        "poll_latency": _spread([ms / 1000 for ms in latencies[POLL_PLACE]]),
        "polls": sum(answers[POLL_PLACE].values()),
        # the buyers' own polls at checkout: once admitted (the pass), or before the edge knew them
        "own_poll_answers": dict(answers[POLL_TICKET]),
        "own_poll_latency": _spread([ms / 1000 for ms in latencies[POLL_TICKET]]),
        "busiest_poll_second": max(polls_by_second.values(), default=0),
        "fairness": fairness(line, tickets, published, commitment, joined_before_opening),
        "passes_within_stock": passes_within_stock(samples),
        "sold_out": dict(heard_sold_out(tickets, events, sold_out_at),
                         first_sample_remaining_zero=first_zero, first_sample_no_units_no_passes=first_zero_no_passes),
    }

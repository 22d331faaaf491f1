"""The rehearsal's event log: one JSON object a line, written by the load process, read by the CLI.

Kinds of line (`ev`):
  request   {"t": start (epoch s), "ms": latency, "name": "POST /orders", "status": 201, "kind": "201"}
            (a 429 or 503 also has "retry_after": its Retry-After header, or null)
  placed    an order was accepted (201)         {"t", "order_id", "buyer"}
  confirmed the buyer saw the order confirmed   {"t", "order_id"}
  sold_out  the buyer was told the drop sold out {"via": "order" (409 sold-out) or "line" (a poll;
            "t" is when the answer arrived)}
  gave_up   the buyer stopped without an order  {"reason"}
  done      a simulated buyer finished
  cut_answer a 2xx whose body was cut short (a worker killed while answering); retried {"name"}
With a line (`--line`), also:
  joined    the buyer's join was answered       {"t": the answer's arrival, "ticket_id", "state", "position"}
  ticket    a poll (or the join) answered a new state {"t": its arrival, "ticket_id", "state",
            "position", "ahead"}
  left_line the buyer left without an order, told {"state": "closed", "expired" or "ordered"}
"""
from __future__ import annotations

import json
from pathlib import Path

JOIN_LINE = "POST /drops/{id}/line/tickets"  # at the line's public edge
POLL_PLACE = "GET /drops/{id}/line/tickets/{ticket_id}"  # the crowd's poll, at the public edge
POLL_TICKET = "GET /drops/{id}/line/tickets/mine"  # the buyer's own poll, at checkout: the pass


def classify(status: int, problem_type: str | None = None, error: str | None = None) -> str:
    """A short, stable name for what an answer was: `201`, `409 sold-out`, `connection error`."""
    if status == 0 or status is None:
        return f"connection error ({error})" if error else "connection error"
    slug = (problem_type or "").rstrip("/").rsplit("/", 1)[-1]
    return f"{status} {slug}".strip() if status >= 300 else str(status)


class EventReader:
    """Reads the log incrementally, so the CLI can show live progress while the load runs."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

"""Liveness for processes without an HTTP port (consumers, relays, sweepers, the admitter).

Their loops call `beat()` after every turn that did its work; Kubernetes' liveness probe runs
`python -m shared.heartbeat <file> --max-age 60`, which fails when the loop has not turned for a
minute, so a process that is alive but stuck is restarted. A beat is also recorded where the
service's API can see it (`shared/last_seen.py`), for Prometheus and the control room.

A consumer or relay waiting to reconnect to the broker, or a sweeper or admitter whose turn
failed (its database away), beats another file, `reconnecting_file(<file>)`: it is alive (a
restart could not bring the broker or the database back), but not ready (its readiness probe
reads `<file>` alone, so a rollout of pods that cannot connect stops instead of replacing
working ones). Its liveness probe names both files: either fresh will do.

This module stays small: the probe imports it every few seconds in every worker's pod.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class Heartbeat:
    """Touches `path` at most once a second, and tells `last_seen` (a `shared.last_seen.LastSeen`,
    or anything with a cheap `record()`); a no-op with neither."""

    def __init__(self, path: str, last_seen=None):
        self._path = Path(path) if path else None
        self._last_seen = last_seen
        self._last = float("-inf")

    def beat(self) -> None:
        """Record that the loop turned (cheap: at most once a second, a file touched and a time noted)."""
        if self._path is None and self._last_seen is None:
            return
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        if self._path is not None:
            self._path.touch()
        if self._last_seen is not None:
            self._last_seen.record()


class Turns:
    """The heartbeats of a loop whose turns may fail (the sweeper, the admitter): `worked()` after
    a turn that did its work beats `path` and `last_seen` (ready, and the row the alerts read);
    `failed()` after one that failed beats only `reconnecting_file(path)`: alive (a restart would
    not bring the database back), not ready, and the row ages. A loop beating at every turn,
    failed or not, once looked well while it left expired holds off sale or a line stalled."""

    def __init__(self, path: str, last_seen=None):
        self.worked = Heartbeat(path, last_seen).beat
        self.failed = Heartbeat(reconnecting_file(path)).beat


def reconnecting_file(path: str) -> str:
    """The file a worker waiting to reconnect beats instead of `path` ("" for none)."""
    return f"{path}.reconnecting" if path else ""


def age_seconds(path: str) -> float:
    """Seconds since the last beat (infinite when there was none)."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")


def main() -> None:
    """The probe: exit 1 when every heartbeat named is older than `--max-age` seconds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="path")
    parser.add_argument("--max-age", type=float, default=60.0)
    args = parser.parse_args()
    age = min(age_seconds(path) for path in args.paths)
    if age > args.max_age:
        print(f"no heartbeat for {age:.0f}s (limit {args.max_age:.0f}s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Liveness for processes without an HTTP port (consumers, relays, sweepers).

Their loops call `beat()` every turn; Kubernetes' liveness probe runs
`python -m shared.heartbeat <file> --max-age 60`, which fails when the loop has not turned for a
minute, so a process that is alive but stuck is restarted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class Heartbeat:
    """Touches `path` at most once a second; a no-op without a path (local runs)."""

    def __init__(self, path: str):
        self._path = Path(path) if path else None
        self._last = 0.0

    def beat(self) -> None:
        """Record that the loop turned (cheap: touches the file at most once a second)."""
        now = time.monotonic()
        if self._path is None or now - self._last < 1.0:
            return
        self._last = now
        self._path.touch()


def age_seconds(path: str) -> float:
    """Seconds since the last beat (infinite when there was none)."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")


def main() -> None:
    """The liveness probe: exit 1 when the heartbeat is older than `--max-age` seconds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--max-age", type=float, default=60.0)
    args = parser.parse_args()
    age = age_seconds(args.path)
    if age > args.max_age:
        print(f"no heartbeat for {age:.0f}s (limit {args.max_age:.0f}s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The `make run` supervisor (`devtools.stack.supervise`) over a few cheap children instead of the
whole stack, for test_supervisor.py:

    python -m tests.unit.devtools.cheap_stack VAR_DIR

Once it handles SIGTERM, each child writes its pid to VAR_DIR/children/<name>, then the name of
every signal it receives. The graceful ones exit a moment after SIGTERM, as a shutdown takes one;
the stubborn one ignores it, as a hung process would, until the supervisor's SIGKILL (after 1 s
here, 30 s in `make run`). The supervisor prints `supervising <names>` when every child is ready.
"""
from __future__ import annotations

import sys
from pathlib import Path

from devtools.client import poll
from devtools.stack import Infra, Stack, supervise

CHILDREN = ("graceful-0", "graceful-1", "stubborn")

CHILD = """
import os, signal, sys, time

def note(line):
    with open(sys.argv[1], "a") as log:
        log.write(line + "\\n")

def stop(signum, _frame):
    note(signal.Signals(signum).name)
    if sys.argv[2] == "graceful":
        time.sleep(0.3)
        sys.exit(0)

signal.signal(signal.SIGTERM, stop)
note(str(os.getpid()))
while True:
    time.sleep(60)
"""


def child_log(var_dir: Path, name: str) -> list[str]:
    """What child `name` wrote: its pid once ready, then each signal it received."""
    log = var_dir / "children" / name
    return log.read_text().split() if log.exists() else []


class CheapStack(Stack):
    def commands(self) -> dict[str, tuple[list[str], str | None]]:
        return {name: ([sys.executable, "-c", CHILD, str(self.var_dir / "children" / name), name.split("-")[0]], None)
                for name in CHILDREN}

    def wait_until_ready(self, timeout: float = 60) -> None:
        poll(lambda: all(child_log(self.var_dir, name) for name in CHILDREN), timeout=timeout, what="every child")

    def stop_all(self, timeout: float = 1) -> None:
        super().stop_all(timeout)


def main() -> None:
    var_dir = Path(sys.argv[1])
    (var_dir / "children").mkdir(parents=True, exist_ok=True)
    supervise(CheapStack(infra=Infra(), var_dir=var_dir),
              lambda stack: print("supervising", " ".join(stack.processes), flush=True))


if __name__ == "__main__":
    main()

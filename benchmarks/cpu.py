"""CPU seconds per process group of a stack, sampled from /proc (psutil) while a benchmark runs:
`make bench`, `make bench-line` and the rehearsal split the machine's CPU with it."""
from __future__ import annotations

import os
import threading
import time

import psutil

BROKER_PROCESSES = {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}


class CpuMeter(threading.Thread):
    """CPU seconds per process group between `start()` and `stop()`.

    Processes are sampled every `interval`; one that exits keeps what it used until its last
    sample (short-lived PostgreSQL backends are rare: every service pools its connections)."""

    def __init__(self, roots: dict[int, str], interval: float = 0.5):
        super().__init__(name="cpu-meter", daemon=True)
        self.roots = dict(roots)
        self.interval = interval
        self._group: dict[int, str] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._halt = threading.Event()
        self._machine_start = self._machine_busy()
        self._t0 = time.monotonic()
        self._sample(first=True)
        self.seconds = 0.0
        self.machine_seconds = 0.0

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)

    def _classify(self, process: psutil.Process) -> str:
        pid = process.pid
        if pid == os.getpid():
            return "benchmark (this process)"
        try:
            name = process.name()
            if name == "postgres" or name.startswith("postgres:"):
                return "PostgreSQL"
            if name in BROKER_PROCESSES:
                return "RabbitMQ"
            for parent in [process, *process.parents()]:
                if parent.pid in self.roots:
                    return self.roots[parent.pid]
        except psutil.Error:
            pass
        return "other"

    def _sample(self, first: bool = False) -> None:
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            pid = process.pid
            if pid not in self._group:
                self._group[pid] = self._classify(process)
                self._first[pid] = used if first else 0.0
            self._last[pid] = used

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        """Stop sampling; CPU seconds per group."""
        self._halt.set()
        self.join()
        self._sample()
        self.seconds = time.monotonic() - self._t0
        self.machine_seconds = self._machine_busy() - self._machine_start
        groups: dict[str, float] = {}
        for pid, group in self._group.items():
            groups[group] = groups.get(group, 0.0) + max(0.0, self._last[pid] - self._first[pid])
        return groups


def stack_roots(stack) -> dict[int, str]:
    return {process.pid: name for name, process in stack.processes.items()}

"""The stack's memory while a benchmark runs, sampled from /proc (psutil): what DESIGN.md's "the
whole `make run` stack stays under 1 GiB resident memory at rest and under load; no process grows
without bound" is judged by.

Each process counts its PSS (proportional set size: a page shared by n processes counts 1/n to
each), so the sum is what the stack takes from the machine. RSS would count twice every page a
gunicorn master shares with the worker it forked. The stack is every process the stack started
and their children (its services, consumers, relays, admitter, line edge, payment simulator and
SMTP server); not PostgreSQL nor RabbitMQ, not the benchmark nor its load generator, and not
`make run`'s own supervising process (`python -m devtools.stack`), which only starts and stops
the others.

Reading a process's PSS walks its page tables: about 1 ms of CPU a process, so a sample of the
stack's 20 processes every 2 s costs the benchmark's own process about 1 % of a core."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

BUDGET_MIB = 1024  # DESIGN.md: the whole stack under 1 GiB resident, at rest and under load
MIB = 2 ** 20


def stack_memory(roots: dict[int, str]) -> dict[str, int]:
    """PSS bytes now, per named root process with its children (a gunicorn master with its
    workers); a process that has gone counts nothing."""
    import psutil  # the benchmarks' requirement (requirements-bench.txt), not the tests'

    groups: dict[str, int] = {}
    for pid, name in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in tree:
            try:
                groups[name] = groups.get(name, 0) + process.memory_full_info().pss
            except psutil.Error:
                continue
    return groups


@dataclass
class Stage:
    """One stretch of the run, named for what ran in it: the largest total seen while it ran (with
    each process group's share then), and every group's memory at its end."""

    name: str
    peak_total: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)
    at_end: dict[str, int] = field(default_factory=dict)

    def saw(self, sample: dict[str, int]) -> None:
        if sum(sample.values()) >= self.peak_total:
            self.peak_total, self.at_peak = sum(sample.values()), dict(sample)


class MemoryMeter(threading.Thread):
    """Samples `measure(roots())` every `interval` seconds from `start()` to `stop()`. The run is
    cut into stages: `begin(name)` ends the stage running (its memory at its end is sampled then)
    and starts the next. `roots` is called at every sample, so a process the benchmark restarts
    is followed under its name."""

    def __init__(self, roots: Callable[[], dict[int, str]], interval: float = 2.0,
                 measure: Callable[[dict[int, str]], dict[str, int]] = stack_memory):
        super().__init__(name="memory-meter", daemon=True)
        self.roots, self.interval, self.measure = roots, interval, measure
        self.stages: list[Stage] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def _sample(self) -> dict[str, int]:
        sample = self.measure(self.roots())
        with self._lock:
            if self.stages:
                self.stages[-1].saw(sample)
        return sample

    def begin(self, name: str) -> None:
        """End the stage running (sampled now) and begin `name`."""
        sample = self._sample()
        with self._lock:
            if self.stages:
                self.stages[-1].at_end = sample
            self.stages.append(Stage(name))
            self.stages[-1].saw(sample)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self) -> dict:
        """End the last stage and stop sampling; the figures (`memory_figures`)."""
        self._halt.set()
        if self.is_alive():
            self.join()
        sample = self._sample()
        with self._lock:
            if self.stages:
                self.stages[-1].at_end = sample
            return memory_figures(self.stages)


def memory_figures(stages: list[Stage]) -> dict:
    """In MiB: the stack's total at rest (the first stage's start, before any load), its peak and
    the stage it came in, and each stage's peak and end, each process group's too."""
    def mib(value: int) -> float:
        return round(value / MIB, 1)

    if not stages:
        return {}
    peak = max(stages, key=lambda stage: stage.peak_total)
    groups = sorted({name for stage in stages for name in (*stage.at_peak, *stage.at_end)},
                    key=lambda name: -max((stage.at_peak.get(name, 0) for stage in stages), default=0))
    return {
        "budget_mib": BUDGET_MIB,
        "peak_mib": mib(peak.peak_total),
        "peak_during": peak.name,
        "within_budget": peak.peak_total < BUDGET_MIB * MIB,
        "stages": [{"name": stage.name, "peak_mib": mib(stage.peak_total),
                    "end_mib": mib(sum(stage.at_end.values()))} for stage in stages],
        # each group's share when the whole stack peaked, and its own largest in any stage
        "groups_at_peak_mib": {name: mib(peak.at_peak.get(name, 0)) for name in groups},
        "groups_end_mib": {name: [mib(stage.at_end.get(name, 0)) for stage in stages] for name in groups},
    }


def markdown(figures: dict) -> list[str]:
    """The memory section of a benchmark's report."""
    if not figures:
        return []
    verdict = "within" if figures["within_budget"] else "**over**"
    lines = ["## The stack's memory (PSS of every stack process; not PostgreSQL nor RabbitMQ)", "",
             f"Peak **{figures['peak_mib']} MiB** during {figures['peak_during']}: {verdict} the "
             f"{figures['budget_mib']} MiB budget.", *([figures["note"]] if figures.get("note") else []), "",
             "| stage | peak | at its end |", "|---|---|---|"]
    lines += [f"| {stage['name']} | {stage['peak_mib']} MiB | {stage['end_mib']} MiB |" for stage in figures["stages"]]
    names = [stage["name"] for stage in figures["stages"]]
    lines += ["", "Each process group, MiB: its share at the stack's peak, then its memory at the end of each stage.", "",
              f"| process | at the peak | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {name} | {figures['groups_at_peak_mib'][name]} | {' | '.join(str(v) for v in ends)} |"
              for name, ends in figures["groups_end_mib"].items()]
    return lines + [""]

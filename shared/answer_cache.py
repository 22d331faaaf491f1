"""A process's short-lived copy of public answers a crowd reads far more often than they change.

A drop's page asks for the drop (its state, its stock left) when it loads and every few seconds
after; ten thousand pages open at the opening are a thousand reads a second of an answer that a
second's delay does not change for anyone. `AnswerCache` keeps each rendered answer for at most
`seconds` and never past the moment its owner says the answer changes by the clock (a drop's
opening or closing), so a crowd's reads cost the database about one statement a second per
process, and nobody is told "scheduled" after the opening.

One render per key at a time, not a herd: while a reader renders an expired answer the others
keep the old copy for those milliseconds (at most `seconds` more, never past a change by the
clock), and when there is no copy they may serve (a new key, the opening) they wait for that
render, up to `wait_seconds`. A reader that asks for a fresh answer renders it and refreshes the
copy. A render that fails (the database is down) leaves no answer behind: one of the readers that
waited for it tries again, and the others wait for that one. `forget` after a change made in this
process: a render already under way when it was called is not kept.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

INFINITY = float("inf")


@dataclass(frozen=True)
class Answer:
    """A rendered answer and, by the cache's clock, until when it holds and when it changes by
    the clock (infinity: not by the clock)."""

    body: bytes
    fresh_until: float
    changes_at: float = INFINITY


@dataclass
class _Entry:
    answer: Answer
    stale_until: float  # while another reader renders it, the expired answer serves until then


class AnswerCache:
    """Rendered answers by key, each kept for at most `seconds`; at most `most` keys (the oldest
    go first). Safe to share between a worker's threads."""

    def __init__(self, seconds: float, most: int = 1024, clock: Callable[[], float] = time.monotonic,
                 wait_seconds: float = 5.0):
        self.seconds = seconds
        self.most = most
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}
        self._rendering: dict[Hashable, threading.Event] = {}  # keys a reader renders now
        self._forgotten = 0  # how many times `forget` was called: renders begun before are not kept
        self._lock = threading.Lock()

    def get(self, key: Hashable, render: Callable[[], tuple[bytes, float | None]], fresh: bool = False) -> Answer:
        """The answer for `key`, rendered by `render` when there is none that still holds (or when
        `fresh`). `render` returns the body and how many seconds until the answer changes by the
        clock (None: not by the clock); exceptions it raises reach the caller."""
        waited = fresh
        while True:
            started = self._clock()
            with self._lock:
                entry = self._entries.get(key)
                if not fresh and entry is not None and entry.answer.fresh_until > started:
                    return entry.answer
                underway = None if fresh else self._rendering.get(key)
                if underway is not None and entry is not None and entry.stale_until > started:
                    return entry.answer  # another reader renders it: milliseconds stale
                if underway is None or waited:
                    # a fresh read, or one that waited long enough, renders without holding others up
                    mine = None if fresh or underway is not None else threading.Event()
                    if mine is not None:
                        self._rendering[key] = mine
                    generation = self._forgotten
                    break
            # Nothing to serve yet: that render's answer. Only a render that outlasted the wait
            # lets this reader render on its own; one that ended (kept or failed) sends it round
            # again, where it reads the answer or becomes, alone, the next to render.
            waited = not underway.wait(self.wait_seconds)
        try:
            body, changes_in = render()
        except BaseException:
            self._done(key, mine)
            raise
        # from `started`, before the render read its figures and its clock: never later than they allow
        changes_at = INFINITY if changes_in is None else started + max(0.0, changes_in)
        answer = Answer(body, min(started + self.seconds, changes_at), changes_at)
        with self._lock:
            if generation == self._forgotten:
                self._entries.pop(key, None)
                if len(self._entries) >= self.most:
                    del self._entries[next(iter(self._entries))]
                self._entries[key] = _Entry(answer, stale_until=min(answer.fresh_until + self.seconds, changes_at))
        self._done(key, mine)
        return answer

    def _done(self, key: Hashable, mine: threading.Event | None) -> None:
        if mine is None:
            return
        with self._lock:
            if self._rendering.get(key) is mine:
                del self._rendering[key]
        mine.set()

    def now(self) -> float:
        """The cache's clock, which `Answer`'s times are on."""
        return self._clock()

    def forget(self, key: Hashable) -> None:
        """Drop `key`'s answer: the next reader renders it (after a change made in this process)."""
        with self._lock:
            self._entries.pop(key, None)
            self._forgotten += 1

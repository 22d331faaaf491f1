"""A process's short-lived copy of public answers a crowd reads far more often than they change.

A drop's page asks for the drop (its state, its stock left) when it loads and every few seconds
after; ten thousand pages open at the opening are a thousand reads a second of an answer that a
second's delay does not change for anyone. `AnswerCache` keeps each rendered answer for at most
`seconds` and never past the moment its owner says the answer changes by the clock (a drop's
opening or closing), so a crowd's reads cost the database about one statement a second per
process, and nobody is told "scheduled" after the opening.

When an answer expires, the first reader renders it again while the others keep the expired
copy for those few milliseconds (one render per key at a time, not a herd): at most `seconds`
more, and never past a change by the clock. A reader that asks
for a fresh answer (`Cache-Control: no-cache`) renders it and refreshes the copy. A render that
fails (the database is down) leaves no answer behind: the next reader tries again.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable


@dataclass(frozen=True)
class Answer:
    """A rendered answer and, by the cache's clock, when it was rendered and until when it holds."""

    body: bytes
    rendered_at: float
    fresh_until: float

    def fresh_for(self, now: float) -> float:
        """Seconds it still holds at `now` (0 once expired)."""
        return max(0.0, self.fresh_until - now)


@dataclass
class _Entry:
    answer: Answer
    stale_until: float  # while another reader renders it, the expired answer serves until then
    rendering: bool = False


class AnswerCache:
    """Rendered answers by key, each kept for at most `seconds`; at most `most` keys (the oldest
    go first). Safe to share between a worker's threads."""

    def __init__(self, seconds: float, most: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.most = most
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, render: Callable[[], tuple[bytes, float | None]], fresh: bool = False) -> Answer:
        """The answer for `key`, rendered by `render` when there is none that still holds (or when
        `fresh`). `render` returns the body and how many seconds until the answer changes by the
        clock (None: not by the clock); exceptions it raises reach the caller."""
        started = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not fresh:
                if entry.answer.fresh_until > started:
                    return entry.answer
                if entry.rendering and entry.stale_until > started:
                    return entry.answer  # another reader is rendering it: milliseconds stale, not a herd
                entry.rendering = True
        try:
            body, changes_in = render()
        except BaseException:
            with self._lock:
                if entry is not None and not fresh and self._entries.get(key) is entry:
                    del self._entries[key]  # expired and not renewable now: the next reader tries again
            raise
        # from `started`, before the render read its figures and its clock: never later than they allow
        changes_at = float("inf") if changes_in is None else started + max(0.0, changes_in)
        answer = Answer(body, started, min(started + self.seconds, changes_at))
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self.most:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = _Entry(answer, stale_until=min(answer.fresh_until + self.seconds, changes_at))
        return answer

    def now(self) -> float:
        """The cache's clock, which `Answer`'s times are on."""
        return self._clock()

    def forget(self, key: Hashable) -> None:
        """Drop `key`'s answer: the next reader renders it (after a change made in this process)."""
        with self._lock:
            self._entries.pop(key, None)

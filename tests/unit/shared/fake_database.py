"""A stand-in for a SQLAlchemy engine: it records each statement it is given and answers the
reads with rows a test sets. No database, no network."""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace


class FakeResult:
    def __init__(self, rows: list[dict]):
        self._rows = [SimpleNamespace(**row) for row in rows]

    def all(self):
        return list(self._rows)


class FakeConnection:
    def __init__(self, engine: "FakeEngine"):
        self._engine = engine

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def begin(self):
        return nullcontext()

    def execute(self, statement, params=None):
        if self._engine.error is not None:
            raise self._engine.error
        text = " ".join(str(statement).split())
        self._engine.executed.append((text, params))
        if text.startswith(("SET ", "INSERT ", "DELETE ", "UPDATE ")):
            return FakeResult([])
        rows = self._engine.rows
        return FakeResult(rows(text) if callable(rows) else rows)


class FakeEngine:
    """`rows` answer every read (or `rows(statement)` does); `error`, when set, is raised by every
    statement."""

    def __init__(self, rows=None, error: Exception | None = None):
        self.rows = rows or []
        self.error = error
        self.executed: list[tuple[str, dict | None]] = []

    def connect(self):
        return FakeConnection(self)

    def begin(self):
        return FakeConnection(self)

    def statements(self, starting: str) -> list[tuple[str, dict | None]]:
        return [(text, params) for text, params in self.executed if text.startswith(starting)]

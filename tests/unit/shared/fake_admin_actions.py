"""A stand-in for a unit of work's `admin_actions` (shared/admin_actions.py): what is recorded is
kept only if the unit of work commits. No database."""
from __future__ import annotations


class FakeAdminActions:
    def __init__(self):
        self.kept = []
        self.pending = []

    def record(self, action) -> None:
        self.pending.append(action)

    def commit(self) -> None:
        self.kept.extend(self.pending)
        self.pending.clear()

    def rollback(self) -> None:
        self.pending.clear()

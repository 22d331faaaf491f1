"""Small conversions every service needs: the time now, an id read from outside, and whether
text can be stored."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone


def utc_now() -> datetime:
    """Now, timezone-aware in UTC (what every timestamp column stores)."""
    return datetime.now(timezone.utc)


def uuid_or_none(value) -> uuid.UUID | None:
    """`value` as a UUID, or None when it is missing or not one (a malformed id from a URL or an
    event names nothing, so callers answer "not found")."""
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def storable(text: str) -> bool:
    """Whether PostgreSQL can store `text`: JSON can carry NUL characters and lone surrogates
    (which have no UTF-8 encoding), and PostgreSQL's text takes neither."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

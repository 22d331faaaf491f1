"""Addresses keep their country and come back in its canonical form."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.addresses import FIELDS, InvalidAddress, normalise


def address(**fields):
    return {"name": "Sam Buyer", **fields}


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            address(street_address="24 Sussex Drive", city="ottawa", postal_code="k1a0b1", country_area="Ontario", country_code="ca"),
            {"street_address": "24 SUSSEX DRIVE", "city": "OTTAWA", "postal_code": "K1A 0B1", "country_area": "ON", "country_code": "CA"},
        ),
        (
            address(street_address="1600 Amphitheatre Pkwy", city="Mountain View", postal_code="940431351", country_area="California", country_code="US"),
            {"street_address": "1600 Amphitheatre Pkwy", "city": "MOUNTAIN VIEW", "postal_code": "94043-1351", "country_area": "CA", "country_code": "US"},
        ),
        (
            address(street_address="10 Downing Street", city="London", postal_code="sw1a1aa", country_code="GB"),
            {"street_address": "10 Downing Street", "city": "LONDON", "postal_code": "SW1A 1AA", "country_area": "", "country_code": "GB"},
        ),
        (
            address(street_address="Platz der Republik 1", city="Berlin", postal_code=" 11011 ", country_code="DE"),
            {"street_address": "Platz der Republik 1", "city": "BERLIN", "postal_code": "11011", "country_area": "", "country_code": "DE"},
        ),
        (
            address(street_address="1 Mahatma Gandhi Road", city="Mumbai", postal_code="400 001", country_area="Maharashtra", country_code="IN"),
            {"street_address": "1 Mahatma Gandhi Road", "city": "MUMBAI", "postal_code": "400001", "country_area": "Maharashtra", "country_code": "IN"},
        ),
        (
            address(street_address="1-1 Chiyoda", city="Chiyoda-ku", postal_code="1008111", country_area="Tokyo", country_code="JP"),
            # Japan has no city line: the ward moves into the street lines rather than being lost.
            {"street_address": "1-1 Chiyoda\nChiyoda-ku", "city": "", "postal_code": "100-8111", "country_area": "東京都", "country_code": "JP"},
        ),
    ],
    ids=["CA", "US", "GB", "DE", "IN", "JP"],
)
def test_addresses_come_back_in_their_countrys_canonical_form(given, expected):
    normalised = normalise(given)

    assert set(normalised) == set(FIELDS)
    assert {field: normalised[field] for field in expected} == expected
    assert normalised["name"] == "Sam Buyer"


def test_a_canonical_address_normalises_to_itself():
    once = normalise(address(street_address="24 Sussex Drive", city="Ottawa", postal_code="K1A 0B1", country_area="ON", country_code="CA"))

    assert normalise(once) == once


def test_a_us_address_with_a_canadian_postal_code_is_refused_on_the_postal_code_not_relabelled():
    with pytest.raises(InvalidAddress) as refused:
        normalise(address(street_address="1 Main Street", city="Buffalo", postal_code="K1A 0B1", country_area="NY", country_code="US"))

    assert set(refused.value.errors) == {"postal_code"}
    assert "95014" in refused.value.errors["postal_code"][0]  # the message shows what a US code looks like
    problem = refused.value.to_dict()
    assert (problem["status"], problem["errors"]) == (422, refused.value.errors)


def test_a_canadian_province_on_a_us_address_is_refused_on_the_region():
    with pytest.raises(InvalidAddress) as refused:
        normalise(address(street_address="24 Sussex Drive", city="Ottawa", postal_code="10001", country_area="ON", country_code="US"))

    assert set(refused.value.errors) == {"country_area"}


@pytest.mark.parametrize(
    "given, fields",
    [
        (address(street_address="24 Sussex Drive", city="Ottawa", country_area="ON", country_code="CA"), {"postal_code"}),
        (address(street_address="24 Sussex Drive", city="Ottawa", postal_code="K1A 0B1", country_code="CA"), {"country_area"}),
        (address(street_address="24 Sussex Drive", city="Ottawa", postal_code="K1A 0B1", country_area="ZZ", country_code="CA"), {"country_area"}),
        (address(street_address="1 Rue", city="Paris", postal_code="75001", country_code="Q1"), {"country_code"}),
        (address(street_address="1 Rue", city="Paris", postal_code="75001"), {"country_code"}),
        ({"street_address": "1 Rue", "city": "Paris", "postal_code": "75001", "country_code": "FR"}, {"name"}),
        (address(street_address=["not", "text"], city="Paris", postal_code="75001", country_code="FR"), {"street_address"}),
        (address(street_address="x" * 301, city="Paris", postal_code="75001", country_code="FR"), {"street_address"}),
        (address(street_address="1 Rue\ud800", city="Paris", postal_code="75001", country_code="FR"), {"street_address"}),
        (address(street_address="1 Rue", city="Pa\x00ris", postal_code="75001", country_code="FR"), {"city"}),
    ],
    ids=["missing-postal-code", "missing-province", "unknown-province", "unknown-country", "no-country", "no-name", "not-text",
         "too-long", "lone-surrogate", "nul"],
)
def test_refusals_name_each_field_at_fault(given, fields):
    with pytest.raises(InvalidAddress) as refused:
        normalise(given)

    assert set(refused.value.errors) == fields
    assert all(messages and all(isinstance(m, str) for m in messages) for messages in refused.value.errors.values())


def test_something_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidAddress):
        normalise(["24 Sussex Drive"])


COUNTRIES = ["CA", "US", "GB", "DE", "IN", "JP", "FR", "BR", "CN", "KR", "AU", "ZZ", "XK", "ca", "U1"]


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {"country_code": st.sampled_from(COUNTRIES)},
        optional={
            field: st.one_of(st.text(max_size=40), st.none(), st.integers())
            for field in ("name", "street_address", "city", "city_area", "sorting_code", "postal_code", "country_area")
        },
    )
)
def test_any_input_either_keeps_its_country_or_is_refused_per_field(given_address):
    try:
        normalised = normalise(given_address)
    except InvalidAddress as refused:
        assert refused.errors and set(refused.errors) <= set(FIELDS) | {"_schema"}
    else:
        assert normalised["country_code"] == given_address["country_code"].upper()
        assert set(normalised) == set(FIELDS)


@pytest.mark.parametrize("country, typed, stored", [
    ("JP", "１００－８１１１", "100-8111"),  # a Japanese IME's full-width digits and minus
    ("US", "９４０４３", "94043"),
    ("SA", "١٢٢٤١", "12241"),  # Arabic-Indic digits
    ("TH", "๑๐๑๑๐", "10110"),  # Thai digits
])
def test_a_postal_code_typed_in_another_scripts_digits_is_the_same_code(country, typed, stored):
    """They were stripped: refused as missing where a code is required, stored empty (the parcel
    shipped without it) where it is optional."""
    base = {"JP": dict(street_address="1-1 Chiyoda", city="Chiyoda-ku", country_area="Tokyo"),
            "US": dict(street_address="1600 Amphitheatre Pkwy", city="Mountain View", country_area="CA"),
            "SA": dict(street_address="King Fahd Road", city="Riyadh"),
            "TH": dict(street_address="1 Silom Road", city="Bangkok", country_area="Bangkok")}[country]
    assert normalise(address(**base, postal_code=typed, country_code=country))["postal_code"] == stored


def test_a_postal_code_with_nothing_of_a_code_in_it_is_refused_not_dropped():
    with pytest.raises(InvalidAddress) as refused:
        normalise(address(street_address="King Fahd Road", city="Riyadh", postal_code="—·—", country_code="SA"))
    assert set(refused.value.errors) == {"postal_code"}


def test_a_placeholder_typed_where_the_country_has_no_postal_codes_is_dropped():
    hong_kong = normalise(address(street_address="1 Queen's Road Central", city_area="Central",
                                  country_area="Hong Kong Island", postal_code="—", country_code="HK"))
    assert hong_kong["postal_code"] == "" and hong_kong["country_code"] == "HK"

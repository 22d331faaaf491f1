import pytest

from services.notifications import emails
from tests.unit.notifications.fakes import order


def render(document=None, event_id="e-1"):
    return emails.render("order.confirmed", emails.read("order.confirmed", document or order()), event_id)


def test_confirmation_names_the_order_in_subject_and_body():
    email = render()
    assert email.to == "emilie@example.ca"
    assert "7d9c1f9e-3b1a-4c52-9f0e-0c2b5f7a1e11" in email.subject
    assert "7d9c1f9e-3b1a-4c52-9f0e-0c2b5f7a1e11" in email.text
    assert "7d9c1f9e-3b1a-4c52-9f0e-0c2b5f7a1e11" in email.html


def test_a_canadian_address_stays_canadian():
    email = render()
    for body in (email.text, email.html):
        assert "24 Sussex Drive" in body
        assert "Ottawa ON" in body
        assert "K1A 0B1" in body
        assert "Canada (CA)" in body
        assert "United States" not in body and "(US)" not in body


def test_a_country_outside_the_usual_list_is_named_from_the_address_data_in_its_own_layout():
    document = order()
    document["shipping_address"].update(country_code="LU", country_area="", postal_code="L-1234", city="Luxembourg")
    email = render(document)
    assert "L-1234 Luxembourg" in email.text and "Luxembourg (LU)" in email.text


def test_total_is_shown_in_major_units_with_its_currency():
    email = render()
    assert "Total: 1,349.99 EUR" in email.text
    assert "1,349.99 EUR" in email.html


@pytest.mark.parametrize(
    "money, shown",
    [
        ({"amount": 34999, "currency": "EUR"}, "349.99 EUR"),
        ({"amount": 5, "currency": "CAD"}, "0.05 CAD"),
        ({"amount": 49800, "currency": "JPY"}, "49,800 JPY"),
        ({"amount": 12345, "currency": "KWD"}, "12.345 KWD"),
    ],
)
def test_money_uses_the_currency_minor_unit(money, shown):
    assert emails.format_money(money) == shown


# ISO 4217's minor units (list one) where they are not 2: the table an amount in minor units means
@pytest.mark.parametrize("currency, digits", [
    *((code, 0) for code in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                             "VND", "VUV", "XAF", "XOF", "XPF")),
    *((code, 3) for code in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")),
    ("CLF", 4), ("UYW", 4),
    *((code, 2) for code in ("EUR", "USD", "GBP", "HUF", "IDR", "COP", "MGA", "MRU", "TWD", "INR")),
])
def test_every_currency_is_shown_in_its_iso_4217_minor_unit(currency, digits):
    shown = {0: "1,234,567", 2: "12,345.67", 3: "1,234.567", 4: "123.4567"}[digits]
    assert emails.format_money({"amount": 1234567, "currency": currency}) == f"{shown} {currency}"


def test_html_escapes_what_the_buyer_typed_and_text_keeps_it():
    document = order()
    document["shipping_address"]["name"] = '<script>alert("x")</script> & Co'
    email = render(document)
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html and "&amp; Co" in email.html
    assert '<script>alert("x")</script> & Co' in email.text


def test_status_link_is_in_both_parts():
    email = render()
    assert order()["status_url"] in email.text
    assert f'href="{order()["status_url"]}"' in email.html


def test_message_id_is_derived_from_the_event():
    assert render(event_id="0b6c3e0e").message_id == "<0b6c3e0e@floodgate>"


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("buyer_email"),
        lambda d: d.update(buyer_email="not an address"),
        lambda d: d.pop("shipping_address"),
        lambda d: d["shipping_address"].pop("country_code"),
        lambda d: d.update(items=[]),
        lambda d: d.update(total={"amount": "12.50", "currency": "EUR"}),
        lambda d: d.update(status_url="javascript:alert(1)"),
        # what the delivery log's columns refuse (an int4, text without NUL): an IncompleteEvent,
        # parked after its few attempts, not a database error retried for days
        lambda d: d.update(version=2**31),
        lambda d: d.update(order_id="o\x00-1"),
    ],
)
def test_an_order_missing_what_the_email_needs_is_refused(change):
    document = order()
    change(document)
    with pytest.raises(emails.IncompleteEvent):
        emails.read("order.confirmed", document)

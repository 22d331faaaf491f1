"""Money as every service carries it: an integer of the currency's minor units (34999 EUR cents
is 349.99 EUR), in a currency named by its ISO 4217 code.

How many digits the minor unit has is ISO 4217's list one, not a browser's: Chromium's `Intl`
takes CLDR's cash digits for some currencies (0 for HUF, IDR, IQD, ...), which would show a
price 100 or 1,000 times too big if the page divided by them. The emails and the drop page both
read `minor_digits`."""
from __future__ import annotations

# Every ISO 4217 currency whose minor unit is not 2 digits; every other has 2, and so has a code
# the list does not name.
MINOR_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def minor_digits(currency: str) -> int:
    """The digits of `currency`'s minor unit (ISO 4217): 2 unless `MINOR_DIGITS` says otherwise."""
    return MINOR_DIGITS.get(currency, 2)

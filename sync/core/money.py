"""Money in minor units and ISO 4217 exponents, for every part that talks money.

Integer minor units plus an ISO 4217 code everywhere; decimal strings only at the edge of
an upstream that wants them (Shopify's ``amount``).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_TWO_DECIMALS = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD
MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP
PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SYP SZL THB TJS TMT
TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWL
"""
CURRENCY_EXPONENTS: Mapping[str, int] = {
    **dict.fromkeys(_TWO_DECIMALS.split(), 2),
    **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
    **dict.fromkeys(_THREE_DECIMALS.split(), 3),
}


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point of an ISO 4217 currency; ``ValueError`` if unknown."""
    try:
        return CURRENCY_EXPONENTS[currency.upper()]
    except KeyError:
        raise ValueError(f"unknown currency {currency!r}") from None


def minor_to_decimal(amount: int, currency: str) -> str:
    """Integer minor units → Shopify's decimal string: ``450, "EUR"`` → ``"4.50"``,
    ``450, "JPY"`` → ``"450"``, ``1250, "KWD"`` → ``"1.250"``."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"amount must be an integer of minor units, got {amount!r}")
    exp = currency_exponent(currency)
    sign = "-" if amount < 0 else ""
    if exp == 0:
        return f"{sign}{abs(amount)}"
    units, minor = divmod(abs(amount), 10**exp)
    return f"{sign}{units}.{minor:0{exp}d}"


def decimal_to_minor(amount: str | int | Decimal, currency: str) -> int:
    """Shopify's decimal amount → integer minor units (``"12.5", "EUR"`` → ``1250``), half up."""
    exp = currency_exponent(currency)
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    return int((value * (10**exp)).quantize(Decimal(1), rounding=ROUND_HALF_UP))

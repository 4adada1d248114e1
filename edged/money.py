"""Money: integer minor units plus an ISO 4217 code. Never a float."""

from __future__ import annotations

# ISO 4217 alphabetic codes in use, with their minor-unit exponent.
_TWO = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD
MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP
PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SYP SZL THB TJS TMT
TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWL
"""
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"

_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO.split(), 2),
    **dict.fromkeys(_ZERO.split(), 0),
    **dict.fromkeys(_THREE.split(), 3),
}

# Largest amount accepted in one call: fits comfortably in SQLite's 64-bit integers and in
# every upstream's limits (Stripe: 99,999,999 minor units).
MAX_AMOUNT = 99_999_999


def is_known_currency(code: str) -> bool:
    return code in _EXPONENTS


def exponent(code: str) -> int:
    return _EXPONENTS[code]


def to_decimal_string(amount: int, currency: str) -> str:
    """``1250, "EUR"`` → ``"12.50"``: for upstreams that want decimal strings."""
    exp = _EXPONENTS[currency]
    sign = "-" if amount < 0 else ""
    units, minor = divmod(abs(amount), 10**exp) if exp else (abs(amount), 0)
    return f"{sign}{units}.{minor:0{exp}d}" if exp else f"{sign}{units}"

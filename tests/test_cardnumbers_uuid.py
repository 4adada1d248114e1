"""Card-number guard and identifiers: a register's UUID Idempotency-Key, a hex digest and a
product's barcode are never card numbers.

Found while the whole suite failed now and then with ERR-1010: ~0.35 % of random UUIDv4
hold a dash-grouped digit run that passes Luhn (e.g. ``8b180358-6060-4459-…``); as many
written without dashes (``uuid4().hex``, found by ``bench/drain.py``); and about one EAN-13
in ten.
"""

from __future__ import annotations

import random
import uuid

import pytest

from edged.payments.cardnumbers import contains_pan, inspect, is_gtin, luhn_ok, text_has_pan

PAN_LIKE = "4111111111111111"


def test_uuids_are_not_card_numbers() -> None:
    rng = random.Random(7)
    keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20000)]
    keys += ["8b180358-6060-4459-b134-637b6727a44f", "37c0468b-6342-4856-9562-4232d36b617d"]
    flagged = [k for k in keys if text_has_pan(k) or text_has_pan(k.upper())]
    assert flagged == []


def test_a_card_number_beside_a_uuid_is_still_caught() -> None:
    key = "8b180358-6060-4459-b134-637b6727a44f"
    assert text_has_pan(f"{key} 4111 1111 1111 1111")
    assert text_has_pan(f"4111-1111-1111-1111-{key}")
    assert contains_pan({"reference": key, "note": "4111111111111111"})
    assert not contains_pan({"reference": key})


def test_hex_digests_are_not_card_numbers() -> None:
    """A pairing proof is an HMAC-SHA256 in hex (issue 17): about one in a hundred holds a
    run of 13+ digits that passes Luhn, and was refused as a card number."""
    digest = "ab" * 8 + PAN_LIKE + "cd" * 16
    assert len(digest) == 64
    assert not text_has_pan(digest)
    assert not contains_pan({"proof": digest, "name": "lane-2"})
    assert text_has_pan("ab" * 8 + PAN_LIKE)  # not 64 hex digits: no digest
    assert text_has_pan(f"{digest} {PAN_LIKE}")  # a card number beside a digest still is
    assert text_has_pan(digest + "0")  # 65 hex digits: no digest either


def test_uuids_without_dashes_are_not_card_numbers() -> None:
    rng = random.Random(8)
    keys = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(20000)]
    keys.append("43642324387840819ef1d9788cc52c86")  # holds 43642324387840819, Luhn-valid
    assert [k for k in keys if text_has_pan(k) or text_has_pan(k.upper())] == []


def test_a_card_number_beside_or_as_32_digits_is_still_caught() -> None:
    key = "43642324387840819ef1d9788cc52c86"
    assert text_has_pan(f"{key} {PAN_LIKE}")
    assert text_has_pan(f"{key}-{PAN_LIKE}")
    assert text_has_pan("43642324387840819")  # the same run alone is read
    assert text_has_pan("0" * 8 + PAN_LIKE + "0" * 8)  # 32 decimal digits: no identifier
    assert text_has_pan(key + "0")  # 33 hex digits: no UUID
    assert text_has_pan("ab" * 8 + PAN_LIKE)  # 32 hex digits, but no UUID's version


def _ean(body: str) -> str:
    total = sum(int(c) * (1 if i % 2 else 3) for i, c in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def test_gs1_check_digits() -> None:
    """GS1 General Specifications: the check digit weighs the digits 3, 1, 3… from the
    right. Published examples: EAN-13 4006381333931, EAN-8 96385074, UPC-A 036000291452."""
    for good in ("4006381333931", "96385074", "036000291452", "05741629986492"):
        assert is_gtin(good), good
    for bad in ("4006381333932", "96385075", "400638133393", "4111111111111111", "",
                "40063813339३1", "4006381333 31"):
        assert not is_gtin(bad), bad


def test_a_barcode_is_read_as_one_only_where_a_product_is_named() -> None:
    rng = random.Random(9)
    both = [code for code in (_ean(rng.choice(("400", "590", "871", "030"))
                                   + "".join(rng.choice("0123456789") for _ in range(9)))
                              for _ in range(3000)) if luhn_ok(code)]
    assert len(both) > 200  # about one in ten
    for code in both:
        assert inspect({"changes": [{"barcode": code, "delta": 1}]}) is None
        assert inspect({"lines": [{"sku": code, "quantity": 1, "price": 100}]}) is None
        # free text: shaped like a card number (Visa's 13 digits), so still one
        assert contains_pan({"reference": code}) is code.startswith("4")
    # a card number in a barcode field is no GS1 number: still caught
    assert not is_gtin("4222222222222")  # Visa's 13-digit test number
    assert contains_pan({"barcode": "4222222222222"})
    assert contains_pan({"barcode": PAN_LIKE})
    assert contains_pan({"barcode": "4111 1111 1111 1111"})
    assert contains_pan({"sku": "411111111111111100"})


# The card brands' published test numbers: each starts like its brand's numbers, has its
# length and passes Luhn.
BRAND_TEST_NUMBERS = (
    "4111111111111111", "4012888888881881", "4222222222222",  # Visa
    "5555555555554444", "2223003122003222",  # Mastercard
    "378282246310005", "371449635398431",  # American Express
    "6011111111111117", "6011000990139424",  # Discover
    "3530111333300000", "3566002020360505",  # JCB
    "30569309025904", "36227206271667",  # Diners Club
    "6200000000000005",  # UnionPay
    "6759649826438453",  # Maestro
)


@pytest.mark.parametrize("number", BRAND_TEST_NUMBERS)
def test_every_brands_test_number_is_caught(number: str) -> None:
    assert luhn_ok(number)
    assert text_has_pan(number)
    assert text_has_pan(f"ref {number[:4]} {number[4:8]} {number[8:12]} {number[12:]}")
    assert text_has_pan(f"99{number}77")


def test_numbers_that_pass_luhn_but_no_brand_are_not_card_numbers() -> None:
    """Card-data scanners tell a card number by its brand's prefix and length as well as
    Luhn: a register's millisecond timestamps and its receipt numbers pass Luhn one time
    in ten, and were refused (ERR-1010) as Idempotency-Keys and references."""
    rng = random.Random(12)
    stamps = [str(rng.randrange(1_700_000_000_000, 1_900_000_000_000)) for _ in range(5000)]
    receipts = [f"0012026{rng.randrange(10 ** 9):09d}" for _ in range(5000)]
    lucky = [n for n in stamps + receipts if luhn_ok(n)]
    assert len(lucky) > 500  # one in ten
    assert [n for n in lucky if text_has_pan(f"sale-{n}")] == []

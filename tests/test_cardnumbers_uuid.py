"""Card-number guard and UUIDs: a register's UUID Idempotency-Key is never a card number.

Found while the whole suite failed now and then with ERR-1010: ~0.35 % of random UUIDv4
hold a dash-grouped digit run that passes Luhn (e.g. ``8b180358-6060-4459-…``).
"""

from __future__ import annotations

import random
import uuid

from edged.payments.cardnumbers import contains_pan, text_has_pan

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

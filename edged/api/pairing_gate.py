"""What ``POST /v1/pair`` and the page's code sign-in share: HTTPS off the box, the proof
(never the code), the wrong-code count taken before anything is awaited, the refusals."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from edged.config import is_loopback
from edged.errors import ApiError
from edged.lan import pairing
from edged.services import Services

log = logging.getLogger(__name__)

T = TypeVar("T")

HOW_TO_PAIR = ("send {\"proof\": HMAC-SHA256 of the certificate's fingerprint (the 64 hex"
               " digits you pinned, lower case; empty without TLS) keyed by the code (upper"
               " case, without the dash), in hex}, never the code itself (see the README,"
               " On the store LAN)")


def proof_of(body: dict[str, Any], where: str) -> str:
    """The body's proof; the old ``{"code"}`` shape is refused (a fake answerer on the LAN
    could replay it), its code left unused and not counted as wrong."""
    proof = body.get("proof")
    if not isinstance(proof, str) or not proof:
        if "code" in body:
            raise ApiError("ERR-5030", f"{where} no longer takes the code itself: {HOW_TO_PAIR};"
                           " the code is still unused")
        raise ApiError("ERR-1003", f"body.proof is required: {HOW_TO_PAIR}")
    proof = proof.strip().lower()
    if len(proof) != pairing.PROOF_LENGTH or any(c not in "0123456789abcdef" for c in proof):
        raise ApiError("ERR-1005", "body.proof must be 64 hex digits (an HMAC-SHA256)")
    return proof


def check_transport(secure: bool, client: str, what: str) -> None:
    if not secure and not is_loopback(client):
        raise ApiError("ERR-5012", f"{what} off this box needs HTTPS; set [api] tls = true")


async def attempt(services: Services, client: str, redeem: Callable[[str], Awaitable[T]],
                  what: str) -> T:
    """Run ``redeem(fingerprint)`` as one counted attempt of ``client``.

    Counted as a wrong code before anything is awaited (one attempt per address at a time);
    uncounted when it was right, lost a race (the code already used) or failed for another
    reason. ``redeem`` returns a :class:`pairing.Miss` when no live code matched.
    """
    guard = services.pairing_guard()
    wait = guard.retry_after(client)
    if wait is not None:
        raise ApiError("ERR-5011", f"too many wrong pairing codes; retry after {wait} s",
                       headers={"Retry-After": str(wait)})
    try:
        tried = guard.begin(client)
    except pairing.Busy:
        raise ApiError("ERR-5031", "a pairing attempt from this address is under way; wait"
                       " for its answer", headers={"Retry-After": "1"}) from None
    wrong = False
    try:
        result = await redeem(services.own_fingerprint())
        if isinstance(result, pairing.Miss):
            wrong = not result.used
            left = guard.end(tried, wrong)
            if result.used:
                raise ApiError("ERR-5010", "this pairing code was already used; ask for a new"
                               f" one ({what})")
            log.warning("wrong pairing code from %s (%d tries left)", client, left)
            hint = (" (the live codes were made for another certificate: make one with the"
                    " daemon's own --config and --data-dir)") if result.other_certificate else ""
            raise ApiError("ERR-5010", "the pairing code is wrong, expired or already used, or"
                           " the proof was made for another fingerprint than this daemon's;"
                           f" compare the fingerprints and ask for a new code ({what}){hint}")
        return result
    except pairing.PairingError as exc:
        raise ApiError(exc.code, exc.message) from None
    finally:
        if not wrong:
            guard.end(tried, wrong=False)  # right, a lost race, or refused for another reason

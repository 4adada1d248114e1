"""``POST /v1/pair``: a code from ``edged pair``, proven with the certificate's fingerprint,
traded for a new token, once; ``GET /v1/pair``: the fingerprint a proof is made with."""

from __future__ import annotations

import logging
import sqlite3

from edged.api.http import Ctx, Route
from edged.api.pairing_gate import attempt, check_transport, proof_of
from edged.api.schema import Free, Obj, Str
from edged.lan import pairing
from edged.payments.service import Answer
from sync.core.clock import utc_iso

log = logging.getLogger(__name__)

PAIR = Obj(
    name="PairRequest",
    props={"proof": Str(min_length=64, max_length=64, description="HMAC-SHA256, in hex, of"
                        " the SHA-256 fingerprint the register pinned (64 lower-case hex"
                        " digits; empty without TLS) keyed by the code `edged pair` printed"
                        " (upper case, without the dash)"),
           "name": Str(max_length=64, description="this register's token name (unless"
                       " the code was made with --name)"),
           "code": Str(max_length=40, description="refused (ERR-5030): the code itself"
                       " must not travel; send proof")},
    required=(),
)


async def pair(ctx: Ctx) -> Answer:
    request = ctx.request
    client = request.remote or "unknown"
    check_transport(request.secure, client, "pairing")
    proven = proof_of(ctx.body, "POST /v1/pair")
    name = ctx.body.get("name")
    services = ctx.services
    now = services.clock.now()

    async def redeem(fingerprint: str) -> pairing.Paired | pairing.Miss:
        def trade(conn: sqlite3.Connection) -> pairing.Paired | pairing.Miss:
            return pairing.redeem(conn, proven, name, now, client, fingerprint)

        return await services.db.write(trade)

    paired = await attempt(services, client, redeem, "edged pair")
    assert isinstance(paired, pairing.Paired)
    log.info("register paired from %s: token %s (%s)", client, paired.name, paired.scope)
    return Answer(201, {"token": paired.token, "name": paired.name, "scope": paired.scope,
                        "created_at": utc_iso(now)})


async def pairing_info(ctx: Ctx) -> Answer:
    fingerprint = ctx.services.own_fingerprint()
    return Answer(200, {"fingerprint": fingerprint, "tls": bool(fingerprint),
                        "short_fingerprint": pairing.short_fingerprint(fingerprint)})


PAIR_ROUTE = Route(
    "POST", "/v1/pair", pair, "Trade a one-time pairing code (edged pair), proven with the"
    " certificate's fingerprint, for a new token, shown once; no bearer token; HTTPS off"
    " this box; 5 wrong codes per address, one attempt at a time, then 429",
    Free(schema={"type": "object", "title": "Paired", "properties": {
        "token": {"type": "string", "description": "the bearer token; shown this once"},
        "name": {"type": "string"}, "scope": {"enum": list(pairing.PAIR_SCOPES)},
        "created_at": {"type": "string"}}}), 201, PAIR,
    ("ERR-1001", "ERR-1002", "ERR-1003", "ERR-1004", "ERR-1005", "ERR-1006", "ERR-1007",
     "ERR-1014", "ERR-1021", "ERR-5010", "ERR-5011", "ERR-5012", "ERR-5013", "ERR-5030",
     "ERR-5031"),
    scope=None, tag="pairing", idempotent=False)

PAIR_INFO_ROUTE = Route(
    "GET", "/v1/pair", pairing_info, "The fingerprint of the certificate this daemon serves"
    " (what a pairing proof is made with; a register compares it with the one it pinned, a"
    " person with the one `edged pair` printed); no bearer token",
    Free(schema={"type": "object", "title": "PairingInfo", "properties": {
        "fingerprint": {"type": "string"}, "short_fingerprint": {"type": "string"},
        "tls": {"type": "boolean"}}}),
    scope=None, tag="pairing")

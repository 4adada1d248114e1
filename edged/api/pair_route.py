"""``POST /v1/pair``: a one-time code from ``edged pair`` traded for a new token, once."""

from __future__ import annotations

import logging
import sqlite3

from edged import pairing
from edged.api.http import Ctx, Route
from edged.api.schema import Free, Obj, Str
from edged.config import is_loopback
from edged.errors import ApiError
from edged.payments import Answer
from sync.clock import utc_iso

log = logging.getLogger(__name__)

PAIR = Obj(
    name="PairRequest",
    props={"code": Str(max_length=40, description="the code `edged pair` printed"),
           "name": Str(max_length=64, description="this register's token name (unless"
                       " the code was made with --name)")},
    required=("code",),
)


async def pair(ctx: Ctx) -> Answer:
    request = ctx.request
    client = request.remote or "unknown"
    if not request.secure and not is_loopback(client):
        raise ApiError("ERR-5012", "pairing off this box needs HTTPS; set [api] tls = true")
    services = ctx.services
    guard = services.pairing_guard()
    wait = guard.retry_after(client)
    if wait is not None:
        raise ApiError("ERR-5011", f"too many wrong pairing codes; retry after {wait} s",
                       headers={"Retry-After": str(wait)})
    code, name = ctx.body["code"], ctx.body.get("name")
    now = services.clock.now()

    def trade(conn: sqlite3.Connection) -> pairing.Paired | None:
        return pairing.redeem(conn, code, name, now, client)

    try:
        paired = await services.db.write(trade)
    except pairing.PairingError as exc:
        raise ApiError(exc.code, exc.message) from None
    if paired is None:
        left = guard.wrong(client)
        log.warning("wrong pairing code from %s (%d tries left)", client, left)
        raise ApiError("ERR-5010", "the pairing code is wrong, expired or already used; ask"
                       " for a new one (edged pair)")
    log.info("register paired from %s: token %s (%s)", client, paired.name, paired.scope)
    return Answer(201, {"token": paired.token, "name": paired.name, "scope": paired.scope,
                        "created_at": utc_iso(now)})


PAIR_ROUTE = Route(
    "POST", "/v1/pair", pair, "Trade a one-time pairing code (edged pair) for a new token,"
    " shown once; no bearer token; HTTPS off this box; 5 wrong codes per address, then 429",
    Free(schema={"type": "object", "title": "Paired", "properties": {
        "token": {"type": "string", "description": "the bearer token; shown this once"},
        "name": {"type": "string"}, "scope": {"enum": list(pairing.PAIR_SCOPES)},
        "created_at": {"type": "string"}}}), 201, PAIR,
    ("ERR-1001", "ERR-1002", "ERR-1003", "ERR-1004", "ERR-1005", "ERR-1006", "ERR-1007",
     "ERR-1014", "ERR-5010", "ERR-5011", "ERR-5012", "ERR-5013"),
    scope=None, tag="pairing", idempotent=False)

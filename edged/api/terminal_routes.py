"""The terminals' own manager routes: a terminal's end of day (ZVT)."""

from __future__ import annotations

from edged.api import models
from edged.api.http import Ctx, Route
from edged.lanes.end_of_day import EndOfDayService
from edged.store.answer import Answer

_BODY_ERRORS = ("ERR-1001", "ERR-1002", "ERR-1006", "ERR-1007", "ERR-1008", "ERR-1009",
                "ERR-1014")


async def end_of_day(ctx: Ctx) -> Answer:
    s = ctx.services
    assert ctx.idem is not None
    return await EndOfDayService(s.db, s.bus, s.terminals, s.clock).run(
        ctx.match("id"), ctx.idem, ctx.actor)


TERMINAL_ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/terminals/{id}/end-of-day", end_of_day, "Close the terminal's day"
          " (ZVT End of day; manager scope): its totals, beside the daemon's approved card"
          " payments minus terminal refunds on that lane since its previous end of day; a"
          " difference is a mismatch and raises an alert", models.SETTLEMENT, 201,
          models.EMPTY, _BODY_ERRORS + ("ERR-3002", "ERR-3003", "ERR-3006", "ERR-3020",
                                        "ERR-3021", "ERR-3022", "ERR-5003"),
          scope="manager", tag="terminals"),
)

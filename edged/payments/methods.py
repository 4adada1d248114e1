"""What a lane can take at this moment: ``GET /v1/payment-methods?terminal=ID``.

The seed's ``GetAvailablePaymentMethods``, made honest by live state:

- ``cash``: always.
- ``card_present``: the lane's terminal is online and idle (its status as the manager
  keeps it: the heartbeat, and what the last transaction found); otherwise the reason.
- ``token``: a processor that may take it is reachable (its breaker is not open), or
  offline acceptance is on and the caps leave room; the room left (per payment, and in
  total for the store's currency) comes with it. A cloud lane takes token payments through
  its own processor only; a local lane through any configured one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from edged.config import Config
from edged.errors import ApiError
from edged.lanes.terminals import TerminalManager
from edged.store import Database

#: The processor of each cloud lane kind.
_LANE_PROCESSOR = {"stripe_reader": "stripe", "square_terminal": "square"}


async def available(cfg: Config, db: Database, terminals: TerminalManager,
                    link_down: Callable[[str], bool], terminal_id: str | None
                    ) -> dict[str, Any]:
    if terminal_id is None:
        ids = terminals.ids()
        if len(ids) != 1:
            raise ApiError("ERR-1013", "terminal is required when the daemon drives several"
                           f" terminals ({', '.join(ids) or 'none'})")
        terminal_id = ids[0]
    view = terminals.view(terminal_id)
    if view is None:
        raise ApiError("ERR-3006", f"no terminal {terminal_id!r}")
    methods: list[dict[str, Any]] = [{"method": "cash", "available": True, "reason": None}]

    if view.state == "online" and view.busy_with is None:
        card: dict[str, Any] = {"method": "card_present", "available": True, "reason": None}
    elif view.busy_with is not None or view.state == "busy":
        card = {"method": "card_present", "available": False,
                "reason": f"terminal {terminal_id} is busy"
                + (f" with {view.busy_with}" if view.busy_with else "")}
    else:
        card = {"method": "card_present", "available": False,
                "reason": f"terminal {terminal_id} is offline"
                + (f" ({view.detail})" if view.detail else "")}
    methods.append(card)
    methods.append(await _token(cfg, db, link_down, view.kind))
    return {"terminal": terminal_id, "methods": methods}


async def _token(cfg: Config, db: Database, link_down: Callable[[str], bool],
                 kind: str) -> dict[str, Any]:
    lane_processor = _LANE_PROCESSOR.get(kind)
    processors = [p for p in cfg.destinations if p in ("stripe", "square")
                  and (lane_processor is None or p == lane_processor)]
    if not processors:
        return {"method": "token", "available": False,
                "reason": "no processor is configured for this lane"
                + (f" ([{lane_processor}])" if lane_processor else " ([stripe] or [square])")}
    reachable = [p for p in processors if not link_down(p)]
    entry: dict[str, Any] = {"method": "token", "processors": reachable or processors}
    if reachable:
        return {**entry, "available": True, "reason": None, "processors": reachable}
    offline = cfg.offline
    down = f"{' and '.join(processors)} unreachable"
    if not offline.enabled:
        return {**entry, "available": False,
                "reason": f"{down} and offline acceptance is off"}
    currency = cfg.store.currency

    def stored(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(sum(amount), 0) FROM payments WHERE state ="
                                " 'stored' AND currency = ?", (currency,)).fetchone()[0])

    left = max(0, offline.max_stored_total - await db.read(stored))
    room = {"currency": currency, "left": left,
            "max_payment": min(offline.max_payment, left)}
    if left <= 0:
        return {**entry, "available": False, "room": room,
                "reason": f"{down}; the payments stored offline fill the cap of"
                f" {offline.max_stored_total} {currency}"}
    return {**entry, "available": True, "room": room,
            "reason": f"{down}: stored offline, up to {room['max_payment']} {currency} a"
            f" payment, {left} {currency} left in all"}

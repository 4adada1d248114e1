"""A sale's request held back until its payment is committed (the local lanes: Concert, ZVT).

The driver's worker readies the line while the payment is being written, then waits on a
:class:`Hold`. The event loop decides it once: :meth:`Hold.release` (the payment is durable:
send the request) or :meth:`Hold.drop` (it was not written, or the driver stops: send
nothing), and may wait up to :data:`HANDOFF_SECONDS` for the worker to put a released
request on the line before it answers the register.
"""

from __future__ import annotations

import threading
from typing import Final

HANDOFF_SECONDS: Final = 0.002
"""How long a driver's ``start`` may hold the event loop for the worker to put the released
request on the line (typically well under 0.1 ms)."""


class Hold:
    """Decided once on the event loop; the worker thread waits in :meth:`wait`."""

    def __init__(self) -> None:
        self._decided = threading.Event()
        self.send = False
        self.gone = threading.Event()
        """Set by the worker once the request is on the line, or once it will not be."""

    def release(self) -> None:
        self._decide(True)

    def drop(self) -> None:
        self._decide(False)

    def _decide(self, send: bool) -> None:
        if not self._decided.is_set():
            self.send = send
            self._decided.set()

    def wait(self, timeout: float) -> bool:
        """True once decided (then read :attr:`send`)."""
        return self._decided.wait(timeout)

"""``square_terminal``: a Square Terminal, through Square's Terminal API (checkouts).

``poller`` follows one checkout until its final state; ``adapter`` is the lane's
:class:`~drivers.base.Terminal`. The HTTP calls live in ``sync.square_api.terminal`` (the
``square`` destination's breaker and rate limiter).
"""

from drivers.square_terminal.adapter import SquareTerminal

__all__ = ["SquareTerminal"]

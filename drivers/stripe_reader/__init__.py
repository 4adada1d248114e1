"""``stripe_reader``: a Stripe Terminal smart reader, server-driven through the Stripe API.

``poller`` follows one payment on the reader until its final state; ``adapter`` is the
lane's :class:`~drivers.base.Terminal`. The HTTP calls live in ``sync.stripe_api.terminal``
(the ``stripe`` destination's breaker and rate limiter).
"""

from drivers.stripe_reader.adapter import StripeReaderTerminal

__all__ = ["StripeReaderTerminal"]

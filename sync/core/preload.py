"""The processors' SDKs imported on a worker thread once the daemon is ready.

The SDKs import most of themselves on first use (a service, a sub-client, the models it
parses); each processor package's ``warm`` makes a throwaway client and touches the services
the daemon calls, without connecting anywhere. Run here, on a thread, after the daemon
answers, so that neither start-up nor the first payment pays for it.

Importing an SDK costs about 0.3 s of CPU, more than the whole daemon's way to ready, so
nothing imports it when a gateway or a Terminal client is constructed: each processor's SDK
holder (``sync/stripe_api/sdk.py``, ``sync/square_api/sdk.py``) builds its client at the
first call that needs it, and its ``warm``, run here, imports what that call would, so that
the first payment normally finds it loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence


async def preload(warmers: Sequence[Callable[[], None]]) -> float:
    """Run every ``warm`` on a worker thread; the seconds they took."""

    def load() -> float:
        started = time.perf_counter()
        for warm in warmers:
            warm()
        return time.perf_counter() - started

    return await asyncio.to_thread(load)

"""The processors' SDKs stay out of the way to ready, and are loaded right after it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from sync.stripe_api.sdk import StripeSdk

PROBE = textwrap.dedent("""
    import asyncio, json, sys
    from sync.core.breaker import BreakerSettings, CircuitBreaker
    from sync.core.clock import SystemClock
    from sync.core.limiter import TokenBucket, TokenBucketSettings
    from sync.square_api.gateway import SquareGateway, SquareSettings
    from sync.square_api.terminal import SquareTerminalClient, SquareTerminalSettings
    from sync.stripe_api.gateway import StripeGateway, StripeSettings
    from sync.stripe_api.terminal import StripeTerminalClient, StripeTerminalSettings
    from sync.core.preload import preload
    from sync.square_api import sdk as square_sdk
    from sync.stripe_api import sdk as stripe_sdk

    def loaded():
        return {name: name in sys.modules for name in ("stripe", "square.client", "httpx")}

    clock = SystemClock()
    brk = CircuitBreaker("x", BreakerSettings.processors(), clock)
    bucket = TokenBucket(TokenBucketSettings.stripe(), clock, name="x")
    built = [StripeGateway(StripeSettings(base_url="http://127.0.0.1:9"), lambda: "sk", clock),
             SquareGateway(SquareSettings(base_url="http://127.0.0.1:9"), lambda: "t", clock),
             StripeTerminalClient(StripeTerminalSettings(base_url="http://127.0.0.1:9"),
                                  lambda: "sk", clock, brk, bucket),
             SquareTerminalClient(SquareTerminalSettings(base_url="http://127.0.0.1:9"),
                                  lambda: "t", clock, brk, bucket)]
    before = loaded()
    seconds = asyncio.run(preload([stripe_sdk.warm, square_sdk.warm]))
    print(json.dumps({"before": before, "after": loaded(), "seconds": seconds}))
""")


def test_building_the_processors_clients_imports_no_sdk_and_preload_loads_them() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE],  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == {"stripe": False, "square.client": False, "httpx": False}
    assert seen["after"] == {"stripe": True, "square.client": True, "httpx": True}
    assert seen["seconds"] > 0


def test_a_stripe_client_is_made_once_per_key_and_again_for_a_rotated_key() -> None:
    sdk = StripeSdk("http://127.0.0.1:9", 5.0)
    first = sdk.client("sk_test_one")
    assert sdk.client("sk_test_one") is first
    rotated = sdk.client("sk_test_two")
    assert rotated is not first
    assert sdk.client("sk_test_two") is rotated

"""A register on the store LAN, in a few lines: what the namespace test runs on the far side.

    python -m tests.lan_register find STORE [--timeout S]       # mDNS: address, port, fp
    python -m tests.lan_register pair URL FP CODE NAME          # HTTPS pinned to FP; sends
                                                                # the proof, never the code
    python -m tests.lan_register get URL FP PATH TOKEN          # HTTPS pinned to FP ("-": no
                                                                # token)
    python -m tests.lan_register stream URL FP TOKEN SECONDS    # GET /v1/events until the
                                                                # daemon ends it (at most S)
    python -m tests.lan_register pay URL FP TOKEN SECONDS [SOURCE]   # cash payments, one
                                                                # every 0.2 s, on fresh
                                                                # connections: latencies
    python -m tests.lan_register plain URL PATH                 # plain HTTP (must fail)

Each prints one JSON object. The token travels in the Authorization header only, and the
pairing code never travels: the register sends ``HMAC-SHA256(key=code, msg=fingerprint)``
for the fingerprint it pinned (written here from the README, not from the daemon's code).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from typing import Any

import aiohttp


async def _call(method: str, url: str, fp: str | None, body: Any = None,
                token: str | None = None) -> dict[str, Any]:
    ssl: Any = aiohttp.Fingerprint(bytes.fromhex(fp)) if fp else None
    headers = {"Authorization": f"Bearer {token}"} if token and token != "-" else {}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, url, json=body, headers=headers, ssl=ssl) as r:
            text = await r.text()
            try:
                data: Any = json.loads(text)
            except ValueError:
                data = text[:200]
            return {"status": r.status, "body": data}
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}


def pair_body(code: str, fingerprint: str, name: str | None = None) -> dict[str, str]:
    """What a register sends to pair: the code proven with the fingerprint it pinned (the
    code upper case without its dash; the fingerprint 64 lower-case hex digits, or "" when
    the daemon has no TLS)."""
    key = code.upper().replace("-", "").replace(" ", "").encode()
    body = {"proof": hmac.new(key, fingerprint.lower().encode(), hashlib.sha256).hexdigest()}
    if name is not None:
        body["name"] = name
    return body


async def _stream(url: str, fp: str, token: str, seconds: float) -> dict[str, Any]:
    """Hold an event stream; say when the daemon ended it (seconds after it was opened)."""
    import time

    ssl = aiohttp.Fingerprint(bytes.fromhex(fp))
    timeout = aiohttp.ClientTimeout(total=seconds + 5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"{url}/v1/events", ssl=ssl, headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status != 200:
            return {"status": r.status}
        print(json.dumps({"status": 200, "open": True}), flush=True)
        opened = time.monotonic()
        try:
            await asyncio.wait_for(r.content.read(), seconds)
        except TimeoutError:
            return {"status": 200, "ended": False}
        return {"status": 200, "ended": True,
                "ended_at": time.time(), "after": round(time.monotonic() - opened, 3)}


NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


async def _pay(url: str, fp: str, token: str, seconds: float,
               source: str | None) -> dict[str, Any]:
    """A register at work: a cash payment every 0.2 s (within its token's 10 a second), each
    on a new connection (from ``source``), for ``seconds``; the latencies it saw."""
    import time
    import uuid

    ssl = aiohttp.Fingerprint(bytes.fromhex(fp))
    until = time.monotonic() + seconds
    took: list[float] = []
    failures: list[str] = []
    while time.monotonic() < until:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0)
                                         if source else None)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
                    total=10)) as session, session.post(
                    f"{url}/v1/payments", ssl=ssl,
                    json={"amount": 100, "currency": "EUR", "method": "cash"},
                    headers={"Authorization": f"Bearer {token}",
                             "Idempotency-Key": "pay-" + uuid.uuid4().hex.translate(
                                 NO_DIGITS)}) as r:  # a run of digits may look like a PAN
                await r.read()
                if r.status == 201:
                    took.append(time.monotonic() - started)
                else:
                    failures.append(f"HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(type(exc).__name__)
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
    took.sort()
    pick = (lambda q: round(took[min(len(took) - 1, int(q * len(took)))] * 1000, 1)) \
        if took else (lambda q: None)
    return {"payments": len(took), "failures": failures[:10], "failed": len(failures),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": round(took[-1] * 1000, 1) if took else None}


async def _find(store: str, timeout: float) -> dict[str, Any]:
    from edged.lan.discovery import discover

    for found in await discover(timeout):
        if found.store == store:
            return found.as_dict()
    return {"store": store, "found": False}


def main(argv: list[str]) -> int:
    action, *rest = argv
    if action == "find":
        timeout = float(rest[2]) if len(rest) > 2 and rest[1] == "--timeout" else 3.0
        out = asyncio.run(_find(rest[0], timeout))
    elif action == "pair":
        url, fp, code, name = rest
        out = asyncio.run(_call("POST", f"{url}/v1/pair", fp, pair_body(code, fp, name)))
    elif action == "get":
        url, fp, path, token = rest
        out = asyncio.run(_call("GET", f"{url}{path}", fp, token=token))
    elif action == "pay":
        url, fp, token, seconds, *source = rest
        out = asyncio.run(_pay(url, fp, token, float(seconds), source[0] if source else None))
    elif action == "stream":
        url, fp, token, seconds = rest
        out = asyncio.run(_stream(url, fp, token, float(seconds)))
    elif action == "plain":
        url, path = rest
        out = asyncio.run(_call("GET", f"{url}{path}", None))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

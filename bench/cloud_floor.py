"""The floor of a cloud lane: what any Python daemon pays for one card payment on a Stripe
reader or a Square Terminal, measured beside the daemon by ``bench/terminal.py``.

A bare aiohttp app (``bench/floor_app.py``; uvloop, one keep-alive ``aiohttp.ClientSession``
to the processor), run as its own process: ``POST /pay`` commits one row to SQLite (WAL,
``synchronous=FULL``) before the processor is asked anything, makes the processor's minimum
calls one after the other (Stripe: create the PaymentIntent, ``process_payment_intent``, one
read of the reader expanded down to its charge; Square: create the checkout, read it, read
its payment), commits the result, and answers with it. No auth, no idempotency, no audit, no
state table, no events, no long-poll: the two durable commits and the three round trips a
payment cannot do without. The bench drives it with the same register, fake and pacing as
the daemon, so ``overhead beyond the fake`` means the same thing for both.

    python -m bench.cloud_floor --lane stripe_reader|square_terminal --port P \\
        --fake URL --device ID --db PATH
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

import aiohttp

from bench.floor_app import serve


async def _stripe(http: aiohttp.ClientSession, base: str, device: str, pid: str,
                  amount: int, currency: str) -> str:
    auth = {"Authorization": "Bearer sk_test_floor"}
    async with http.post(f"{base}/v1/payment_intents", headers={
            **auth, "Idempotency-Key": f"{pid}-pi"}, data={
            "amount": str(amount), "currency": currency.lower(),
            "allowed_payment_method_types[0]": "card_present",
            "capture_method": "automatic", "metadata[edged_payment_id]": pid}) as r:
        intent = (await r.json())["id"]
    async with http.post(f"{base}/v1/terminal/readers/{device}/process_payment_intent",
                         headers={**auth, "Idempotency-Key": f"{pid}-process"},
                         data={"payment_intent": intent}) as r:
        await r.read()
    async with http.get(f"{base}/v1/terminal/readers/{device}", headers=auth, params={
            "expand[0]": "action.process_payment_intent.payment_intent.latest_charge"}) as r:
        reader = await r.json()
    return str(reader["action"]["status"])


async def _square(http: aiohttp.ClientSession, base: str, device: str, pid: str,
                  amount: int, currency: str) -> str:
    headers = {"Authorization": "Bearer sq-floor", "Square-Version": "2026-09-16"}
    async with http.post(f"{base}/v2/terminals/checkouts", headers=headers, json={
            "idempotency_key": f"{pid}-co", "checkout": {
                "amount_money": {"amount": amount, "currency": currency.upper()},
                "device_options": {"device_id": device}, "note": f"floor {pid}",
                "deadline_duration": "PT30S"}}) as r:
        checkout = (await r.json())["checkout"]["id"]
    async with http.get(f"{base}/v2/terminals/checkouts/{checkout}", headers=headers) as r:
        read = (await r.json())["checkout"]
    async with http.get(f"{base}/v2/payments/{read['payment_ids'][0]}",
                        headers=headers) as r:
        payment = (await r.json())["payment"]
    return str(payment["status"])


async def main(args: argparse.Namespace) -> None:
    http = aiohttp.ClientSession()
    call = _stripe if args.lane == "stripe_reader" else _square

    def exchange(pid: str, amount: int, currency: str) -> Awaitable[str]:
        return call(http, args.fake, args.device, pid, amount, currency)

    await serve(args.port, args.db, exchange)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lane", choices=("stripe_reader", "square_terminal"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fake", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--db", required=True)
    import uvloop

    uvloop.run(main(p.parse_args()))

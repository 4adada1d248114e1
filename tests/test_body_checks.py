"""The fast paths of the request checks give exactly the answers of the full checks."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from edged.payments.cardnumbers import MAX_DEPTH, inspect, plain, text_has_pan
from edged.store.idempotency import KeyLocks

PAN = "4111111111111111"


@pytest.mark.parametrize("body", [
    {"amount": 1250, "currency": "EUR", "method": "cash", "reference": "r-1"},
    {"a": [1, 2, {"b": "x"}]},
    {},
])
def test_an_ordinary_body_is_plain(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    assert plain(raw)
    assert inspect(body) is None


@pytest.mark.parametrize("raw", [
    json.dumps({"reference": PAN}).encode(),
    json.dumps({"reference": "4111 1111 1111 1111"}).encode(),
    json.dumps({"reference": "4111-1111-1111-1111"}).encode(),
    json.dumps({"reference": "4111.1111.1111.1111"}).encode(),
    json.dumps({"reference": "4111/1111/1111/1111"}).encode(),
    json.dumps({"amount": int(PAN)}).encode(),
    json.dumps({"reference": "\\u0034111111111111111"}).encode(),  # an escape
    b'{"reference": "\\u0034111111111111111"}',  # decodes to a PAN
    b'{"reference": "\\ud800"}',  # decodes to a lone surrogate
    json.dumps({"reference": "caf\u00e9"}, ensure_ascii=False).encode(),  # not ASCII
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).encode(),
])
def test_a_body_that_may_hold_a_problem_is_not_plain(raw: bytes) -> None:
    assert not plain(raw)


def test_plain_never_hides_what_inspect_finds() -> None:
    """Random bodies of digits, separators, escapes and brackets: plain implies no problem."""
    rng = random.Random(11)
    alphabet = "0123456789 ./-ab\u00e9"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        number = rng.choice([0, 7, 10 ** 12, 10 ** 13 + 1, int(PAN), 4012888888881881])
        depth = rng.randint(0, MAX_DEPTH + 2)
        value: object = {"t": text, "n": number}
        for _ in range(depth):
            value = [value]
        raw = json.dumps({"v": value}, ensure_ascii=rng.random() < 0.5).encode()
        decoded = json.loads(raw)
        if plain(raw):
            assert inspect(decoded) is None, raw


@pytest.mark.parametrize("text", [PAN, f"x{PAN}y", "4111 1111 1111 1111",
                                  f"99{PAN}77"])
def test_a_card_number_in_a_text_is_still_found(text: str) -> None:
    assert text_has_pan(text)


def test_a_text_without_a_long_run_of_digits_holds_no_card_number() -> None:
    assert not text_has_pan("7c0e6a4e-3b9e-4b8c-9a51-2f3d1e0c9b7a")
    assert not text_has_pan("411111111111")  # 12 digits


async def test_one_holder_per_key_in_arrival_order() -> None:
    locks = KeyLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def holder(name: str, hold: asyncio.Event | None = None) -> None:
        async with locks.hold("token:1", "k"):
            order.append(f"{name} in")
            if hold is not None:
                first_in.set()
                await hold.wait()
            order.append(f"{name} out")

    a = asyncio.create_task(holder("a", release_first))
    await first_in.wait()
    b = asyncio.create_task(holder("b"))
    c = asyncio.create_task(holder("c"))
    d = asyncio.create_task(holder("d"))
    async with locks.hold("token:1", "another key"):  # another key is not held up
        pass
    await asyncio.sleep(0)
    assert order == ["a in"]
    release_first.set()
    await asyncio.gather(a, b, c, d)
    assert order[:6] == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert not locks._held  # nothing kept once nobody holds a key


async def test_a_waiter_cancelled_in_the_queue_neither_takes_nor_blocks_the_key() -> None:
    locks = KeyLocks()
    held = asyncio.Event()
    release = asyncio.Event()
    got: list[str] = []

    async def first() -> None:
        async with locks.hold("s", "k"):
            held.set()
            await release.wait()

    async def waiter(name: str) -> None:
        async with locks.hold("s", "k"):
            got.append(name)

    a = asyncio.create_task(first())
    await held.wait()
    b = asyncio.create_task(waiter("b"))
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0)
    b.cancel()
    release.set()
    await a
    with pytest.raises(asyncio.CancelledError):
        await b
    await c
    assert got == ["c"]
    assert not locks._held


async def test_a_waiter_cancelled_as_it_is_handed_the_key_passes_it_on() -> None:
    locks = KeyLocks()
    held = asyncio.Event()
    got: list[str] = []

    async def waiter(name: str) -> None:
        async with locks.hold("s", "k"):
            got.append(name)

    async with locks.hold("s", "k"):
        held.set()
        b = asyncio.create_task(waiter("b"))
        c = asyncio.create_task(waiter("c"))
        await asyncio.sleep(0)  # both queued
    b.cancel()  # handed the key by the release above, cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await b
    await c
    assert got == ["c"]
    assert not locks._held

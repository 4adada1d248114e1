"""The hot path's JSON codec answers as the standard library does."""

from __future__ import annotations

import json
import math

import pytest

from edged import jsoncodec


@pytest.mark.parametrize("raw", [
    b'{"amount": 1250, "currency": "EUR", "method": "cash"}',
    b'{"reference": "Caf\\u00e9 \\ud83d\\ude00", "n": [1, 2.5, -0.0, 1e16, null, true]}',
    '{"reference": "Café"}'.encode(),
    b'{"amount": 100000000000000000000}',  # beyond 64 bits: orjson refuses, json does not
    b"[]",
    b'"text"',
])
def test_loads_gives_what_json_loads_gives(raw: bytes) -> None:
    assert jsoncodec.loads(raw) == json.loads(raw)


def test_loads_takes_what_only_json_takes() -> None:
    assert math.isnan(jsoncodec.loads(b'{"x": NaN}')["x"])


@pytest.mark.parametrize("raw", [b"{", b'{"a": 1,}', b"\xff\xfe", b'{"a"\n: }'])
def test_loads_refuses_as_json_does(raw: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        jsoncodec.loads(raw)
    with pytest.raises(ValueError) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)
    assert getattr(ours.value, "lineno", None) == getattr(theirs.value, "lineno", None)


def test_dumps_is_compact_utf8_that_json_reads_back() -> None:
    value = {"id": "pay_1", "reference": "Café ☕", "amount": 1250, "refunds": [],
             "failure": None, "ok": True}
    out = jsoncodec.dumps(value)
    assert isinstance(out, bytes)
    assert b" " not in out.replace("Café ☕".encode(), b"")
    assert "Café ☕".encode() in out
    assert json.loads(out) == value
    assert jsoncodec.dumps_text(value) == out.decode()

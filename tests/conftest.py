"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakes import square as square_fake
from tests.helpers import Api, make_config, running


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(make_config(tmp_path / "data")) as client:
        yield client


@pytest.fixture(autouse=True)
def square_contract() -> Iterator[None]:
    """Every Square fake a test made saw only calls Square serves as sent, and answered in
    the shapes of Square's published description (tests/fixtures/square/api.json)."""
    first = len(square_fake.INSTANCES)
    yield
    made = [ref() for ref in square_fake.INSTANCES[first:]]
    del square_fake.INSTANCES[first:]
    for fake in made:
        if fake is not None:
            fake.assert_no_violations()

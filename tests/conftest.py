"""Shared fixtures."""

from __future__ import annotations

import compileall
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakes import square as square_fake
from tests.helpers import Api, make_config, running


ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's sources to bytecode once, before any test starts a process.

    The suite starts a few hundred ``python -m edged`` (and ``-m tests.…``) processes; with
    ``PYTHONDONTWRITEBYTECODE`` set none of them can leave its bytecode behind, so each one
    compiled every module it imports again (about half a second of CPU a process). Python
    reads bytecode that is already there and checks it against its source's size and time.
    Only the main process does it (under pytest-xdist the workers find it done). For the same
    reason pytest may keep the test modules it rewrote for their asserts (``__pycache__``,
    ignored by git): every pytest process of a run (each worker, the serial run) would
    otherwise rewrite all of them again, about five seconds each."""
    sys.dont_write_bytecode = False
    config.addinivalue_line(
        "markers", "serial: a promise in real time (an answer within a second); `make test`"
                   " runs these after the others, alone, not beside other tests")
    if not hasattr(config, "workerinput"):
        for package in ("edged", "drivers", "sync", "tests"):
            compileall.compile_dir(ROOT / package, quiet=1)


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

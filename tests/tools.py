"""Tools some tests need from Debian (chromium, promtool, systemd-analyze).

Without one, the test is skipped with the reason and the package that brings it; under CI
(``CI=true``, where ``.ci/run`` installs them) a missing tool fails the test instead.
"""

from __future__ import annotations

import os
import shutil

import pytest


def need(program: str, package: str, why: str) -> str:
    """The program's path, or skip (fail under CI) saying what is missing and why."""
    found = shutil.which(program)
    if found:
        return found
    message = (f"{program} is not installed, so {why} cannot be tested here"
               f" (apt-get install {package}; .ci/run installs it)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)

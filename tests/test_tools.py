"""A test that needs a Debian tool says why it skips, and never skips under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools import need


def test_missing_tool_skips_with_its_reason_and_fails_under_ci(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to be found there
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception,
                       match=r"chromium is not installed, so the page cannot be tested here"
                             r" \(apt-get install chromium; .ci/run installs it\)"):
        need("chromium", "chromium", "the page")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip: promtool"):
        need("promtool", "prometheus", "the rules")
    tool = tmp_path / "promtool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert need("promtool", "prometheus", "the rules") == str(tool)

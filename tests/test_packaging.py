"""What `pip install .` (and so `make run`) brings: everything a configured daemon needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_the_cloud_sdks_are_ordinary_dependencies() -> None:
    """The README's Stripe and Square set-up runs on a plain install: the SDKs are not in an
    extra (they stay imported lazily: test_processor_gateways checks that)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {Requirement(r).name for r in project["dependencies"]}
    assert {"stripe", "squareup"} <= required
    for extra, reqs in project.get("optional-dependencies", {}).items():
        assert not {Requirement(r).name for r in reqs} & {"stripe", "squareup"}, extra

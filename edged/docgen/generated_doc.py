"""Files under docs/ generated from the code: write them, or check that they are fresh."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def main(argv: list[str], default: str, render: Callable[[], str], make_target: str) -> int:
    """``[PATH] [--check]``: write ``render()`` to PATH, or exit 1 when PATH differs."""
    check = "--check" in argv
    paths = [a for a in argv if not a.startswith("--")]
    target = Path(paths[0] if paths else default)
    text = render()
    if check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is stale: run `make {make_target}` and commit it", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return 0

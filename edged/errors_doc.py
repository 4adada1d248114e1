"""Generate ``docs/errors.md`` from the code table; ``--check`` fails when it is stale."""

from __future__ import annotations

import sys
from pathlib import Path

from edged.errors import CODES

_GROUPS = {
    "1": "Request",
    "2": "Payments and refunds",
    "3": "Terminals",
    "4": "Inventory and orders",
    "5": "Security",
    "6": "Integrations",
}


def render() -> str:
    lines = [
        "# Error codes",
        "",
        "Generated from `edged/errors.py` by `make errors`; do not edit by hand.",
        "Every error answer has the shape",
        '`{"error": {"code": "ERR-NNNN", "message": "...", "retryable": bool}}`.',
        "A 4xx answer changed nothing: fix the request and send it again.",
    ]
    current = ""
    for spec in sorted(CODES.values(), key=lambda c: c.code):
        group = spec.code[4]
        if group != current:
            current = group
            lines += ["", f"## {group}xxx — {_GROUPS[group]}", "",
                      "| code | HTTP | meaning | retryable |", "|---|---|---|---|"]
        retry = "yes" if spec.retryable else "no"
        lines.append(f"| {spec.code} | {spec.status} | {spec.title} | {retry} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if not a.startswith("--")]
    target = Path(paths[0] if paths else "docs/errors.md")
    text = render()
    if check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is stale: run `make errors` and commit it", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

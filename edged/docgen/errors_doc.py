"""Generate ``docs/errors.md`` from the code table; ``--check`` fails when it is stale."""

from __future__ import annotations

import sys

from edged.docgen import generated_doc
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


if __name__ == "__main__":
    raise SystemExit(generated_doc.main(sys.argv[1:], "docs/errors.md", render, "errors"))

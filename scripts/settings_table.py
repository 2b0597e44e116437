"""Regenerate the README's configuration table from .env.example (the one source).

.venv/bin/python scripts/settings_table.py          # rewrite README.md
.venv/bin/python scripts/settings_table.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render(example: str) -> str:
    rows: list[str] = []
    comment = ""
    for line in example.splitlines():
        if not line.strip():
            comment = ""  # a comment block is the one right above its setting
        elif line.startswith("# ---"):
            group = line.strip("# -").strip()
            rows.append(f"| **{group}** | | |")
            comment = ""
        elif line.startswith("# "):
            # A description may run over several lines: all of them (the last one alone was a fragment).
            comment = f"{comment} {line[2:].strip()}".strip()
        elif "=" in line and not line.startswith("#"):
            name, default = line.split("=", 1)
            shown = f"`{default}`" if default else ""
            rows.append(f"| `{name}` | {shown} | {comment.replace('|', '/')} |")
            comment = ""
    return "\n".join(["| Setting | Default | What it does |", "|---|---|---|", *rows])


def main() -> int:
    readme_path = REPO / "README.md"
    readme = readme_path.read_text()
    table = render((REPO / ".env.example").read_text())
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    updated = f"{before}{START}\n{table}\n{END}{after}"
    if "--check" in sys.argv:
        if updated != readme:
            sys.stderr.write("README.md configuration table is stale: run scripts/settings_table.py\n")
            return 1
        return 0
    readme_path.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())

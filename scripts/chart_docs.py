#!/usr/bin/env python3
"""Write the values table of helm/dago/README.md from the comments in values.yaml.

A value is documented by a ``# -- text`` comment right above its key (further ``#`` lines
continue the text). A documented key is one row, whatever its value (a map such as
``resources`` is one value); an undocumented key holding a map is a section whose keys
are documented one by one; an undocumented key holding anything else is an error. The
table replaces what stands between ``<!-- values:start -->`` and ``<!-- values:end -->``.

Usage: python3 scripts/chart_docs.py [--check]   (--check: exit 1 when README is stale)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "helm" / "dago" / "values.yaml"
README = ROOT / "helm" / "dago" / "README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^( *)([A-Za-z0-9_.-]+):(.*)$")


def documented(text: str) -> dict[str, str]:
    """Dotted key -> its documentation, from the values.yaml text."""
    docs: dict[str, str] = {}
    comment: list[str] = []
    in_doc = False
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing maps
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment, in_doc = [stripped[4:].strip()], True
            continue
        if stripped.startswith("#"):
            if in_doc:
                comment.append(stripped[1:].strip())
            continue
        m = _KEY.match(line)
        if not m:
            comment, in_doc = [], False
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        inside_documented = any(
            ".".join(k for _, k in stack[: i + 1]) in docs for i in range(len(stack))
        )
        if comment and not inside_documented:
            docs[path] = " ".join(comment)
        stack.append((indent, key))
        comment, in_doc = [], False
    return docs


def _lookup(values: Any, path: str) -> Any:
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def check_complete(values: dict[str, Any], docs: dict[str, str]) -> list[str]:
    """Keys holding a non-map value that no documented key covers."""
    missing: list[str] = []

    def walk(node: Any, path: str) -> None:
        if path in docs:
            return
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        else:
            missing.append(path)

    walk(values, "")
    return missing


def table(values: dict[str, Any], docs: dict[str, str]) -> str:
    """The Markdown table of every documented value."""
    rows = ["| value | default | description |", "| --- | --- | --- |"]
    for path, doc in docs.items():
        default = json.dumps(_lookup(values, path), separators=(", ", ": "))
        cells = (default.replace("|", "\\|"), doc.replace("|", "\\|"))
        rows.append(f"| `{path}` | `{cells[0]}` | {cells[1]} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README table, or check it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    docs = documented(text)
    missing = check_complete(values, docs)
    if missing:
        print(f"undocumented values in {VALUES.name}: {', '.join(missing)}", file=sys.stderr)
        return 1
    readme = README.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    want = f"{head}{START}\n{table(values, docs)}\n{END}{tail}"
    if want == readme:
        return 0
    if args.check:
        print(f"{README.relative_to(ROOT)} is stale: run `make helm-docs`", file=sys.stderr)
        return 1
    README.write_text(want)
    print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

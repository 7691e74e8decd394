"""What every generator of a committed file does (``make gen`` writes the file; ``--check``,
as ``make gen-check`` does for all of them, fails when it differs): one ``main``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class GenerationError(Exception):
    """The sources no longer fit the generator: said, and the run fails."""


def main(
    out: Path, render: Callable[[], str], prog: str, doc: str | None, argv: Sequence[str] | None
) -> int:
    """Write ``render()`` to ``out``, or with ``--check`` fail when ``out`` differs."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    try:
        text = render()
    except GenerationError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date: run `make gen`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    return 0

"""The documentation's generated tables: the diagnose checks (`tlviz.diagnose.registry`, in ``docs/diagnose.md``)
and the ``TLVIZ_*`` settings (`tlviz.config`, in ``docs/configuration.md``).

Each table sits between two comment lines in its page; `replace_block` rewrites what is between them,
and `update_command` is the ``python -m ... [--update FILE]`` command each generator offers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

#: One generated block: its start marker, its end marker and the function that renders its body.
Block = tuple[str, str, Callable[[], str]]


def replace_block(text: str, start: str, end: str, body: str) -> str:
    """`text` with the part between the lines `start` and `end` replaced by `body`.

    Args:
        text: the whole file, holding `start` and, after it, `end`.
        start: the comment line opening the block.
        end: the comment line closing it.
        body: the new content (a blank line is kept on each side).

    Returns:
        The new text.

    Raises:
        ValueError: a marker is missing.
    """
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found_start or not found_end:
        raise ValueError(f"The file has no {start!r} ... {end!r} block to replace.")
    return f"{head}{start}\n\n{body}\n\n{end}{tail}"


def update_command(prog: str, what: str, blocks: Sequence[Block], argv: list[str] | None = None) -> int:
    """``PROG [--update FILE]``: print the generated tables, or rewrite them in FILE between their markers.

    Args:
        prog: the command as the user types it (``python -m tlviz.diagnose``).
        what: what the tables are, for the help (``"table of checks"``).
        blocks: the `Block`s to print or rewrite.
        argv: the arguments. Defaults to `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog=prog, description=f"Print the {what}, or rewrite it in a file.")
    parser.add_argument("--update", metavar="FILE", help=f"rewrite the {what} between the markers in FILE")
    args = parser.parse_args(argv)
    if args.update is None:
        print("\n\n".join(render() for _, _, render in blocks))
        return 0
    path = Path(args.update)
    text = path.read_text(encoding="utf-8")
    for start, end, render in blocks:
        text = replace_block(text, start, end, render())
    path.write_text(text, encoding="utf-8")
    return 0

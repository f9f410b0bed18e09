"""Command line: ``python -m tlviz SUBCOMMAND ...``.

Each sub-command lives in ``tlviz/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Conventions shared by all of them: ``--json`` prints exactly one JSON object on
stdout; progress and notes go to stderr (``--quiet`` turns progress off; see
`tlviz.progress`); refused input prints the same clear message as the app on
stderr and exits with status 2. ``python -m tlviz`` keeps TensorFlow's start-up
lines and Keras's progress bars off the terminal (`tlviz.quiet`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tlviz.errors import TlvizError
from tlviz.progress import ProgressReporter

SUBCOMMANDS = ("layers", "normalize", "finetune", "diagnose", "repair", "convert")
EXIT_INVALID_INPUT = 2


def _available():
    mods = {}
    for name in SUBCOMMANDS:
        try:
            mods[name] = importlib.import_module(f"tlviz.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tlviz.commands.{name}":
                raise
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="python -m tlviz",
        description="tlviz: find out why a transfer-learning image classifier is not learning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr (refusals and errors are still printed)")
    mods = _available()
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, parents=[common])
        mod.add_arguments(p)
    return parser, mods


def main(argv=None) -> int:
    """Run one sub-command.

    Args:
        argv: the arguments after ``python -m tlviz``. Defaults to `sys.argv[1:]`.

    Returns:
        The exit status: the sub-command's (0 unless it says otherwise), 2 when
        the input is refused.
    """
    parser, mods = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_INVALID_INPUT
    args.progress = ProgressReporter(enabled=not args.quiet)
    try:
        with args.progress:  # closed (a bar's line ended) before "error: ..." is printed
            return int(mods[args.command].run(args) or 0)
    except TlvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT


def console() -> int:
    """The ``tlviz`` command that ``pip install .`` puts on the PATH (same as ``python -m tlviz``)."""
    from tlviz.quiet import quiet_tensorflow

    quiet_tensorflow()  # before anything imports TensorFlow: its start-up lines would reach the terminal
    return main()

"""Command line: ``python -m tlviz SUBCOMMAND ...``.

Each sub-command lives in ``tlviz/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Conventions shared by all of them: ``--json`` prints exactly one JSON object on
stdout; refused input prints the same clear message as the app on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tlviz.errors import TlvizError

SUBCOMMANDS = ("layers", "normalize", "finetune", "diagnose")
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
    mods = _available()
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser, mods


def main(argv=None) -> int:
    parser, mods = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_INVALID_INPUT
    try:
        return int(mods[args.command].run(args) or 0)
    except TlvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT

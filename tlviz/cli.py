"""Command line: ``python -m tlviz SUBCOMMAND ...``.

Each sub-command lives in ``tlviz/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Conventions shared by all of them: ``--json`` prints exactly one JSON object on
stdout; progress and notes go to stderr (``--quiet`` turns progress off; see
`tlviz.progress`). ``python -m tlviz`` keeps TensorFlow's start-up lines and
Keras's progress bars off the terminal (`tlviz.quiet`).

Exit status, the same for every command (`tlviz.commands`):

- 0 (`EXIT_OK`): nothing at error level;
- 1 (`EXIT_ERROR`): at least one error-level finding, printed as ``ERROR: ...`` and in ``--json``'s
  ``findings`` with ``"severity": "error"`` (a fine-tuning run that failed, diverged or did not learn);
- 2 (`EXIT_REFUSED`): refused input (a model, an image set or an argument that cannot be used): the same
  clear message as the app on stderr (``error: ...``), nothing on stdout; argparse's own refusals of an
  unknown option or value exit 2 too, naming the allowed values;
- 3 (`EXIT_INTERNAL`): tlviz itself failed (a bug, not a finding about the model): the traceback and a
  line saying so on stderr.

A reader that closes stdout early (``tlviz ... | head``) ends the command quietly with 141, as it ends a
Unix tool.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from tlviz.commands import EXIT_ERROR, EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED
from tlviz.errors import TlvizError
from tlviz.progress import ProgressReporter

SUBCOMMANDS = ("layers", "normalize", "finetune", "diagnose", "repair", "convert")
EXIT_INVALID_INPUT = EXIT_REFUSED  # the older name
#: stdout was closed by its reader: 128 + SIGPIPE, what a shell reports for a Unix tool ended that way.
EXIT_BROKEN_PIPE = 141
__all__ = ["main", "console", "build_parser", "SUBCOMMANDS", "EXIT_OK", "EXIT_ERROR", "EXIT_REFUSED", "EXIT_INTERNAL"]


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
        The exit status (see the module's docstring): the sub-command's own (`EXIT_OK` or `EXIT_ERROR`),
        `EXIT_REFUSED` when the input is refused, `EXIT_INTERNAL` when tlviz itself failed.

    Raises:
        SystemExit: argparse refused the arguments (status 2, the usage and the reason on stderr), or
            ``--help`` was asked for (status 0).
    """
    parser, mods = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_REFUSED
    args.progress = ProgressReporter(enabled=not args.quiet)
    try:
        with args.progress:  # closed (a bar's line ended) before "error: ..." is printed
            return int(mods[args.command].run(args) or EXIT_OK)
    except TlvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:  # stdout's reader went away (`tlviz ... | head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - a crash is not a finding: never let it read as exit 1
        traceback.print_exc(file=sys.stderr)
        print(f"internal error: tlviz failed ({type(exc).__name__}: {exc}). This is a bug in tlviz, not a finding "
              "about your model: please report it with the traceback above.", file=sys.stderr)
        return EXIT_INTERNAL


def console() -> int:
    """The ``tlviz`` command that ``pip install .`` puts on the PATH (same as ``python -m tlviz``)."""
    from tlviz.quiet import quiet_tensorflow

    quiet_tensorflow()  # before anything imports TensorFlow: its start-up lines would reach the terminal
    return main()

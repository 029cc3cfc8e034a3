"""The ``splitpack`` command line: one parser, one map from errors to exit statuses.

Each group of verbs has its module — :mod:`~splitpack.cli.model` (``cuts``, ``split``),
:mod:`~splitpack.cli.bundle` (``compile``, ``inspect``, ``verify``, ``profile``),
:mod:`~splitpack.cli.runtime` (``serve``, ``run``, ``export-triton``),
:mod:`~splitpack.cli.bench` (``bench ...``) and :mod:`~splitpack.cli.demo` (``demo``) — and
adds its sub-parsers here. Only :func:`main` catches errors broadly: it prints a
``SplitpackError``'s message and returns :func:`exit_status` of it (2, or 1 for a bug). The
module entry points (``python -m splitpack.serving.edge``, ``python -m splitpack.serving.ray_serve``)
are this CLI's ``serve`` with its engine chosen (:func:`run_as`).
"""

from __future__ import annotations

import argparse
import sys

from splitpack.cli.bench import add_bench_commands
from splitpack.cli.bundle import add_bundle_commands
from splitpack.cli.common import format_table
from splitpack.cli.demo import add_demo_command
from splitpack.cli.model import add_model_commands
from splitpack.cli.runtime import add_runtime_commands
from splitpack.errors import InternalError, SplitpackError
from splitpack.quiet import quiet_third_party, show_project_messages

__all__ = ["main", "build_parser", "exit_status", "run_as", "format_table"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="splitpack", description="Compile a trained model into a bundle of head/tail variants for end-edge co-inference.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands)
    add_bench_commands(commands)
    add_bundle_commands(commands)
    add_demo_command(commands)
    add_runtime_commands(commands)
    _add_verbose(parser)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default=False) -> None:
    """``--verbose`` on the top-level parser and on every sub-command, so that it may follow the
    command name; a sub-command's flag leaves the top-level value alone unless given."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show third-party libraries' warnings and log lines")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbose(command, argparse.SUPPRESS)


def exit_status(error: SplitpackError) -> int:
    """The exit status of a command that failed with ``error``: 1 for a bug of splitpack's own
    (:class:`~splitpack.errors.InternalError`), 2 for everything the user can fix."""
    return 1 if isinstance(error, InternalError) else 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splitpack`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)  # before a handler imports torch or LiteRT
    show_project_messages(args.verbose)
    try:
        return args.handler(args)
    except SplitpackError as exc:
        kind = "internal error (please report)" if isinstance(exc, InternalError) else "error"
        print(f"splitpack: {kind}: {exc}", file=sys.stderr)
        return exit_status(exc)


def run_as(prefix: list[str]) -> None:
    """Run the CLI with ``prefix`` before this process's arguments and exit with its status:
    what a module entry point such as ``python -m splitpack.serving.edge`` does."""
    sys.exit(main([*prefix, *sys.argv[1:]]))

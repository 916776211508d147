r"""The ``fedai`` command.

Subcommands are registered by modules: each module in :data:`_COMMAND_MODULES` exposes
``register(subparsers) -> None``, adding parsers whose ``func(args) -> int`` is the
command. Registering must stay cheap (``fedai --help`` imports every one of them): those
modules import torch, TenSEAL, Flower and gRPC inside the command functions.

``-v/--verbose``, ``-q/--quiet`` are accepted before or after the subcommand (the
subparsers get them from :func:`add_common_options`). Typed
:class:`~fedai.errors.FedAIError`\ s become one line on stderr, ``fedai CMD: error:
MESSAGE``, and an exit status from :mod:`fedai.errors`: :data:`USAGE_ERRORS` (bad input,
found before anything ran) exit 2, every other FedAIError exits 1; ``-v`` adds the error's
class and traceback. argparse's usage errors are one line in the same form, with a
did-you-mean and a pointer to ``--help``, and exit 2 (:mod:`fedai.usage`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from fedai import logsetup, progress, usage
from fedai.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CheckpointError,
    ConfigError,
    DataError,
    FedAIError,
    InferenceError,
    InsecureParametersError,
    InvalidPrivacyParameterError,
    KeyFileError,
    LedgerError,
    ModelError,
)

logger = logging.getLogger(__name__)

# Modules that add subcommands. Optional ones may be missing while work is in progress.
_COMMAND_MODULES = (
    "fedai.commands.simulate",
    "fedai.commands.model",
    "fedai.commands.deploy",
    "fedai.privacy.cli",
    "fedai.crypto.cli",
    "fedai.inference.cli",
)

USAGE_ERRORS: tuple[type[FedAIError], ...] = (
    ConfigError,  # config values, command-line values, ports, tokens files
    DataError,  # data sources and files (PartitionError included)
    ModelError,  # unknown model, missing or mismatched model files
    KeyFileError,  # missing, unreadable or wrong key bundles
    InvalidPrivacyParameterError,  # epsilon, delta, sigma outside their domain
    InsecureParametersError,  # key parameters below the security floor
    InferenceError,  # rows or a model that encrypted inference cannot take
    LedgerError,  # an unreadable ledger file
    CheckpointError,  # a corrupt, foreign or other-config checkpoint given to --resume
)
"""Errors that mean the user's input is wrong: exit status 2 (:data:`EXIT_USAGE`).

Every other :class:`FedAIError` (a failed run, a refused or corrupt payload, a key
mismatch found while running, a server that failed a request) exits 1
(:data:`EXIT_FAILED`)."""

EXIT_STATUSES = (
    (EXIT_OK, "the command did what was asked"),
    (
        EXIT_FAILED,
        "it ran but failed: no accepted round, the last rounds all failed, stopped early, "
        "or a server failed a request (the message, and results.json for a run, say why)",
    ),
    (
        EXIT_USAGE,
        "bad input found before anything ran: options, config, data, keys, paths, ports, tokens",
    ),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


class _VersionAction(argparse.Action):
    """``--version``: print ``fedai X.Y.Z`` (package metadata, read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        _print_version()
        parser.exit(EXIT_OK)


def _print_version() -> None:
    from fedai import __version__

    print(f"fedai {__version__}")


def _asks_for_version(argv: Sequence[str]) -> bool:
    """``--version`` among the options before the subcommand (answered without a parser)."""
    for arg in argv:
        if arg == "--version":
            return True
        if not arg.startswith("-"):
            return False
    return False


def add_common_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """Add ``-v/--verbose`` and ``-q/--quiet`` to ``parser``.

    On a subcommand the options default to "not given" (``argparse.SUPPRESS``), so
    ``fedai -q simulate`` keeps the ``-q`` given before the subcommand; ``-v`` after the
    subcommand counts into ``verbose_after``, which :func:`main` adds to ``verbose``.
    Option strings a subcommand already defines are left to it.
    """
    taken = set(parser._option_string_actions)
    verbose = [s for s in ("-v", "--verbose") if s not in taken]
    quiet = [s for s in ("-q", "--quiet") if s not in taken]
    if verbose:
        parser.add_argument(
            *verbose,
            dest="verbose" if top_level else "verbose_after",
            action="count",
            default=0 if top_level else argparse.SUPPRESS,
            help="more log output: -v fedai's debug lines, -vv also other libraries' "
            "(and gRPC's own log)",
        )
    if quiet:
        parser.add_argument(
            *quiet,
            dest="quiet",
            action="store_true",
            default=False if top_level else argparse.SUPPRESS,
            help="no progress or per-round lines, no warnings: errors and results only",
        )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                out.extend([sub, *_subparsers(sub)])
    return out


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand.

    Cheap by design: it imports no torch, TenSEAL, Flower or gRPC.
    """
    statuses = "\n".join(
        textwrap.fill(text, 79, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
        for code, text in EXIT_STATUSES
    )
    parser = usage.ArgumentParser(
        prog="fedai",
        description="Privacy-preserving federated learning: Flower rounds, Opacus DP-SGD, "
        "homomorphic secure aggregation (CKKS / Paillier) and encrypted inference.",
        epilog="Start with: fedai simulate   (runs experiments/quickstart.toml settings).\n"
        "Each subcommand has --help; -v and -q also work after the subcommand.\n\n"
        f"exit status:\n{statuses}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print fedai's version and exit")
    add_common_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # that command is not part of this build
            raise
        module.register(sub)
    for subparser in _subparsers(parser):
        add_common_options(subparser)
        subparser.set_defaults(command_prog=subparser.prog)
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; ``verbose`` counts every ``-v`` before and after the subcommand.

    A usage error is reported by the (sub)command it was given to, on one line (see
    :mod:`fedai.usage`): ``fedai simulate --sett a=b`` says ``fedai simulate: error:
    unrecognized arguments: --sett a=b; did you mean '--set'? (see 'fedai simulate
    --help')``.

    Raises:
        SystemExit: status 2 for a usage error (argparse's own), including ``-v`` with
            ``-q``.
    """
    args, extras = parser.parse_known_args(argv)
    owners = {sub.prog: sub for sub in [parser, *_subparsers(parser)]}
    owner = owners.get(getattr(args, "command_prog", parser.prog), parser)
    if extras:
        line = list(sys.argv[1:] if argv is None else argv)
        owner.error(usage.unrecognized_message(owner, extras, line))
    args.verbose = args.verbose + getattr(args, "verbose_after", 0)
    if args.verbose and args.quiet:
        owner.error("-v/--verbose and -q/--quiet cannot be combined")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see :data:`EXIT_STATUSES`)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if _asks_for_version(sys.argv[1:] if argv is None else argv):
        _print_version()  # without importing the subcommands
        return EXIT_OK
    parser = build_parser()
    args = parse_args(parser, argv)
    # Before any command imports grpc or flwr: they read these once, at import.
    logsetup.quiet_native_logs(args.verbose)
    logsetup.configure_logging(args.verbose, quiet=args.quiet)
    prog = getattr(args, "command_prog", parser.prog)
    progress.configure(enabled=not args.quiet, prefix=prog)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except FedAIError as err:
        status = EXIT_USAGE if isinstance(err, USAGE_ERRORS) else EXIT_FAILED
        kind = f" ({type(err).__name__})" if args.verbose else ""
        logger.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {err}{kind}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = [
    "EXIT_STATUSES",
    "USAGE_ERRORS",
    "add_common_options",
    "build_parser",
    "main",
    "parse_args",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

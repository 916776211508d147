r"""The ``fedai`` command.

Subcommands are registered by modules: each module in :data:`_COMMAND_MODULES` exposes
``register(subparsers) -> None``, adding parsers whose ``func(args) -> int`` is the
command. Typed :class:`~fedai.errors.FedAIError`\\ s become a one-line message on stderr
and exit status 2 (bad input) or 1 (anything else fedai refuses to do).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from fedai.errors import (
    ConfigError,
    DataError,
    FedAIError,
    InvalidPrivacyParameterError,
    KeyFileError,
    ModelError,
)

# Modules that add subcommands. Optional ones may be missing while work is in progress.
_COMMAND_MODULES = (
    "fedai.commands.simulate",
    "fedai.privacy.cli",
    "fedai.crypto.cli",
    "fedai.inference.cli",
)
_USAGE_ERRORS = (ConfigError, DataError, ModelError, KeyFileError, InvalidPrivacyParameterError)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedai",
        description="Privacy-preserving federated learning: Flower rounds, Opacus DP-SGD, "
        "homomorphic secure aggregation (CKKS / Paillier) and encrypted inference.",
        epilog="Start with: fedai simulate   (runs experiments/quickstart.toml settings). "
        "Each subcommand has --help.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # that command is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except _USAGE_ERRORS as err:
        print(f"fedai {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FedAIError as err:
        print(f"fedai {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fedai {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

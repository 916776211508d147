"""Subcommands of the ``fedai`` CLI that are not owned by a library subpackage."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str) -> None:
    """Add the shared ``--config FILE`` and repeatable ``--set SECTION.KEY=VALUE`` options."""
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set train.lr=0.1 (repeatable; values are read as TOML)",
    )

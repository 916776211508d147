"""Usage errors of the ``fedai`` command: one line, a did-you-mean, a pointer to ``--help``.

argparse prints a usage error as two lines, the usage of the parser that failed and
``PROG: error: MESSAGE``, and reports unrecognized arguments on the top-level parser
whichever subcommand they were given to. :class:`ArgumentParser` prints one line instead,
in the form of fedai's own errors, and exits with argparse's status 2
(:data:`~fedai.errors.EXIT_USAGE`): ``fedai simulte`` prints ``fedai: error: argument
COMMAND: invalid choice: 'simulte'; did you mean 'simulate'? (see 'fedai --help')``.

:func:`unrecognized_message` words the unrecognized-arguments error for the subcommand
that got them, with the options (or the ``--config FILE`` / ``--set KEY=VALUE`` spelling)
they were probably meant as.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NoReturn

from fedai.errors import EXIT_USAGE

__all__ = ["ArgumentParser", "did_you_mean", "unrecognized_message"]


def did_you_mean(word: str, candidates: Iterable[Any]) -> str | None:
    """The candidate closest to ``word`` (``difflib.get_close_matches``), or ``None``.

    Non-string candidates (``choices=[1, 2]``) are never suggested.
    """
    names = [c for c in candidates if isinstance(c, str)]
    matches = difflib.get_close_matches(word, names, n=1)
    return matches[0] if matches else None


def _and_list(hints: Sequence[str]) -> str:
    quoted = [f"'{h}'" for h in hints]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with fedai's one-line usage errors; subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see 'PROG --help')`` on stderr and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """The choices check of argparse, naming the closest choice (if any) instead of all."""
        choices: Collection[Any] | None = action.choices  # type: ignore[assignment]
        if choices is None or value in choices or not isinstance(value, str):
            super()._check_value(action, value)
            return
        match = did_you_mean(value, choices)
        if match is None:
            super()._check_value(action, value)
            return
        raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {match!r}?")


def _option_hint(parser: argparse.ArgumentParser, arg: str) -> str | None:
    """``--sett=a=b`` -> ``--set=a=b``: the closest option of ``parser``, value kept."""
    name, sep, value = arg.partition("=")
    match = did_you_mean(name, parser._option_string_actions)
    return None if match is None else f"{match}{sep}{value}"


def _value_hint(parser: argparse.ArgumentParser, arg: str, argv: Sequence[str]) -> str | None:
    """A stray value: ``--set a.b 0.1`` -> ``--set a.b=0.1``; ``x.toml`` -> ``--config x.toml``."""
    options = parser._option_string_actions
    for i in range(2, len(argv)):
        if argv[i] != arg:
            continue
        action = options.get(argv[i - 2])
        metavar = action.metavar if action is not None else None
        if isinstance(metavar, str) and "=" in metavar and "=" not in argv[i - 1]:
            return f"{argv[i - 2]} {argv[i - 1]}={arg}"
    if arg.endswith(".toml") and "--config" in options:
        return f"--config {arg}"
    return None


def unrecognized_message(
    parser: argparse.ArgumentParser, extras: Sequence[str], argv: Sequence[str]
) -> str:
    """The ``unrecognized arguments: ...`` error, with what each was probably meant as.

    Args:
        parser: the (sub)command parser the arguments were given to.
        extras: the arguments no parser recognized, in order.
        argv: the whole command line (without the program name), to see what came before
            a stray value.

    Returns:
        e.g. ``unrecognized arguments: --sett a=b; did you mean '--set'?``.
    """
    hints: list[str] = []
    for arg in extras:
        is_option = arg.startswith("-") and arg != "-"
        hint = _option_hint(parser, arg) if is_option else _value_hint(parser, arg, argv)
        if hint is not None and hint not in hints:
            hints.append(hint)
    message = f"unrecognized arguments: {' '.join(extras)}"
    return f"{message}; did you mean {_and_list(hints)}?" if hints else message

"""One-line errors: argparse usage errors with a did-you-mean, warnings through logging."""

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fedai import cli, logsetup, usage
from fedai.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
CONFIGURED_LOGGERS = ("", *logsetup.FEDAI_LOGGERS, logsetup.WARNINGS_LOGGER)


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """configure_logging() sets loggers and warnings.showwarning: undo both."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate)
        for name in CONFIGURED_LOGGERS
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (level, handlers, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.propagate = propagate
        if name:
            lg.handlers[:] = handlers
        else:
            lg.handlers[:] = [h for h in lg.handlers if h.get_name() != "fedai-stderr"]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


# ------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (  # a mistyped command
            ["simulte"],
            "fedai: error: argument COMMAND: invalid choice: 'simulte'; "
            "did you mean 'simulate'? (see 'fedai --help')",
        ),
        (  # a mistyped command of a subcommand
            ["keys", "craete", "--out", "k"],
            "fedai keys: error: argument ACTION: invalid choice: 'craete'; "
            "did you mean 'create'? (see 'fedai keys --help')",
        ),
        (  # a mistyped option, reported by the subcommand it was given to
            ["simulate", "--sett", "train.lr=0.1"],
            "fedai simulate: error: unrecognized arguments: --sett train.lr=0.1; "
            "did you mean '--set'? (see 'fedai simulate --help')",
        ),
        (
            ["simulate", "--sett=train.lr=0.1"],
            "fedai simulate: error: unrecognized arguments: --sett=train.lr=0.1; "
            "did you mean '--set=train.lr=0.1'? (see 'fedai simulate --help')",
        ),
        (  # a mistyped choice
            ["simulate", "--backend", "rey"],
            "fedai simulate: error: argument --backend: invalid choice: 'rey'; "
            "did you mean 'ray'? (see 'fedai simulate --help')",
        ),
        (  # a config file without --config, a --set value without '='
            ["simulate", "x.toml", "--set", "train.lr", "0.1"],
            "fedai simulate: error: unrecognized arguments: x.toml 0.1; did you mean "
            "'--config x.toml' and '--set train.lr=0.1'? (see 'fedai simulate --help')",
        ),
        (  # a missing argument
            ["keys", "create"],
            "fedai keys create: error: the following arguments are required: --out "
            "(see 'fedai keys create --help')",
        ),
        (
            ["simulate", "--config"],
            "fedai simulate: error: argument --config: expected one argument "
            "(see 'fedai simulate --help')",
        ),
        (
            ["simulate", "-v", "-q"],
            "fedai simulate: error: -v/--verbose and -q/--quiet cannot be combined "
            "(see 'fedai simulate --help')",
        ),
    ],
)
def test_usage_error_is_one_line_with_a_suggestion_and_exits_2(capsys, argv, line):
    # Act
    code, out, err = _usage_error(argv, capsys)
    # Assert
    assert code == EXIT_USAGE == 2  # docs/reference/exit-statuses.md: usage errors exit 2
    assert out == ""
    assert err == f"{line}\n"


def test_nothing_close_is_not_suggested(capsys):
    # Act
    code, _, err = _usage_error(["simulate", "--zzzz"], capsys)
    # Assert
    assert code == EXIT_USAGE
    assert err == (
        "fedai simulate: error: unrecognized arguments: --zzzz (see 'fedai simulate --help')\n"
    )


def test_invalid_choice_without_a_close_one_lists_the_choices(capsys):
    # Act
    _, _, err = _usage_error(["simulate", "--backend", "xyz"], capsys)
    # Assert
    assert err == (
        "fedai simulate: error: argument --backend: invalid choice: 'xyz' (choose from "
        "'inprocess', 'ray') (see 'fedai simulate --help')\n"
    )


def test_every_subcommand_parser_gives_one_line_errors():
    # Arrange
    parser = cli.build_parser()
    # Act
    parsers = [parser, *cli._subparsers(parser)]
    # Assert
    assert len(parsers) > 10
    assert all(isinstance(p, usage.ArgumentParser) for p in parsers)


# ------------------------------------------------------------------ warnings
def _warn_twice(message):
    for _ in range(2):
        with warnings.catch_warnings():  # resets the once-per-location registry
            warnings.simplefilter("default")
            warnings.warn(message, UserWarning, stacklevel=1)


def test_a_warning_is_one_log_line_once_at_normal_verbosity(recwarn):
    # Arrange
    stream = io.StringIO()
    logsetup.configure_logging(0, stream=stream)
    # Act
    _warn_twice("Optimal order is the smallest alpha.\n  Please expand.")
    # Assert
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "WARNING py.warnings: UserWarning: Optimal order is the smallest alpha. Please expand. ("
    )
    assert "test_cli_errors.py:" in lines[0]
    assert len(recwarn) == 0  # went to logging, not to warnings' own printing


def test_quiet_shows_no_warning(recwarn):
    # Arrange
    stream = io.StringIO()
    logsetup.configure_logging(0, quiet=True, stream=stream)
    # Act
    _warn_twice("Optimal order is the smallest alpha.")
    # Assert
    assert stream.getvalue() == ""
    assert len(recwarn) == 0  # went to logging (and no further), not printed by warnings


def _simulate(tmp_path, out, *options):
    """``fedai simulate`` with DP-SGD at target_epsilon=1e9 (Opacus warns about alphas)."""
    argv = [
        *("--config", str(REPO / "experiments" / "quickstart.toml")),
        *("--set", 'privacy.mode="local"', "--set", "privacy.target_epsilon=1e9"),
        *("--set", "experiment.rounds=1", "--set", "train.local_epochs=1"),
        *("--set", "experiment.num_clients=2", "--set", "experiment.clients_per_round=2"),
        *("--out", str(tmp_path / out), *options),
    ]
    code = "import sys; from fedai.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-c", code, "simulate", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_opacus_warnings_are_silent_under_quiet_and_one_line_otherwise(tmp_path):
    # Act
    quiet = _simulate(tmp_path, "quiet", "-q")
    normal = _simulate(tmp_path, "normal")
    # Assert
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert normal.returncode == 0, normal.stderr
    warning_lines = [line for line in normal.stderr.splitlines() if "Warning" in line]
    assert len(warning_lines) == 1, normal.stderr
    assert warning_lines[0].startswith(
        "WARNING py.warnings: UserWarning: Optimal order is the smallest alpha. "
    )
    assert "(opacus/accountants/analysis/rdp.py:" in warning_lines[0]

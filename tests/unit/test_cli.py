"""The ``fedai`` command: options, exit statuses, messages, logging, import cost."""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from importlib.metadata import version

import pytest

from fedai import cli, logsetup, progress
from fedai.crypto import cli as crypto_cli
from fedai.errors import EXIT_FAILED, EXIT_USAGE, ProtocolError

HEAVY = ("torch", "tenseal", "flwr", "grpc", "opacus", "ray", "matplotlib", "sklearn")
WATCHED_LOGGERS = (
    "",
    *logsetup.FEDAI_LOGGERS,
    logsetup.WARNINGS_LOGGER,
    *logsetup.THIRD_PARTY_LOGGERS,
)


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """main() configures logging, progress and two environment variables: undo it all."""
    for name in ("GRPC_VERBOSITY", "FLWR_LOG_LEVEL"):
        monkeypatch.setenv(name, "placeholder")  # recorded as absent or as it was ...
        monkeypatch.delenv(name)  # ... so whatever main() sets is undone
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate)
        for name in WATCHED_LOGGERS
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (level, handlers, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.propagate = propagate
        if name:  # pytest manages the root logger's own capture handlers
            lg.handlers[:] = handlers
        else:
            lg.handlers[:] = [h for h in lg.handlers if h.get_name() != "fedai-stderr"]
    progress.configure(enabled=False)


def _parse(argv):
    return cli.parse_args(cli.build_parser(), argv)


# ------------------------------------------------------------------ import cost
def test_building_the_parser_imports_no_heavy_library():
    # Arrange: a fresh interpreter, so nothing is imported already
    code = (
        "import json, sys\n"
        "import fedai.cli\n"
        "fedai.cli.build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    # Act
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    # Assert
    assert json.loads(done.stdout) == []


# ------------------------------------------------------------------ -v / -q
@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["simulate"], 0),
        (["-v", "simulate"], 1),
        (["simulate", "-v"], 1),
        (["simulate", "--verbose"], 1),
        (["-v", "simulate", "-vv"], 3),
        (["keys", "create", "--out", "k", "-v"], 1),
        (["privacy", "plan", "-v", "--population", "10", "--per-round", "2"], 1),
    ],
)
def test_verbose_counts_before_and_after_the_subcommand(argv, verbose):
    assert _parse(argv).verbose == verbose


@pytest.mark.parametrize(
    ("argv", "quiet"),
    [
        (["simulate"], False),
        (["-q", "simulate"], True),
        (["simulate", "-q"], True),
        (["simulate", "--quiet"], True),  # simulate's own option before, same meaning now
        (["--quiet", "serve", "--model", "m", "--port", "1"], True),
    ],
)
def test_quiet_before_or_after_the_subcommand(argv, quiet):
    assert _parse(argv).quiet is quiet


def test_verbose_and_quiet_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["-q", "simulate", "-v"])
    assert exc.value.code == EXIT_USAGE
    assert "-v/--verbose and -q/--quiet cannot be combined" in capsys.readouterr().err


# ------------------------------------------------------------------ --version, --help
@pytest.mark.parametrize("argv", [["--version"], ["-v", "--version"]])
def test_version_prints_the_installed_version(capsys, argv):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"fedai {version('fedai')}\n"


def test_version_is_also_an_option_of_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--version"])  # what `fedai --help` lists; main() answers before parsing
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fedai {version('fedai')}\n"


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out
    for code, _ in cli.EXIT_STATUSES:
        assert f"\n  {code:<4} " in out


# ------------------------------------------------------------------ errors
def test_user_error_exits_2_with_one_line_and_no_class_name(tmp_path, capsys):
    # Act
    code = cli.main(["keys", "show", str(tmp_path / "nokeys")])
    # Assert
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert (
        err
        == f"fedai keys show: error: {tmp_path / 'nokeys'}: expected a key directory; got nothing\n"
    )


def test_failure_exits_1_without_class_name_unless_verbose(monkeypatch, capsys):
    # Arrange: `keys show` fails the way a run does (not bad input)
    def fail(_args):
        raise ProtocolError("no client answered discovery")

    monkeypatch.setattr(crypto_cli, "_cmd_show", fail)
    # Act
    quiet_code = cli.main(["keys", "show", "d"])
    quiet_err = capsys.readouterr().err
    verbose_code = cli.main(["keys", "show", "d", "-v"])
    verbose_err = capsys.readouterr().err
    # Assert
    assert (quiet_code, verbose_code) == (EXIT_FAILED, EXIT_FAILED)
    assert quiet_err == "fedai keys show: error: no client answered discovery\n"
    assert verbose_err.endswith(
        "fedai keys show: error: no client answered discovery (ProtocolError)\n"
    )
    assert "Traceback" in verbose_err  # -v: the debug log carries the traceback


# ------------------------------------------------------------------ serve / infer
@pytest.mark.parametrize("port", ["-5", "70000", "http"])
def test_serve_port_outside_0_to_65535_is_refused(tmp_path, capsys, port):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--model", str(tmp_path), "--port", port])
    assert exc.value.code == EXIT_USAGE
    assert "argument --port: must be an integer in 0-65535" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("localhost", "must be HOST:PORT"),
        ("127.0.0.1:0", "port in 1-65535; got '0'"),
        ("127.0.0.1:70000", "port in 1-65535; got '70000'"),
        ("::1:50051", "must be HOST:PORT"),
    ],
)
def test_infer_server_must_be_host_and_port(tmp_path, capsys, server, message):
    argv = ["infer", "--server", server, "--input", "x.csv", "--out", str(tmp_path / "o.csv")]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_infer_server_accepts_ipv6_in_brackets():
    assert (
        cli.parse_args(
            cli.build_parser(), ["infer", "--server", "[::1]:50051", "--input", "x", "--out", "y"]
        ).server
        == "[::1]:50051"
    )


def test_infer_missing_token_file_is_found_before_any_connection(tmp_path, capsys):
    # Arrange: a readable input; the token file does not exist; nothing listens anywhere
    (tmp_path / "rows.csv").write_text("1,2\n", encoding="utf-8")
    argv = [
        "infer",
        "--server",
        "127.0.0.1:9",
        "--input",
        str(tmp_path / "rows.csv"),
        "--out",
        str(tmp_path / "out.csv"),
        "--token-file",
        str(tmp_path / "my.token"),
    ]
    # Act
    code = cli.main(argv)
    # Assert
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err == (
        f"fedai infer: error: --token-file {str(tmp_path / 'my.token')!r} must be a readable "
        "file; got no such file\n"
    )


def test_infer_bad_output_name_is_found_before_any_connection(tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("1,2\n", encoding="utf-8")
    argv = ["infer", "--server", "127.0.0.1:9", "--input", str(tmp_path / "rows.csv")]
    code = cli.main([*argv, "--out", str(tmp_path / "out.txt")])
    assert code == EXIT_USAGE
    assert "must end in .csv or .npz; got '.txt'" in capsys.readouterr().err


def test_serve_missing_tokens_file_is_refused_before_loading_the_model(tmp_path, capsys):
    code = cli.main(
        ["serve", "--model", "nope", "--port", "0", "--tokens", str(tmp_path / "tokens")]
    )
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fedai serve: error: --tokens {str(tmp_path / 'tokens')!r} must be a readable file; "
        "got no such file\n"
    )


def test_serve_missing_model_names_the_path_typed(capsys):
    code = cli.main(["serve", "--model", "nope", "--port", "0"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("fedai serve: error: --model 'nope' must be a model directory")
    assert "'.'" not in err


def test_infer_against_a_closed_port_says_nothing_listens(tmp_path, capsys):
    # Arrange: a port that was just free (bound, then closed)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "rows.csv").write_text("1,2\n", encoding="utf-8")
    argv = ["infer", "--server", f"127.0.0.1:{port}", "--input", str(tmp_path / "rows.csv")]
    # Act
    code = cli.main([*argv, "--out", str(tmp_path / "out.csv"), "--timeout", "30"])
    # Assert
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"error: nothing listens at 127.0.0.1:{port} (connection refused)" in err
    assert "RemoteInferenceError" not in err


# ------------------------------------------------------------------ logging, progress
def test_default_logging_keeps_third_party_quiet_and_grpc_core_silent(tmp_path):
    # Act
    cli.main(["keys", "show", str(tmp_path)])
    # Assert
    assert logging.getLogger("fedai").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("matplotlib").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert os.environ["GRPC_VERBOSITY"] == "NONE"
    assert os.environ["FLWR_LOG_LEVEL"] == "WARNING"


def test_one_v_is_fedai_debug_only():
    # Act
    logsetup.configure_logging(1)
    # Assert
    assert logging.getLogger("fedai.privacy").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("server.rounds").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert not logging.getLogger("flwr").isEnabledFor(logging.INFO)


def test_fedai_lines_are_printed_once_in_the_log_format():
    # Arrange
    stream = io.StringIO()
    logsetup.configure_logging(1, stream=stream)
    # Act
    logging.getLogger("fedai.test").debug("sigma %.1f", 1.1)
    logging.getLogger("matplotlib.font_manager").debug("findfont: score")
    # Assert
    assert stream.getvalue() == "DEBUG fedai.test: sigma 1.1\n"


def test_app_logging_uses_fedai_handler_and_leaves_the_root_logger_alone(monkeypatch):
    # Arrange: a root logger without handlers, as in the ServerApp process
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    # Act
    logsetup.configure_app_logging()
    logsetup.configure_app_logging()  # idempotent
    # Assert: the root logger prints nothing (a NullHandler only keeps basicConfig out)
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger().handlers)
    assert len(logging.getLogger("server").handlers) == 1
    assert logging.getLogger("server.app").isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


def test_progress_lines_go_to_the_stream_only_when_enabled():
    # Arrange
    stream = io.StringIO()
    # Act
    progress.configure(enabled=False, prefix="fedai audit", stream=stream)
    progress.report("hidden")
    progress.configure(enabled=True, prefix="fedai audit", stream=stream)
    steps = progress.Steps(total=2, label="DP")
    steps.step("training the target model")
    # Assert
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("fedai audit: DP: [1/2] training the target model (")
    assert line.endswith(" s so far)")


def test_quiet_turns_progress_off(tmp_path):
    cli.main(["-q", "keys", "show", str(tmp_path)])
    assert not progress.is_enabled()
    cli.main(["keys", "show", str(tmp_path)])
    assert progress.is_enabled()


class _Signalling(io.StringIO):
    """A stream that tells a waiting test when something was written."""

    def __init__(self):
        super().__init__()
        self.written = threading.Event()

    def write(self, text):
        count = super().write(text)
        if text.endswith("\n"):  # print() writes the line, then its end
            self.written.set()
        return count


def test_when_slow_reports_only_work_still_running():
    # Arrange
    stream = _Signalling()
    progress.configure(enabled=True, prefix="fedai keys create", stream=stream)
    # Act: a block that ends long before its deadline, then one that outlasts it
    with progress.when_slow("quick", after=60.0):
        pass
    with progress.when_slow("creating keys...", after=0.01):
        reported = stream.written.wait(timeout=60)
    # Assert
    assert reported
    assert stream.getvalue() == "fedai keys create: creating keys...\n"

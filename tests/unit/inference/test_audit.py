# ruff: noqa: S106  (token ids are fixtures, not secrets)
"""The audit log file: JSON lines, mode 0600 whatever the umask, tightened on append."""

import json
import logging

import pytest

from fedai.errors import ConfigError
from fedai.inference.audit import AuditLog


def _mode(path):
    return path.stat().st_mode & 0o777


def test_audit_log_appends_json_lines(tmp_path):
    # Arrange
    log = AuditLog(tmp_path / "audit" / "log.jsonl")
    # Act
    log.record(method="Evaluate", token_id="alice", rows=3, outcome="ok")
    log.record(method="Evaluate", token_id="-", rows=0, outcome="rejected")
    # Assert
    lines = (tmp_path / "audit" / "log.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["outcome"] for e in entries] == ["ok", "rejected"]
    assert all("time" in e for e in entries)


@pytest.mark.usefixtures("umask_022")
def test_audit_log_created_0600_and_its_new_directory_0700_under_umask_022(tmp_path):
    # Arrange
    path = tmp_path / "logs" / "audit.jsonl"
    # Act
    AuditLog(path).record(method="Health")
    # Assert
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


@pytest.mark.usefixtures("umask_022")
def test_audit_log_existing_directory_keeps_its_mode(tmp_path):
    # Arrange
    (tmp_path / "shared").mkdir(mode=0o755)
    # Act
    AuditLog(tmp_path / "shared" / "audit.jsonl")
    # Assert
    assert _mode(tmp_path / "shared") == 0o755


@pytest.mark.usefixtures("umask_022")
def test_audit_log_with_a_looser_mode_is_tightened_and_kept(tmp_path, caplog):
    # Arrange
    path = tmp_path / "audit.jsonl"
    path.write_text('{"method": "old"}\n', encoding="utf-8")
    path.chmod(0o644)
    # Act
    with caplog.at_level(logging.WARNING, logger="fedai.inference.audit"):
        log = AuditLog(path)
    log.record(method="Health")
    # Assert
    assert _mode(path) == 0o600
    assert "was mode 0644; tightened to 0600" in caplog.text
    methods = [json.loads(line)["method"] for line in path.read_text().splitlines()]
    assert methods == ["old", "Health"]


def test_audit_log_loosened_while_serving_is_tightened_on_the_next_entry(tmp_path):
    # Arrange
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    path.chmod(0o664)
    # Act
    log.record(method="Health")
    # Assert
    assert _mode(path) == 0o600


def test_audit_log_in_an_unwritable_place_is_a_config_error(tmp_path):
    # Arrange
    (tmp_path / "file").write_text("", encoding="utf-8")
    # Act / Assert
    with pytest.raises(ConfigError, match=r"audit log .* must be writable with mode 0600"):
        AuditLog(tmp_path / "file" / "audit.jsonl")


def test_no_path_keeps_no_log(tmp_path):
    AuditLog(None).record(method="Health")
    assert list(tmp_path.iterdir()) == []

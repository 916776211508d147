# ruff: noqa: S106  (test tokens are fixtures, not secrets)
import json

import numpy as np
import pytest

from fedai.errors import ConfigError, DataError
from fedai.inference.cli import predictions, read_features, write_scores
from fedai.inference.service import AuditLog, ServiceLimits, TokenStore

ALICE = "alice-token-0123456789"
BOB = "bob-token-abcdefghijkl"


def test_tokens_file_identifies_token_ids(tmp_path):
    # Arrange
    path = tmp_path / "tokens"
    path.write_text(f"# comment\nalice {ALICE}\n\nbob {BOB}\n", encoding="utf-8")
    # Act
    store = TokenStore.from_file(path)
    # Assert
    assert store.identify(ALICE) == "alice"
    assert store.identify(BOB) == "bob"
    assert store.identify("alice-token-0123456788") is None
    assert store.identify("") is None


def test_tokens_file_problems_reported_together(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nalice {BOB}\nbroken\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"must be unique.*must be '<token-id> <token>'"):
        TokenStore.from_file(path)


def test_short_token_refused():
    with pytest.raises(ConfigError, match="token 'x' must be >= 16 characters; got 5"):
        TokenStore({"x": "short"})


def test_missing_tokens_file_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"tokens file .* must be readable"):
        TokenStore.from_file(tmp_path / "absent")


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


def test_limits_validated():
    with pytest.raises(ConfigError, match="max_rows must be >= 1; got 0"):
        ServiceLimits(max_rows=0)


def test_read_features_csv_with_header_and_npz(tmp_path):
    # Arrange
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,4.5\n", encoding="utf-8")
    np.savez(tmp_path / "x.npz", x=np.eye(2))
    # Act
    csv_x = read_features(tmp_path / "x.csv")
    npz_x = read_features(tmp_path / "x.npz")
    # Assert
    np.testing.assert_array_equal(csv_x, [[1, 2], [3, 4.5]])
    np.testing.assert_array_equal(npz_x, np.eye(2))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("x.csv", "1,2\n3,oops\n", "must hold only numbers"),
        ("x.csv", "1,2\nnan,1\n", "must hold finite numbers"),
        ("x.txt", "1,2\n", r"must end in .csv or .npz; got '.txt'"),
    ],
)
def test_read_features_bad_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_features(tmp_path / name)


def test_write_scores_csv_and_predictions(tmp_path):
    scores = np.array([[0.1, 2.0], [3.0, -1.0]])
    write_scores(tmp_path / "out.csv", scores)
    lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "prediction,score_0,score_1"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "0"]
    np.testing.assert_array_equal(predictions(np.array([[0.5], [-0.5]])), [1, 0])

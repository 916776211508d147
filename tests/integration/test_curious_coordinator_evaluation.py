"""The node decides, part 2: a curious coordinator cannot read a node's rows through evaluation.

The test plays the coordinator of the audit: it drives the real ClientApp with messages of
its own making (any config, any seed, any model, any round) against a node with its own
CSV file, and tries to read rows back from evaluation metrics with crafted logistic
regressions. The same attack is first shown to work against a node that chose weak
settings itself (a one-row clear test split), so the attack is real and the protection
comes from the node's defaults.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fedai.release
from clients.app import app as client_app
from clients.app import data_for
from fedai.aggregation import PlainCodec
from fedai.config import ExperimentConfig
from fedai.errors import ConfigError
from fedai.federation import keys
from fedai.federation.flower_internals import set_message_id, set_task_identity
from fedai.federation.records import payload_to_record
from fedai.policy import NodePolicy
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon, resolve_delta
from fedai.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.integration

ROWS, COLUMNS = 240, 32
FEATURES = COLUMNS + 1  # the file's columns besides the label, "age" included
_ids = itertools.count(1)


@pytest.fixture
def csv_file(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = np.round(rng.normal(3.0, 2.0, size=(ROWS, COLUMNS)), 3)
    y = (x[:, 0] + rng.normal(0, 1, ROWS) > 3).astype(int)
    age = rng.integers(18, 91, ROWS)
    path = tmp_path / "site.csv"
    header = ",".join([f"f{i}" for i in range(COLUMNS)] + ["age", "label"])
    lines = [header] + [
        ",".join([*(f"{v:.3f}" for v in row), str(a), str(label)])
        for row, a, label in zip(x, age, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, np.column_stack([x, age]), y


def node_context(path: Path, state: Path, **extra: str) -> Context:
    node: dict[str, Any] = {
        "data-path": str(path),
        "state-dir": str(state),
        "client-id": "site",
        "standardize": "none",
        **extra,
    }
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def coordinator_config(**data: Any) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {
            "experiment": {"num_clients": 1, "clients_per_round": 1, "seed": 12345},
            "model": {"name": "logreg"},
            "privacy": {"mode": "local", "noise_multiplier": 1.0},
            "data": {"dataset": "digits", **data},
        }
    )


def send(kind: str, cfg: ExperimentConfig, ctx: Context, **config: Any) -> Message:
    """One message as a coordinator makes it, answered by the real ClientApp."""
    set_task_identity(run_id=1, node_id=1)
    arrays = config.pop("arrays", ArrayRecord())
    record = ConfigRecord(
        {keys.KEY_EXPERIMENT: cfg.to_json(), keys.KEY_RUN_ID: "curious", **config}
    )
    msg = Message(
        RecordDict({keys.REC_ARRAYS: arrays, keys.REC_CONFIG: record}),
        dst_node_id=ctx.node_id,
        message_type=kind,
    )
    set_message_id(msg, f"m{next(_ids)}")
    return client_app(msg, ctx)


def crafted(weight: np.ndarray, bias: np.ndarray) -> ArrayRecord:
    """A logistic regression of the coordinator's choosing, as a plaintext aggregate."""
    return payload_to_record(PlainCodec(round_decimals=6).encode([weight, bias], 1.0))


def query_loss(
    cfg: ExperimentConfig, ctx: Context, round_: int, weight: np.ndarray, bias: np.ndarray
) -> float | None:
    reply = send(
        keys.MSG_EVALUATE,
        cfg,
        ctx,
        arrays=crafted(weight, bias),
        **{
            keys.KEY_SERVER_ROUND: round_,
            keys.KEY_TOTAL_WEIGHT: 1.0,
            keys.KEY_NUM_CLASSES: 2,
        },
    )
    status = reply.content.config_records[keys.REC_FEDAI][keys.KEY_STATUS]
    if status != keys.STATUS_OK:
        return None
    return float(reply.content.metric_records[keys.REC_METRICS][keys.KEY_LOSS])


def attack(cfg: ExperimentConfig, ctx: Context, scale: float = 0.5) -> tuple[np.ndarray, int]:
    """The audit's inversion: label from a bias query, each feature from two weight queries.

    For logits ``(0, t x_k)`` one row's loss is ``softplus(t x_k) - y t x_k``, so
    ``loss(+s) - loss(-s) = s x_k (1 - 2 y)``; with the bias-only model ``(0, c)`` the
    loss is ``softplus(c) - y c``. Returns the estimated row (NaN where refused) and the
    number of answered queries.
    """
    rounds = itertools.count(1)
    zero_w, c = np.zeros((2, FEATURES), np.float32), 1.0
    answered = 0
    bias_loss = query_loss(cfg, ctx, next(rounds), zero_w, np.array([0.0, c], np.float32))
    if bias_loss is None:
        return np.full(FEATURES, np.nan), 0
    answered += 1
    label = round((np.logaddexp(0.0, c) - bias_loss) / c)
    sign = 1 - 2 * label
    est = np.full(FEATURES, np.nan)
    for k in range(FEATURES):
        w = zero_w.copy()
        w[1, k] = scale
        up = query_loss(cfg, ctx, next(rounds), w, np.zeros(2, np.float32))
        down = query_loss(cfg, ctx, next(rounds), -w, np.zeros(2, np.float32))
        answered += (up is not None) + (down is not None)
        if up is None or down is None:
            continue
        est[k] = (up - down) / (scale * sign if sign else scale)
    return est, answered


def test_the_attack_reads_a_row_when_a_node_itself_chooses_a_one_row_clear_split(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # A node whose operator chose min-test-examples 1 and a tiny fraction, without DP.
    path, _x, _y = csv_file
    weak = node_context(
        path,
        tmp_path / "weak",
        **{"min-test-examples": "1", "test-fraction": "0.001", "max-evaluations-per-round": "1"},
    )
    cfg = coordinator_config()
    cfg = cfg.replace(privacy=type(cfg.privacy)())  # privacy.mode "none"

    est, answered = attack(cfg, weak)

    assert answered == 1 + 2 * FEATURES
    row = data_for(_any_message(cfg), weak, cfg).x_test[0]
    np.testing.assert_allclose(est, row, rtol=1e-3, atol=1e-3)  # every feature recovered


def _any_message(cfg: ExperimentConfig) -> Message:
    set_task_identity(run_id=1, node_id=1)
    record = ConfigRecord({keys.KEY_EXPERIMENT: cfg.to_json(), keys.KEY_SERVER_ROUND: 1})
    return Message(
        RecordDict({keys.REC_CONFIG: record}), dst_node_id=7, message_type=keys.MSG_EVALUATE
    )


def test_the_audits_attack_recovers_no_feature_of_a_node_that_requires_dp(
    csv_file: tuple[Path, np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the audit's node; the coordinator asks for a one-row split, no
    # standardisation, and a seed of its choosing. The noise is seeded here for a
    # repeatable test (production draws it from the OS).
    path, x, _y = csv_file
    monkeypatch.setattr(fedai.release.random, "SystemRandom", lambda: random.Random(3))
    state = tmp_path / "state"
    node = node_context(
        path,
        state,
        **{
            "require-privacy": "local",
            "min-noise-multiplier": "1",
            "max-budget-epsilon": "3",
        },
    )
    cfg = coordinator_config(test_fraction=1e-9, standardize="none", label_column="age")

    # Act
    est, answered = attack(cfg, node)

    # Assert: the split is the node's (>= 20 rows, not the coordinator's one row) ...
    test_rows = data_for(_any_message(cfg), node, cfg).x_test
    assert len(test_rows) >= 20
    # ... the budget stopped the queries, and what ran is charged, checked independently
    ledger = PrivacyLedger.load(state / "ledger-site.json")
    assert 0 < answered < 1 + 2 * FEATURES
    assert len(ledger) == answered
    z = fedai.release.DEFAULT_NOISE_MULTIPLIER
    delta = resolve_delta(None, num_samples=ROWS - len(test_rows))
    independent = dp_accounting_epsilon([DpSgdEvent(z, 1.0, 1)] * answered, delta=delta)
    assert ledger.epsilon() == pytest.approx(independent, rel=0.02)
    assert ledger.epsilon() <= 3.0
    # ... and no feature of any test row is recovered better than the pooled mean guesses it
    guess = x.mean(axis=0)
    for k in np.flatnonzero(np.isfinite(est)):
        attacker = np.abs(test_rows[:, k] - est[k])
        baseline = np.abs(test_rows[:, k] - guess[k])
        assert np.mean(attacker) >= np.mean(baseline) * 0.9, k
        assert not np.any(np.isclose(test_rows[:, k], est[k], rtol=1e-3, atol=1e-3)), k


def test_a_coordinators_label_column_test_fraction_and_seed_have_no_effect(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, _x, _y = csv_file
    plain = coordinator_config()
    plain = plain.replace(privacy=type(plain.privacy)())
    hostile = plain.replace(
        data=type(plain.data)(
            dataset="digits", test_fraction=1e-9, label_column="age", standardize="none"
        ),
        experiment=type(plain.experiment)(num_clients=1, clients_per_round=1, seed=99),
    )
    replies = []
    for cfg in (plain, hostile):
        ctx = node_context(path, tmp_path / "state")  # same node, fresh process state
        hello = send(keys.MSG_QUERY, cfg, ctx, **{keys.KEY_SERVER_ROUND: 0})
        w = np.full((2, FEATURES), 0.1, np.float32)
        loss = query_loss(cfg, ctx, 1, w, np.zeros(2, np.float32))
        replies.append((dict(hello.content.config_records[keys.REC_FEDAI]), loss))

    assert replies[0] == replies[1]
    announced = replies[0][0]
    assert announced[keys.KEY_NUM_CLASSES] == 2  # the node's label column, not "age"
    assert announced[keys.KEY_NUM_TEST] == round(ROWS * 0.2)


def test_one_model_per_round_and_the_same_answer_again(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, _x, _y = csv_file
    cfg = coordinator_config()
    cfg = cfg.replace(privacy=type(cfg.privacy)())
    ctx = node_context(path, tmp_path / "state")
    w = np.full((2, FEATURES), 0.1, np.float32)
    b = np.zeros(2, np.float32)

    first = query_loss(cfg, ctx, 1, w, b)
    again = query_loss(cfg, ctx, 1, w, b)
    other = query_loss(cfg, ctx, 1, -w, b)
    next_round = query_loss(cfg, ctx, 2, -w, b)

    assert first is not None
    assert again == first
    assert other is None  # a second model in round 1 is refused
    assert next_round is not None


def test_a_lifetime_cap_holds_across_rounds_run_ids_and_restarts(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # Round numbers and run ids are the coordinator's to write: neither buys more answers.
    path, _x, _y = csv_file
    cfg = coordinator_config()
    cfg = cfg.replace(privacy=type(cfg.privacy)())
    state = tmp_path / "state"
    b = np.zeros(2, np.float32)
    answers = []
    for r in range(1, 5):
        ctx = node_context(path, state, **{"max-evaluations": "3"})  # a fresh run each time
        answers.append(query_loss(cfg, ctx, r, np.full((2, FEATURES), 0.01 * r, np.float32), b))

    assert [a is not None for a in answers] == [True, True, True, False]
    assert '"answered": 3' in (state / "evaluations-site.json").read_text()


def test_statistics_are_shared_only_within_the_nodes_own_bounds(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # Narrow windows of the coordinator's choosing would make every request a counting
    # query; a node with its own data answers only within its own bounds, exactly.
    path, _x, _y = csv_file
    own = tmp_path / "bounds.json"
    own.write_text("[[-20, 100]]")
    base = coordinator_config()
    base = base.replace(privacy=type(base.privacy)())

    def statistics(bounds: str, **node: str) -> str:
        cfg = base.replace(
            data=type(base.data)(dataset="digits", statistics="federated", feature_bounds=bounds)
        )
        ctx = node_context(path, tmp_path / "state", standardize="auto", **node)
        reply = send(keys.MSG_STATISTICS, cfg, ctx, **{keys.KEY_SERVER_ROUND: 0})
        return str(reply.content.config_records[keys.REC_FEDAI][keys.KEY_STATUS])

    assert statistics("[[-20, 100]]") == keys.STATUS_DECLINED  # no bounds of its own
    assert statistics("[[2.999, 3.0]]", **{"feature-bounds": str(own)}) == keys.STATUS_DECLINED
    assert statistics("[[-20, 100]]", **{"feature-bounds": str(own)}) == keys.STATUS_OK


def test_a_dp_node_scales_by_public_bounds_so_a_training_row_never_moves_a_test_score(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, _x, _y = csv_file
    bounds = tmp_path / "bounds.json"
    bounds.write_text("[[-20, 100]]")
    rows = path.read_text().splitlines()
    cfg = coordinator_config()
    node = {
        "require-privacy": "local",
        "standardize": "auto",
        "split-seed": "s",
        "feature-bounds": str(bounds),
    }
    first = data_for(_any_message(cfg), node_context(path, tmp_path / "a", **node), cfg)
    train_row = next(  # a row of the training split, changed in a copy of the file
        i for i in range(1, len(rows)) if not np.isclose(first.x_test, _row(rows[i])).all(1).any()
    )
    other = tmp_path / "other.csv"
    changed = rows[train_row].split(",")
    changed[0] = "99.000"
    rows[train_row] = ",".join(changed)
    other.write_text("\n".join(rows) + "\n")

    second = data_for(_any_message(cfg), node_context(other, tmp_path / "b", **node), cfg)

    np.testing.assert_array_equal(first.x_test, second.x_test)
    assert first.x_train.min() >= 0.0  # scaled to [0, 1] by the public bounds
    assert first.x_train.max() <= 1.0
    with pytest.raises(ConfigError, match="standardize must be 'auto' or 'none'"):
        NodePolicy.from_node_config({**node, "standardize": "zscore"})


def _row(line: str) -> np.ndarray:
    """A CSV line's features scaled as the test above scales them ([-20, 100] -> [0, 1])."""
    values = np.array([float(v) for v in line.split(",")[:-1]])
    return (np.clip(values, -20, 100) + 20) / 120


def test_too_few_classes_fail_before_anything_is_charged(
    csv_file: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, _x, _y = csv_file
    state = tmp_path / "state"
    ctx = node_context(path, state, **{"require-privacy": "local"})
    cfg = coordinator_config()
    w = np.zeros((1, FEATURES), np.float32)

    reply = send(
        keys.MSG_EVALUATE,
        cfg,
        ctx,
        arrays=crafted(w, np.zeros(1, np.float32)),
        **{keys.KEY_SERVER_ROUND: 1, keys.KEY_TOTAL_WEIGHT: 1.0, keys.KEY_NUM_CLASSES: 1},
    )

    assert reply.content.config_records[keys.REC_FEDAI][keys.KEY_STATUS] == keys.STATUS_FAILED
    assert not (state / "ledger-site.json").exists()

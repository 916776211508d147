"""A real node's ledger is stated at the node's delta: the coordinator may narrow it, not widen.

Epsilon is only meaningful with its delta, and the budget cap, the per-round cap and
``budget_epsilon`` are all compared with epsilon at the ledger's delta. If the
coordinator's ``privacy.delta`` set it, a coordinator could send ``delta = 0.9``: the same
history then reads as a tiny (even negative) epsilon, and the node's
``max-budget-epsilon`` never stops it. On a node with its own data the ledger's delta is
at most the node's default ``min(1e-5, 1 / (10 n))``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from clients.privacy import LedgerStore
from fedai.config import ExperimentConfig
from fedai.errors import PrivacyBudgetExceededError
from fedai.policy import NodePolicy
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon, resolve_delta
from fedai.privacy.ledger import PrivacyLedger

N = 100
EVENT = DpSgdEvent(1.0, 0.05, 40)  # one round: 40 steps at q = 0.05, sigma = 1
CAP = 3.0


def _context(node_config: dict[str, bool | float | int | str]) -> Context:
    return Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config={})


def _cfg(delta: float | None) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {"privacy": {"mode": "local", "noise_multiplier": 1.0, "delta": delta}}
    )


def _real_node(tmp_path: Path) -> Context:
    return _context(
        {"data-path": str(tmp_path / "own.csv"), "state-dir": str(tmp_path), "client-id": "org"}
    )


@pytest.mark.filterwarnings("ignore:Optimal order")  # Opacus, at delta = 0.9 before the fix
def test_a_coordinator_delta_cannot_hide_a_real_nodes_spend_from_its_budget_cap(
    tmp_path: Path,
) -> None:
    # Arrange: 20 rounds already spent, epsilon ~10.6 at the node's delta, past its cap
    node_delta = resolve_delta(None, num_samples=N)
    spent = PrivacyLedger(client_id="org", delta=node_delta)
    for r in range(1, 21):
        spent.record(round=r, event=EVENT)
    store = LedgerStore(_real_node(tmp_path), "org")
    assert store.path is not None
    spent.save(store.path)
    true_epsilon = dp_accounting_epsilon(spent.history, delta=node_delta)
    assert true_epsilon > 3 * CAP
    budget = NodePolicy(own_data=True, state_dir=str(tmp_path), max_budget_epsilon=CAP).budget(None)

    # Act: the coordinator asks for delta = 0.9
    ledger = store.open(_cfg(0.9), num_samples=N, budget_epsilon=budget)

    # Assert: the ledger keeps the node's delta, so the cap refuses the next round
    assert ledger.delta == node_delta
    assert ledger.epsilon() == pytest.approx(true_epsilon, rel=0.02)
    with pytest.raises(PrivacyBudgetExceededError, match="past budget_epsilon 3"):
        ledger.check(EVENT)


def test_a_real_node_accepts_a_narrower_delta(tmp_path: Path) -> None:
    store = LedgerStore(_real_node(tmp_path), "org")
    ledger = store.open(_cfg(1e-9), num_samples=N, budget_epsilon=None)
    assert ledger.delta == 1e-9


def test_a_simulated_node_accounts_at_the_experimenters_delta(tmp_path: Path) -> None:
    # In simulation the coordinator is the experimenter: its delta applies as before.
    store = LedgerStore(_context({"partition-id": 0, "state-dir": str(tmp_path)}), "0")
    ledger = store.open(_cfg(1e-3), num_samples=N, budget_epsilon=None)
    assert ledger.delta == 1e-3

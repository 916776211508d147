"""A client agent process restarted between rounds continues its on-disk epsilon."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedai.privacy.accounting import dp_accounting_epsilon
from fedai.privacy.ledger import PrivacyLedger

AGENT = textwrap.dedent("""
    import sys, torch
    from torch.utils.data import DataLoader, TensorDataset
    from fedai.models import ModelSpec, build_model
    from fedai.privacy import PrivacyLedger, private_round
    torch.set_num_threads(1)
    path, rnd = sys.argv[1], int(sys.argv[2])
    ledger = PrivacyLedger.open(path, client_id="agent-1", delta=1e-5, budget_epsilon=50.0)
    g = torch.Generator().manual_seed(rnd)
    x = torch.randn(48, 8, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    model = build_model(ModelSpec(name="mlp", input_shape=(8,), num_classes=2, hidden=8),
                        seed=0)
    private_round(model, ledger=ledger, round=rnd,
                  loader=DataLoader(data, batch_size=16, generator=g),
                  optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1), epochs=2,
                  noise_multiplier=1.0, max_grad_norm=1.0,
                  noise_generator=torch.Generator().manual_seed(rnd))
    ledger.save(path)
    print(ledger.epsilon())
""")


@pytest.mark.integration
def test_restarted_agent_continues_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "node" / "ledger.json"
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    reported = []
    for rnd in (1, 2, 3):  # a fresh process per round: the agent restarts each time
        done = subprocess.run(
            [sys.executable, str(script), str(path), str(rnd)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        reported.append(float(done.stdout.strip().splitlines()[-1]))
    ledger = PrivacyLedger.load(path)
    assert [e.round for e in ledger.entries] == [1, 2, 3]
    assert reported == sorted(reported)
    assert reported[2] > reported[0] * 1.3  # cumulative, not reset per process
    for i, entry in enumerate(ledger.entries, start=1):
        independent = dp_accounting_epsilon(ledger.history[:i], delta=1e-5, accountant="rdp")
        assert entry.epsilon == pytest.approx(independent, rel=0.01)
        assert reported[i - 1] == pytest.approx(entry.epsilon)

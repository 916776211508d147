"""Membership-inference audit: metrics, attacks, and DP lowering the AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedai.errors import InvalidPrivacyParameterError
from fedai.models import ModelSpec
from fedai.privacy.audit import (
    attack_metrics,
    compare_dp_audit,
    lira_offline_attack,
    logit_confidence,
    loss_threshold_attack,
    per_example_loss,
)


def test_metrics_perfect_chance_and_inverted() -> None:
    perfect = attack_metrics("x", np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0]))
    assert perfect.auc == 1.0
    assert perfect.tpr_at_1pct_fpr == 1.0
    rng = np.random.default_rng(0)
    chance = attack_metrics("x", rng.normal(size=5000), rng.normal(size=5000))
    assert chance.auc == pytest.approx(0.5, abs=0.02)
    assert chance.tpr_at_1pct_fpr < 0.03
    inverted = attack_metrics("x", np.array([0.0]), np.array([1.0]))
    assert inverted.auc == 0.0


def test_metrics_reject_empty_or_nan() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="members"):
        attack_metrics("x", np.array([]), np.array([1.0]))
    with pytest.raises(InvalidPrivacyParameterError, match="finite"):
        attack_metrics("x", np.array([np.nan]), np.array([1.0]))


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0].long()]


def test_loss_and_confidence_against_torch() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    model = _Fixed(logits)
    x = np.array([[0.0], [1.0]], dtype=np.float32)
    y = np.array([0, 2])
    expected = nn.functional.cross_entropy(logits, torch.tensor(y), reduction="none").numpy()
    np.testing.assert_allclose(per_example_loss(model, x, y), expected, rtol=1e-6)
    p = torch.softmax(logits.double(), dim=1)[torch.arange(2), torch.tensor(y)].numpy()
    np.testing.assert_allclose(logit_confidence(model, x, y), np.log(p / (1 - p)), rtol=1e-6)


def test_attacks_separate_a_model_that_memorised() -> None:
    # members: confident and right; non-members: unsure. Both attacks must see it.
    logits = torch.tensor([[5.0, 0.0]] * 4 + [[0.2, 0.0]] * 4)
    model = _Fixed(logits)
    shadow = _Fixed(torch.tensor([[0.3, 0.0]] * 8))
    shadow2 = _Fixed(torch.tensor([[0.1, 0.0]] * 8))
    idx = np.arange(8, dtype=np.float32)[:, None]
    y = np.zeros(8, dtype=np.int64)
    members, nonmembers = (idx[:4], y[:4]), (idx[4:], y[4:])
    assert loss_threshold_attack(model, members=members, nonmembers=nonmembers).auc == 1.0
    lira = lira_offline_attack(model, [shadow, shadow2], members=members, nonmembers=nonmembers)
    assert lira.auc == 1.0
    with pytest.raises(InvalidPrivacyParameterError, match="shadow"):
        lira_offline_attack(model, [shadow], members=members, nonmembers=nonmembers)


@pytest.mark.slow
def test_dp_lowers_auc_on_an_overfit_config() -> None:
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=256)
    report = compare_dp_audit(
        x=x,
        y=y,
        spec=spec,
        num_members=150,
        num_shadow_models=4,
        epochs=100,
        batch_size=32,
        lr=0.05,
        noise_multiplier=4.0,
        seed=0,
    )
    plain, dp = report["non_private"], report["dp"]
    assert plain["train_accuracy"] == 1.0  # deliberately overfit
    assert plain["lira"]["auc"] > 0.6  # the non-private model leaks membership
    assert dp["lira"]["auc"] < plain["lira"]["auc"] - 0.05
    assert dp["loss"]["auc"] < plain["loss"]["auc"]
    assert dp["epsilon"] < 8

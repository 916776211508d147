"""Opacus DP-SGD wiring: validation before training, fresh engine per call, events."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedai.errors import InvalidPrivacyParameterError, ModelError, PrivacyBudgetExceededError
from fedai.models import ModelSpec, build_model
from fedai.privacy.accounting import calibrate_noise_multiplier, dp_accounting_epsilon
from fedai.privacy.dpsgd import (
    planned_event,
    private_round,
    secure_rng_available,
    train_dp_sgd,
)
from fedai.privacy.ledger import PrivacyLedger

SPEC = ModelSpec(name="mlp", input_shape=(8,), num_classes=3, hidden=16)


def _data(n: int = 60, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def _loader(n: int = 60, batch: int = 16, seed: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(_data(n), batch_size=batch, generator=torch.Generator().manual_seed(seed))


class _Factory:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        self.calls += 1
        return torch.optim.SGD(params, lr=0.1)


def _train(model: nn.Module, **kw: object) -> object:
    args: dict[str, object] = {
        "loader": _loader(),
        "optimizer_factory": _Factory(),
        "epochs": 1,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "noise_generator": torch.Generator().manual_seed(1),
        "sampling_generator": torch.Generator().manual_seed(5),
    }
    args.update(kw)
    return train_dp_sgd(model, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["hooks", "ew", "ghost"])
def test_event_matches_plan_and_model_is_untouched(mode: str) -> None:
    model = build_model(SPEC, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _train(model, epochs=2, grad_sample_mode=mode)
    assert result.event == planned_event(
        noise_multiplier=1.0, num_samples=60, batch_size=16, epochs=2
    )
    assert result.event.steps == 8
    assert list(result.state_dict) == list(before)  # no "_module." prefixes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(result.state_dict[k], before[k]) for k in before)
    # the caller's model carries no Opacus hooks or grad_sample attributes
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    fresh = build_model(SPEC)
    fresh.load_state_dict(result.state_dict)


def test_repeat_calls_on_one_model_are_independent_and_seeded() -> None:
    model = build_model(SPEC, seed=0)
    first = _train(model)
    second = _train(model)
    for k in first.state_dict:
        torch.testing.assert_close(first.state_dict[k], second.state_dict[k])
    third = _train(model, noise_generator=torch.Generator().manual_seed(2))
    assert any(not torch.equal(first.state_dict[k], third.state_dict[k]) for k in first.state_dict)


def test_clipping_bounds_each_step() -> None:
    # plain SGD, lr 1: each step moves weights by (sum of clipped grads + noise) / E[B]
    model = build_model(SPEC, seed=0)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    result = _train(
        model,
        max_grad_norm=1e-3,
        noise_multiplier=1e-3,
        optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=1.0),
    )
    end = torch.cat([result.state_dict[k].flatten() for k, _ in model.named_parameters()])
    moved = float(torch.linalg.vector_norm(end - start))
    # 4 steps, at most 60 examples per batch over an expected batch of 15 -> <= 4*4*1e-3 (+noise)
    assert moved < 4 * 4 * 1e-3 * 1.5


def test_tiny_client_with_empty_poisson_batches() -> None:
    result = _train(build_model(SPEC, seed=0), loader=_loader(n=5, batch=1), epochs=3)
    assert result.event.steps == 15
    assert result.event.sample_rate == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"epochs": 0}, "epochs"),
        ({"grad_sample_mode": "functorch"}, "grad_sample_mode"),
    ],
)
def test_bad_parameters_raise_before_training(kw: dict[str, object], match: str) -> None:
    factory = _Factory()
    with pytest.raises(InvalidPrivacyParameterError, match=match):
        _train(build_model(SPEC, seed=0), optimizer_factory=factory, **kw)
    assert factory.calls == 0


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match=r"noise_multiplier.*max_grad_norm"):
        _train(build_model(SPEC, seed=0), noise_multiplier=-1.0, max_grad_norm=-1.0)


@pytest.mark.skipif(secure_rng_available(), reason="torchcsprng is installed here")
def test_secure_mode_without_csprng_is_a_clear_error() -> None:
    factory = _Factory()
    with pytest.raises(InvalidPrivacyParameterError, match="torchcsprng"):
        _train(build_model(SPEC, seed=0), secure_mode=True, optimizer_factory=factory)
    assert factory.calls == 0


def test_batchnorm_model_is_rejected_before_training() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    factory = _Factory()
    with pytest.raises(ModelError, match="BatchNorm"):
        _train(model, optimizer_factory=factory)
    assert factory.calls == 0


def test_bad_target_epsilon_or_delta_before_training() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="target_epsilon"):
        calibrate_noise_multiplier(target_epsilon=0.0, delta=1e-5, sample_rate=0.25, steps=4)
    with pytest.raises(InvalidPrivacyParameterError, match="delta"):
        PrivacyLedger(client_id="c", delta=1.5)


def test_private_rounds_ledger_matches_dp_accounting() -> None:
    ledger = PrivacyLedger(client_id="c0", delta=1e-5, accountant="rdp")
    model = build_model(SPEC, seed=0)
    for rnd in (1, 2, 3):
        result, entry = private_round(
            model,
            ledger=ledger,
            round=rnd,
            loader=_loader(seed=rnd),
            optimizer_factory=_Factory(),
            epochs=1,
            noise_multiplier=1.2,
            max_grad_norm=1.0,
            noise_generator=torch.Generator().manual_seed(rnd),
        )
        model.load_state_dict(result.state_dict)
        independent = dp_accounting_epsilon(ledger.history, delta=1e-5, accountant="rdp")
        assert entry.epsilon == pytest.approx(independent, rel=0.01)
    assert [e.round for e in ledger.entries] == [1, 2, 3]


def test_exhausted_budget_refuses_before_training() -> None:
    ledger = PrivacyLedger(client_id="c0", delta=1e-5, budget_epsilon=0.5)
    factory = _Factory()
    with pytest.raises(PrivacyBudgetExceededError, match="budget_epsilon"):
        private_round(
            build_model(SPEC, seed=0),
            ledger=ledger,
            round=1,
            loader=_loader(),
            optimizer_factory=factory,
            epochs=1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
    assert factory.calls == 0
    assert ledger.exhausted
    assert len(ledger) == 0


@pytest.mark.parametrize("mode", ["ew", "ghost"])
def test_modes_handle_empty_poisson_batches(mode: str) -> None:
    result = _train(
        build_model(SPEC, seed=0), loader=_loader(n=5, batch=1), epochs=3, grad_sample_mode=mode
    )
    assert result.event.steps == 15

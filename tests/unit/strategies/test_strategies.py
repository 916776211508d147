"""Strategies: registry, config, server-optimiser math and FedProx's proximal step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedai.config import ExperimentConfig
from fedai.errors import ConfigError
from fedai.privacy.dpsgd import train_dp_sgd
from fedai.strategies import REGISTRY, build_optimizer, fingerprint, hyperparameters_of
from fedai.strategies.fedprox import add_proximal_term


def test_every_registered_strategy_builds_from_config() -> None:
    for name in REGISTRY:
        cfg = ExperimentConfig.from_mapping({"strategy": {"name": name}})
        assert build_optimizer(name, hyperparameters_of(cfg.strategy)).name == name


def test_strategy_config_lists_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_mapping(
            {
                "strategy": {
                    "name": "fedavg",
                    "proximal_mu": 1.0,
                    "server_lr": 0.5,
                    "tau": 0.0,
                    "straggler_fraction": 1.5,
                }
            }
        )
    text = str(err.value)
    for needle in (
        "proximal_mu applies only",
        "server_lr applies only",
        "strategy.tau",
        "straggler",
    ):
        assert needle in text
    with pytest.raises(ConfigError, match=r"strategy\.name must be one of"):
        ExperimentConfig.from_mapping({"strategy": {"name": "fedsgd"}})
    with pytest.raises(ConfigError, match=r"unknown key strategy\.mu"):
        ExperimentConfig.from_mapping({"strategy": {"mu": 1}})


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_step_is_deterministic_on_grid_and_does_not_mutate(name: str) -> None:
    rng = np.random.default_rng(0)
    opt = build_optimizer(name, hyperparameters_of(ExperimentConfig().strategy))
    x = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    avg = [a + np.float32(0.01) for a in x]
    state = opt.initial_state([a.shape for a in x])
    before = [a.copy() for a in x]
    one = opt.step(model=x, average=avg, state=state, round_decimals=6)
    two = opt.step(model=x, average=avg, state=state, round_decimals=6)
    assert fingerprint(*one) == fingerprint(*two)
    assert all(np.array_equal(a, b) for a, b in zip(x, before, strict=True))
    for a in [*one[0], *one[1]]:
        assert np.array_equal(np.rint(a / 1e-6) * 1e-6, a)
    moved = [n - o for n, o in zip(one[0], x, strict=True)]
    assert all(np.all(m > 0) for m in moved)  # steps towards the average


def test_fedavgm_with_lr_1_and_no_momentum_is_fedavg() -> None:
    cfg = ExperimentConfig.from_mapping(
        {"strategy": {"name": "fedavgm", "server_lr": 1.0, "server_momentum": 0.0}}
    )
    opt = build_optimizer("fedavgm", hyperparameters_of(cfg.strategy))
    x = [np.array([0.5, -0.25])]
    avg = [np.array([0.75, 0.125])]
    new, _ = opt.step(model=x, average=avg, state=opt.initial_state([(2,)]), round_decimals=6)
    np.testing.assert_allclose(new[0], avg[0], atol=1e-12)


# ---------------------------------------------------------------------- FedProx
def _data() -> DataLoader[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 2))


def _distance(mu: float, mode: str) -> float:
    model = _model()
    w0 = [p.detach().clone() for p in model.parameters()]

    def factory(ps):  # type: ignore[no-untyped-def]
        return add_proximal_term(torch.optim.SGD(ps, lr=0.5), mu=mu)

    if mode == "plain":
        opt = factory(model.parameters())
        for _ in range(5):
            for xb, yb in _data():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
        params = list(model.parameters())
    else:
        res = train_dp_sgd(
            model,
            loader=_data(),
            optimizer_factory=factory,
            epochs=5,
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            grad_sample_mode=mode,
            noise_generator=torch.Generator().manual_seed(1),
            sampling_generator=torch.Generator().manual_seed(2),
        )
        params = [res.state_dict["0.weight"], res.state_dict["0.bias"]]
    return float(sum(((p.detach() - w) ** 2).sum() for p, w in zip(params, w0, strict=True)))


@pytest.mark.parametrize("mode", ["plain", "hooks", "ew", "fused"])
def test_the_proximal_step_holds_in_every_training_mode(mode: str) -> None:
    # Same seeds, same batches, same noise: only mu differs
    free, prox = _distance(0.0, mode), _distance(1.0, mode)
    assert prox < 0.8 * free  # pulled towards the global model


def test_dp_partial_work_records_the_steps_that_ran() -> None:
    full = train_dp_sgd(
        _model(),
        loader=_data(),
        optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1),
        epochs=2,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode="fused",
    )
    for mode in ("hooks", "fused"):
        part = train_dp_sgd(
            _model(),
            loader=_data(),
            optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1),
            epochs=2,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode=mode,
            max_steps=3,
        )
        assert part.event.steps == 3 < full.event.steps == 8

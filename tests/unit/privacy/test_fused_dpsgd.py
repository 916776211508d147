"""Fused DP-SGD: brute-force clipping check, equivalence with Opacus hooks, model checks."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedai.config import ExperimentConfig
from fedai.errors import ConfigError, InvalidPrivacyParameterError, ModelError
from fedai.models import ModelSpec, build_model
from fedai.privacy.dpsgd import PrivateTrainingResult, planned_event, train_dp_sgd
from fedai.privacy.fused import CLIP_EPSILON, FusedClipper, validate_fused_model

SPEC = ModelSpec(name="mlp", input_shape=(8,), num_classes=3, hidden=16)


def _data(n: int = 60, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def _loader(n: int = 60, batch: int = 16, seed: int = 5) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(_data(n), batch_size=batch, generator=torch.Generator().manual_seed(seed))


def _momentum_sgd(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def _train(model: nn.Module, mode: str, **kw: object) -> PrivateTrainingResult:
    args: dict[str, object] = {
        "loader": _loader(),
        "optimizer_factory": _momentum_sgd,
        "epochs": 2,
        "noise_multiplier": 1.0,
        "max_grad_norm": 0.5,
        "grad_sample_mode": mode,
        "noise_generator": torch.Generator().manual_seed(7),
        "sampling_generator": torch.Generator().manual_seed(5),
    }
    args.update(kw)
    return train_dp_sgd(model, **args)  # type: ignore[arg-type]


def _brute_force_clipped_sum(
    model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-example gradients one example at a time, clipped with Opacus' formula, summed."""
    loss_fn = nn.CrossEntropyLoss()
    sums = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(y)):
        grads = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + CLIP_EPSILON))
        for s, g in zip(sums, grads, strict=True):
            s += factor * g
        norms.append(norm)
    return sums, torch.stack(norms)


def _sequential_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 5),
        nn.Tanh(),
        nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Dropout(0.0)),
        nn.Linear(4, 3),
    ).double()


@pytest.mark.parametrize("clip", ["small", "median", "large"])
@pytest.mark.parametrize("subset", ["all", "weights_only"])
def test_clipped_sum_matches_brute_force_per_example_clipping(clip: str, subset: str) -> None:
    # Arrange
    model = _sequential_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    params = [p for n, p in model.named_parameters() if subset == "all" or n.endswith("weight")]
    _, norms = _brute_force_clipped_sum(model, params, x, y, 1.0)
    c = {"small": 1e-3, "median": float(norms.median()), "large": 1e3}[clip]
    expected, _ = _brute_force_clipped_sum(model, params, x, y, c)
    if clip == "median":  # some examples are clipped and some are not
        assert (norms < c).any()
        assert (norms > c).any()

    # Act
    with FusedClipper(model, params, max_grad_norm=c) as clipper:
        loss, got = clipper.clipped_sum(x, y, nn.CrossEntropyLoss())

    # Assert
    torch.testing.assert_close(loss, nn.CrossEntropyLoss()(model(x), y))
    assert [t.shape for t in got] == [p.shape for p in params]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_fused_matches_opacus_hooks_with_the_same_seeds(name: str) -> None:
    # Arrange: same model, data, Poisson-loader seed and noise seed; momentum + weight decay
    spec = ModelSpec(name=name, input_shape=(8,), num_classes=3, hidden=16)

    # Act
    hooks = _train(build_model(spec, seed=0), "hooks")
    fused = _train(build_model(spec, seed=0), "fused")

    # Assert: the same mechanism, event for event; weights equal up to float rounding
    assert fused.event == hooks.event
    assert fused.event == planned_event(
        noise_multiplier=1.0, num_samples=60, batch_size=16, epochs=2
    )
    assert list(fused.state_dict) == list(hooks.state_dict)
    for key, value in hooks.state_dict.items():
        torch.testing.assert_close(fused.state_dict[key], value, rtol=0, atol=1e-5)
    assert fused.mean_loss == pytest.approx(hooks.mean_loss, abs=1e-5)


def test_empty_poisson_batches_take_noise_only_steps_like_opacus() -> None:
    # Arrange: 10 examples, batch 1 -> q = 0.1, 10 steps/epoch; check some batches are empty
    seed = 11
    sizes = [
        len(yb)
        for _ in range(3)
        for _, yb in DPDataLoader.from_data_loader(_loader(n=10, batch=1, seed=seed))
    ]
    assert 0 in sizes
    kw = {"loader": _loader(n=10, batch=1, seed=seed), "epochs": 3}

    # Act
    hooks = _train(build_model(SPEC, seed=0), "hooks", **kw)
    kw["loader"] = _loader(n=10, batch=1, seed=seed)
    fused = _train(build_model(SPEC, seed=0), "fused", **kw)

    # Assert
    assert fused.event == hooks.event
    assert fused.event.steps == 30
    for key, value in hooks.state_dict.items():
        torch.testing.assert_close(fused.state_dict[key], value, rtol=0, atol=1e-5)


def test_fused_keeps_the_callers_model_untouched_and_returns_its_keys() -> None:
    model = build_model(SPEC, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = _train(model, "fused")

    assert list(result.state_dict) == list(before)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(result.state_dict[k], before[k]) for k in before)
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


class _Factory:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        self.calls += 1
        return torch.optim.SGD(params, lr=0.1)


class _FreeParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (build_model(ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=3)), "Conv2d"),
        (nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4), nn.Linear(4, 3)), "LayerNorm"),
        (_FreeParameter(), "owns parameters scale"),
        (nn.Sequential(nn.Softmax(dim=0)), "Softmax"),
        (nn.Sequential(nn.Linear(8, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)), "inplace=True"),
    ],
)
def test_unsupported_models_fail_before_training(model: nn.Module, match: str) -> None:
    factory = _Factory()
    with pytest.raises(ModelError, match=match) as err:
        _train(model, "fused", optimizer_factory=factory, loader=_loader_for(model))
    assert "hooks" in str(err.value)
    assert factory.calls == 0


def _loader_for(model: nn.Module) -> DataLoader[tuple[torch.Tensor, ...]]:
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        x = torch.randn(20, 1, 8, 8)
        return DataLoader(TensorDataset(x, torch.zeros(20, dtype=torch.int64)), batch_size=4)
    return _loader()


def test_cnn_error_names_every_unsupported_module() -> None:
    cnn = build_model(ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=3))
    with pytest.raises(ModelError, match="GroupNorm") as err:
        validate_fused_model(cnn)
    assert "MaxPool2d" in str(err.value)
    assert "features.0" in str(err.value)


class _TwiceLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(torch.relu(self.shared(x))))  # type: ignore[no-any-return]


def test_a_linear_layer_called_twice_fails_in_the_first_forward() -> None:
    model = _TwiceLinear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="shared ran twice"):
        _train(model, "fused")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


class _InPlaceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x).relu_())  # type: ignore[no-any-return]


def test_an_in_place_op_on_a_linear_output_fails_instead_of_giving_wrong_gradients() -> None:
    with pytest.raises(ModelError, match="hidden was modified in place"):
        _train(_InPlaceRelu(), "fused")


def test_unknown_mode_message_lists_fused_and_config_accepts_it() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="hooks, ew, ghost, fused"):
        _train(build_model(SPEC, seed=0), "functorch")
    cfg = ExperimentConfig.from_mapping(
        {"privacy": {"mode": "local", "noise_multiplier": 1.0, "grad_sample_mode": "fused"}}
    )
    assert cfg.privacy.grad_sample_mode == "fused"
    assert ExperimentConfig.from_mapping({}).privacy.grad_sample_mode == "hooks"


def test_config_refuses_fused_with_a_model_it_cannot_train() -> None:
    with pytest.raises(
        ConfigError, match=r"'fused' needs a Linear-only model .* got model.name 'cnn'"
    ):
        ExperimentConfig.from_mapping(
            {
                "model": {"name": "cnn"},
                "privacy": {"mode": "local", "noise_multiplier": 1.0, "grad_sample_mode": "fused"},
            }
        )
    # Without DP the mode is unused, so any model is fine.
    cfg = ExperimentConfig.from_mapping(
        {"model": {"name": "cnn"}, "privacy": {"grad_sample_mode": "fused"}}
    )
    assert cfg.model.name == "cnn"


class _TiedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))  # type: ignore[no-any-return]


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, 3 * self.weight, self.bias)


def test_tied_weights_flatten_over_the_batch_and_linear_subclasses_are_refused() -> None:
    with pytest.raises(ModelError, match="a, b share a parameter"):
        validate_fused_model(_TiedWeights())
    with pytest.raises(ModelError, match="start_dim 0, which merges examples"):
        validate_fused_model(nn.Sequential(nn.Flatten(0, 1), nn.Linear(8, 3)))
    with pytest.raises(ModelError, match=r"module <root> \(_ScaledLinear\) owns parameters"):
        validate_fused_model(_ScaledLinear(8, 3))


class _RowsPerExample(nn.Module):
    """Turns each example into 4 rows before a Linear: 4 clipped rows per example."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(x.reshape(-1, 2)).reshape(len(x), -1)[:, :3]  # type: ignore[no-any-return]


class _Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(len(x), 2, 4)).sum(dim=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_RowsPerExample(), r"rows got \d+ input rows and gave \d+ output rows for a batch of"),
        (_Sequence(), "head got a 3-D input"),
    ],
)
def test_a_linear_must_see_exactly_one_row_per_example(model: nn.Module, match: str) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match=match):
        _train(model, "fused")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_bias_only_training_clips_like_brute_force() -> None:
    model = _sequential_model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.arange(12) % 3
    expected, _ = _brute_force_clipped_sum(model, params, x, y, clip=0.05)

    with FusedClipper(model, params, max_grad_norm=0.05) as clipper:
        _, sums = clipper.clipped_sum(x, y, nn.CrossEntropyLoss())

    for got, want in zip(sums, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_a_batch_size_whose_expected_batch_rounds_to_zero_is_refused(mode: str) -> None:
    loader = DataLoader(_data(49), batch_size=1)  # int(49 * (1/49)) == 0 in floating point
    assert int(49 * (1 / len(loader))) == 0
    with pytest.raises(InvalidPrivacyParameterError, match=r"int\(49 \* 1/49\) = 0"):
        _train(build_model(SPEC, seed=0), mode, loader=loader)

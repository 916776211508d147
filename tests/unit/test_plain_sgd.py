"""PlainSgd and ShuffledBatches give exactly torch.optim.SGD's weights and DataLoader's batches.

fedai's non-private SGD avoids ``torch.optim`` (whose first use imports ``torch._dynamo``,
1.1-1.7 s); that is only acceptable if the weights are bit-identical. The reference is
what fedai ran before: ``torch.optim.SGD`` wrapped by FedProx's step pre-hook
(:func:`fedai.strategies.fedprox.add_proximal_term`), on the same shuffled batches.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedai.config import TrainSection
from fedai.errors import ConfigError, DataError, InvalidPrivacyParameterError
from fedai.models import ModelSpec, build_model, get_weights
from fedai.strategies.fedprox import add_proximal_term
from fedai.training import (
    PlainSgd,
    ShuffledBatches,
    make_loader,
    make_optimizer,
    partial_steps,
    train_epochs,
    train_local,
)


def _data(shape: tuple[int, ...], n: int = 70, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def _reference(
    spec: ModelSpec,
    x: np.ndarray,
    y: np.ndarray,
    train: TrainSection,
    *,
    mu: float,
    work: float = 1.0,
) -> tuple[list[np.ndarray], float]:
    """fedai's non-private training as it was: torch.optim.SGD + FedProx pre-hook."""
    model = build_model(spec, seed=3)
    gen = torch.Generator().manual_seed(11)
    loader = make_loader(x, y, batch_size=train.batch_size, shuffle=True, generator=gen)
    optimizer = add_proximal_term(make_optimizer(model, train), mu=mu)
    max_steps = None if work == 1 else partial_steps(len(loader) * train.local_epochs, work)
    loss, _ = train_epochs(model, loader, optimizer, epochs=train.local_epochs, max_steps=max_steps)
    return get_weights(model), loss


OPTIONS = [
    # (momentum, weight_decay, lr, mu): lr includes lr_decay's values, e.g. 0.05 * 0.9 ** 6
    (0.0, 0.0, 0.05, 0.0),
    (0.9, 0.0, 0.05, 0.0),
    (0.0, 1e-3, 0.1, 0.0),
    (0.9, 5e-4, 0.05 * 0.9**6, 0.0),
    (0.0, 0.0, 0.05, 1.0),
    (0.9, 0.0, 0.05, 0.01),
    (0.5, 1e-2, 0.2 * 0.95**3, 0.3),
]


@pytest.mark.parametrize("model_name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize(("momentum", "weight_decay", "lr", "mu"), OPTIONS)
def test_train_local_equals_torch_sgd_bitwise(model_name, momentum, weight_decay, lr, mu):
    # Arrange: several epochs of small batches, so momentum and proximal terms build up
    shape = (1, 8, 8) if model_name == "cnn" else (12,)
    spec = ModelSpec(name=model_name, input_shape=shape, num_classes=4, hidden=16)
    x, y = _data(shape)
    train = TrainSection(
        local_epochs=3, batch_size=8, lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    want, want_loss = _reference(spec, x, y, train, mu=mu)
    model = build_model(spec, seed=3)
    # Act
    loss, steps = train_local(model, x, y, train, seed=11, proximal_mu=mu)
    # Assert: every weight equal to the bit, the loss too, and training did move them
    got = get_weights(model)
    assert steps == 3 * math.ceil(70 / 8)
    assert loss == want_loss
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    start = get_weights(build_model(spec, seed=3))
    assert any(not np.array_equal(a, b) for a, b in zip(got, start, strict=True))


@pytest.mark.parametrize("work", [0.1, 0.45])
def test_straggler_partial_work_equals_torch_sgd_bitwise(work):
    spec = ModelSpec(name="mlp", input_shape=(12,), num_classes=4, hidden=16)
    x, y = _data((12,))
    train = TrainSection(local_epochs=2, batch_size=8, lr=0.05, momentum=0.9)
    want, _ = _reference(spec, x, y, train, mu=1.0, work=work)
    model = build_model(spec, seed=3)
    _, steps = train_local(model, x, y, train, seed=11, proximal_mu=1.0, work_fraction=work)
    assert steps == partial_steps(2 * math.ceil(70 / 8), work)
    assert [a.tobytes() for a in get_weights(model)] == [b.tobytes() for b in want]


def test_sgd_training_does_not_import_torch_dynamo():
    # The point of PlainSgd, checked in a fresh interpreter: a plain SGD client round
    # (FedProx on) never imports torch._dynamo; an Adam round, through torch.optim, does.
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from fedai.config import TrainSection\n"
        "from fedai.models import ModelSpec, build_model\n"
        "from fedai.training import train_local\n"
        "x = np.ones((20, 4), np.float32); y = (np.arange(20) % 2).astype(np.int64)\n"
        "spec = ModelSpec(name='logreg', input_shape=(4,), num_classes=2)\n"
        "for opt in ('sgd', 'adam'):\n"
        "    train = TrainSection(local_epochs=2, batch_size=4, optimizer=opt)\n"
        "    train_local(build_model(spec, seed=0), x, y, train, seed=1, proximal_mu=0.1)\n"
        "    print(opt, 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == ["sgd", "False", "adam", "True"]


def test_zero_grad_without_set_to_none_zeroes_like_torch():
    model = build_model(ModelSpec(name="logreg", input_shape=(3,), num_classes=2), seed=0)
    opt = PlainSgd(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", -0.1), ("lr", float("nan")), ("momentum", -0.5), ("weight_decay", -1.0)],
)
def test_negative_hyperparameters_are_refused(field, value):
    kwargs = {"lr": 0.1, field: value}
    with pytest.raises(ConfigError, match=f"{field} must be >= 0; got {value}"):
        PlainSgd([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_bad_proximal_mu_is_refused_as_before(mu):
    with pytest.raises(InvalidPrivacyParameterError, match="proximal mu"):
        PlainSgd([torch.nn.Parameter(torch.zeros(2))], lr=0.1, proximal_mu=mu)


@pytest.mark.parametrize(("n", "batch_size"), [(70, 8), (64, 16), (5, 16), (1, 1), (33, 32)])
def test_shuffled_batches_equal_the_dataloaders_every_epoch(n, batch_size):
    # Arrange: the same data and two generators with the same seed
    x, y = _data((6,), n=n)
    ours = ShuffledBatches(x, y, batch_size=batch_size, generator=torch.Generator().manual_seed(9))
    theirs_gen = torch.Generator().manual_seed(9)
    theirs = make_loader(x, y, batch_size=batch_size, shuffle=True, generator=theirs_gen)
    assert len(ours) == len(theirs)
    for _epoch in range(4):
        # Act
        got, want = list(ours), list(theirs)
        # Assert: same batches (values, dtypes, shapes) and the generator in the same state
        assert len(got) == len(want)
        for (xa, ya), (xb, yb) in zip(got, want, strict=True):
            assert xa.dtype == xb.dtype
            assert ya.dtype == yb.dtype
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)
        assert torch.equal(ours._generator.get_state(), theirs_gen.get_state())


def test_shuffled_batches_refuse_an_empty_split():
    with pytest.raises(DataError, match="at least one sample; got 0"):
        ShuffledBatches(
            np.zeros((0, 3), np.float32),
            np.zeros(0, np.int64),
            batch_size=4,
            generator=torch.Generator(),
        )


def test_adam_keeps_torch_optim_and_the_same_weights():
    # Adam still runs torch.optim.Adam; only its batches now come from ShuffledBatches.
    spec = ModelSpec(name="mlp", input_shape=(12,), num_classes=4, hidden=16)
    x, y = _data((12,))
    train = TrainSection(local_epochs=3, batch_size=8, lr=0.01, optimizer="adam")
    want, want_loss = _reference(spec, x, y, train, mu=0.5)
    model = build_model(spec, seed=3)
    loss, _ = train_local(model, x, y, train, seed=11, proximal_mu=0.5)
    assert loss == want_loss
    assert [a.tobytes() for a in get_weights(model)] == [b.tobytes() for b in want]

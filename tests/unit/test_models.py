import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedai.errors import ModelError
from fedai.models import (
    MODEL_NAMES,
    ModelSpec,
    build_model,
    get_weights,
    load_model,
    save_model,
    set_weights,
)

SPECS = {
    "logreg": ModelSpec(name="logreg", input_shape=(1, 8, 8), num_classes=10),
    "mlp": ModelSpec(name="mlp", input_shape=(30,), num_classes=2, hidden=16),
    "cnn": ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_opacus_compatible(name):
    spec = SPECS[name]
    model = build_model(spec, seed=0)
    x = torch.randn(5, *spec.input_shape)
    out = model(x)
    assert out.shape == (5, spec.num_classes)
    torch.nn.functional.cross_entropy(out, torch.zeros(5, dtype=torch.long)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert ModuleValidator.validate(model, strict=False) == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_build_is_repeatable(name):
    a = get_weights(build_model(SPECS[name], seed=1))
    b = get_weights(build_model(SPECS[name], seed=1))
    c = get_weights(build_model(SPECS[name], seed=2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_save_load_roundtrip(tmp_path):
    model = build_model(SPECS["mlp"], seed=0)
    save_model(tmp_path, model, SPECS["mlp"])
    loaded, spec = load_model(tmp_path / "model.pt")
    assert spec == SPECS["mlp"]
    x = torch.randn(3, 30)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_bad_specs_and_weights():
    with pytest.raises(ModelError, match=r"model\.name must be one of"):
        build_model(ModelSpec(name="resnet", input_shape=(3,), num_classes=2))
    with pytest.raises(ModelError, match="image-shaped input"):
        build_model(ModelSpec(name="cnn", input_shape=(30,), num_classes=2))
    model = build_model(SPECS["logreg"])
    with pytest.raises(ModelError, match=r"expects 2 arrays; got 1"):
        set_weights(model, [np.zeros((10, 64))])
    with pytest.raises(ModelError, match=r"must have shape \(10, 64\); got \(64, 10\)"):
        set_weights(model, [np.zeros((64, 10)), np.zeros(10)])


def test_load_model_missing_files(tmp_path):
    with pytest.raises(ModelError, match=r"must have model\.pt and model\.json"):
        load_model(tmp_path)

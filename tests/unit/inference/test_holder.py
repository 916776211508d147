import numpy as np
import pytest
import tenseal as ts

from fedai.errors import CorruptPayloadError, InferenceError, KeyMismatchError
from fedai.inference import (
    Activation,
    CkksProfile,
    EncryptedBatch,
    Layout,
    LinearLayer,
    ModelHolder,
    Querier,
    encrypted_predict,
    layers_from_model,
)
from fedai.models import ModelSpec, build_model


@pytest.fixture(scope="module")
def querier():
    return Querier()


@pytest.fixture(scope="module")
def holder():
    rng = np.random.default_rng(1)
    return ModelHolder(
        [
            LinearLayer(
                weight=rng.normal(size=(6, 9)), bias=rng.normal(size=6), activation=Activation.RELU
            ),
            LinearLayer(weight=rng.normal(size=(3, 6)), bias=rng.normal(size=3)),
        ],
        rng=np.random.default_rng(2),
    )


@pytest.mark.parametrize("layout", [Layout.ROWS, Layout.COLUMNS])
def test_encrypted_two_layer_model_matches_plaintext(querier, holder, layout):
    # Arrange: more rows than one ROWS ciphertext holds (4096 // 9 = 455).
    x = np.random.default_rng(3).normal(size=(500, 9))
    # Act
    y = encrypted_predict(querier, holder.evaluate, holder.infos, x, layout=layout)
    # Assert
    assert y.shape == (500, 3)
    np.testing.assert_allclose(y, holder.predict_plain(x), atol=1e-4)


def test_request_limits_split_rows_into_several_requests(querier, holder):
    # Arrange
    x = np.random.default_rng(4).normal(size=(50, 9))
    calls = []

    def counting(index, context, batch):
        calls.append(batch.rows)
        return holder.evaluate(index, context, batch)

    # Act
    y = encrypted_predict(querier, counting, holder.infos, x, max_rows=20)
    # Assert
    assert calls == [20, 20, 10, 20, 20, 10]
    np.testing.assert_allclose(y, holder.predict_plain(x), atol=1e-4)


def test_rows_reply_hides_products_behind_masks(querier, holder):
    # Arrange
    x = np.random.default_rng(5).normal(size=(2, 9))
    batch = querier.encrypt(x, layout=Layout.ROWS)
    # Act
    scores = holder.evaluate(0, querier.public_context(), batch)
    raw = np.asarray(ts.ckks_vector_from(querier._context, scores.ciphertexts[0]).decrypt())
    # Assert: raw slots are far from W[0, j] * x_j, but each block sums to the score.
    products = (x * holder.layers[0].weight[0]).ravel()
    assert np.median(np.abs(raw - products)) > 100.0
    np.testing.assert_allclose(
        raw.reshape(2, 9).sum(1),
        x @ holder.layers[0].weight[0] + holder.layers[0].bias[0],
        atol=1e-4,
    )


def test_public_context_has_no_secret_key(querier):
    assert not ts.context_from(querier.public_context()).is_private()


def test_context_with_secret_key_refused(querier, holder):
    batch = querier.encrypt(np.ones((1, 9)), layout=Layout.ROWS)
    private = querier._context.serialize(save_secret_key=True)
    with pytest.raises(InferenceError, match=r"context must be public .* secret key"):
        holder.evaluate(0, private, batch)


def test_wrong_feature_count_refused(querier, holder):
    batch = querier.encrypt(np.ones((1, 4)), layout=Layout.ROWS)
    with pytest.raises(InferenceError, match="layer 0 expects 9 features per row; got 4"):
        holder.evaluate(0, querier.public_context(), batch)


def test_unknown_layer_refused(querier, holder):
    batch = querier.encrypt(np.ones((1, 9)), layout=Layout.ROWS)
    with pytest.raises(InferenceError, match=r"layer must be in \[0, 1\]; got 7"):
        holder.evaluate(7, querier.public_context(), batch)


def test_other_parameters_refused(holder):
    other = Querier(profile=CkksProfile(coeff_mod_bit_sizes=(60, 40, 60)))
    batch = other.encrypt(np.ones((1, 9)), layout=Layout.ROWS)
    with pytest.raises(KeyMismatchError, match=r"coeff_mod_bit_sizes must be \[60, 40, 40, 60\]"):
        holder.evaluate(0, other.public_context(), batch)


@pytest.mark.parametrize("blob", [b"", b"\x00garbage" * 40])
def test_garbage_context_refused(querier, holder, blob):
    batch = querier.encrypt(np.ones((1, 9)), layout=Layout.ROWS)
    with pytest.raises(CorruptPayloadError, match="context must be a serialized TenSEAL context"):
        holder.evaluate(0, blob, batch)


@pytest.mark.parametrize("blob", [b"", b"\x01garbage" * 40])
def test_garbage_ciphertext_refused(querier, holder, blob):
    batch = EncryptedBatch(layout=Layout.ROWS, rows=1, features=9, ciphertexts=(blob,))
    with pytest.raises(CorruptPayloadError, match="ciphertext 0 must be a CKKS vector"):
        holder.evaluate(0, querier.public_context(), batch)


def test_ciphertext_of_wrong_size_refused(querier, holder):
    # Arrange: claims 2 rows but the ciphertext holds one row.
    one = querier.encrypt(np.ones((1, 9)), layout=Layout.ROWS)
    batch = EncryptedBatch(layout=Layout.ROWS, rows=2, features=9, ciphertexts=one.ciphertexts)
    # Act / Assert
    with pytest.raises(CorruptPayloadError, match="ciphertext 0 must hold 18 values; got 9"):
        holder.evaluate(0, querier.public_context(), batch)


def test_wrong_ciphertext_count_refused(querier, holder):
    batch = querier.encrypt(np.ones((1, 9)), layout=Layout.COLUMNS)
    short = EncryptedBatch(
        layout=Layout.COLUMNS, rows=1, features=9, ciphertexts=batch.ciphertexts[:-1]
    )
    with pytest.raises(InferenceError, match="need 10 ciphertexts; got 9"):
        holder.evaluate(0, querier.public_context(), short)


def test_layers_from_mlp_model_chain_with_relu():
    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=16)
    layers = layers_from_model(build_model(spec, seed=0), spec)
    assert [(lay.info.in_features, lay.info.out_features) for lay in layers] == [
        (64, 16),
        (16, 16),
        (16, 10),
    ]
    assert [lay.activation for lay in layers] == [Activation.RELU, Activation.RELU, Activation.NONE]


def test_cnn_model_refused():
    spec = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(InferenceError, match=r"model\.name must be logreg or mlp"):
        layers_from_model(build_model(spec, seed=0), spec)


def test_layers_that_do_not_chain_refused():
    a = LinearLayer(weight=np.ones((4, 3)), bias=np.zeros(4))
    b = LinearLayer(weight=np.ones((2, 5)), bias=np.zeros(2))
    with pytest.raises(InferenceError, match="layer 1 must take 4 inputs"):
        ModelHolder([a, b])


def test_rows_with_nan_refused(querier):
    with pytest.raises(InferenceError, match="rows must be finite"):
        querier.encrypt(np.array([[1.0, np.nan]]), layout=Layout.ROWS)

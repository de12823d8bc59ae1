"""Behaviour 1: only the stochastic regularisers run stochastically, and each draws the right noise."""

import keras
import numpy as np
import pytest

import mcdrop
from tests.engine.conftest import L, identity_dropout


def _spread(samples):
    return float(np.std(samples, axis=0).max())


def test_dropout_mask_is_bernoulli_with_inverted_scaling():
    model = identity_dropout(rate=0.3, features=64)
    s = mcdrop.MCDropout(model, num_samples=400, seed=0, verbose=0).sample(np.ones((2, 64), "float32"))
    values = np.unique(s)
    np.testing.assert_array_equal(values, np.array([0.0, 1 / 0.7], dtype=np.float32))
    dropped = float(np.mean(s == 0))
    # 400 x 64 Bernoulli(0.3) draws per row: sd of the fraction ~ 0.0029; 5 sd
    assert abs(dropped - 0.3) < 0.015


def test_gaussian_dropout_variance():
    rate = 0.2
    model = identity_dropout(features=64, layer=L.GaussianDropout(rate))
    s = mcdrop.MCDropout(model, num_samples=500, seed=0, verbose=0).sample(np.ones((1, 64), "float32"))
    assert abs(s.mean() - 1.0) < 0.01
    assert abs(s.var() - rate / (1 - rate)) < 0.01


def test_alpha_dropout_matches_keras_affine_map():
    rate = 0.25
    model = identity_dropout(features=64, layer=L.AlphaDropout(rate))
    s = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0).sample(np.ones((1, 64), "float32"))
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    np.testing.assert_allclose(np.unique(s), np.sort([a * alpha_p + b, a + b]), rtol=1e-6)
    assert abs(np.mean(np.isclose(s, a * alpha_p + b)) - rate) < 0.02


def test_spatial_dropout_drops_whole_feature_maps():
    model = keras.Sequential([keras.Input((5, 5, 8)), L.SpatialDropout2D(0.5)])
    s = mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0).sample(np.ones((2, 5, 5, 8), "float32"))
    # within a pass and a channel, every spatial position shares the draw
    assert np.all(s.min(axis=(2, 3)) == s.max(axis=(2, 3)))
    assert 0 < np.mean(s == 0) < 1


@pytest.mark.parametrize("cls", [L.SpatialDropout1D, L.SpatialDropout3D])
def test_spatial_dropout_1d_3d(cls):
    shape = (6, 4) if cls is L.SpatialDropout1D else (3, 3, 3, 4)
    model = keras.Sequential([keras.Input(shape), cls(0.5)])
    s = mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0).sample(np.ones((1, *shape), "float32"))
    spatial_axes = tuple(range(2, 2 + len(shape) - 1))
    assert np.all(s.min(axis=spatial_axes) == s.max(axis=spatial_axes))
    assert 0 < np.mean(s == 0) < 1


def test_gaussian_noise_only_when_opted_in():
    model = keras.Sequential([keras.Input((4,)), L.GaussianNoise(0.5), L.Dense(2)])
    x = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="allow_deterministic"):
        mcdrop.MCDropout(model, num_samples=5, verbose=0)
    off = mcdrop.MCDropout(model, num_samples=5, verbose=0, allow_deterministic=True).sample(x)
    assert np.all(off == off[:1])
    on = mcdrop.MCDropout(model, num_samples=50, seed=0, verbose=0, gaussian_noise=True).sample(
        np.zeros((3, 4), "float32"))
    w = model.layers[-1].kernel.numpy()
    # output = noise @ W: per-unit sd = 0.5 * ||W[:, j]||
    np.testing.assert_allclose(on.std(axis=0).mean(axis=0), 0.5 * np.linalg.norm(w, axis=0), rtol=0.3)


def test_batch_normalization_keeps_moving_statistics():
    """The test the naive `model(x, training=True)` loop fails: BN must use its moving statistics."""
    bn = L.BatchNormalization(epsilon=1e-3)
    model = keras.Sequential([keras.Input((4,)), bn, L.Dropout(0.5)])
    bn.moving_mean.assign(np.full(4, 5.0, "float32"))
    bn.moving_variance.assign(np.full(4, 4.0, "float32"))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")  # batch mean ~0, var ~1
    s = mcdrop.MCDropout(model, num_samples=30, seed=0, verbose=0).sample(x)
    inference = (x - 5.0) / np.sqrt(4.0 + 1e-3)  # gamma = 1, beta = 0
    kept = s != 0
    scaled = np.broadcast_to(2.0 * inference, s.shape)
    np.testing.assert_allclose(s[kept], scaled[kept], rtol=1e-5, atol=1e-5)
    assert 0.3 < kept.mean() < 0.7
    # batch statistics would centre the outputs near zero; moving statistics put them near -2.5
    assert s[kept].mean() < -4.0


def test_layer_normalization_and_other_layers_are_deterministic():
    inp = keras.Input((6,))
    features = L.LayerNormalization(name="ln")(L.Dense(8)(inp))
    noisy = L.Dense(2, name="noisy")(L.Dropout(0.4)(features))
    model = keras.Model(inp, [features, noisy])
    x = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0)
    clean, stochastic = mc.sample(x)
    expected = keras.Model(inp, features).predict(x, verbose=0)
    for t in range(6):  # the branch no dropout feeds is the same in every pass, and is Keras' inference output
        np.testing.assert_allclose(clean[t], expected, rtol=1e-5, atol=1e-6)
    assert np.all(clean == clean[:1])
    assert _spread(stochastic) > 1e-4
    assert [layer.name for layer in mc.view.leaves] == [model.layers[3].name]


@pytest.mark.parametrize("rnn", [L.SimpleRNN, L.GRU, L.LSTM])
@pytest.mark.parametrize("kind", ["dropout", "recurrent_dropout"])
def test_rnn_dropout_and_recurrent_dropout_are_stochastic(rnn, kind):
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    layer = rnn(6, **{kind: 0.5})
    model = keras.Sequential([keras.Input((5, 3)), layer, L.Dense(1)])
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert _spread(mc.sample(x)) > 1e-4
    # the cell object holds no mask of ours after sampling
    assert getattr(layer.cell, "_dropout_mask", None) is None
    assert getattr(layer.cell, "_recurrent_dropout_mask", None) is None


def test_rnn_with_both_dropouts_uses_one_mask_per_gate_lstm():
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    model = keras.Sequential([keras.Input((4, 2)), L.LSTM(5, dropout=0.3, recurrent_dropout=0.3), L.Dense(1)])
    s = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0).sample(x)
    assert _spread(s) > 1e-4


def test_rnn_input_dropout_is_fixed_over_time_steps():
    """Variational RNN dropout: one input mask per sequence, not per time step."""
    units = 4
    cell_rnn = L.SimpleRNN(units, dropout=0.5, return_sequences=True, activation="linear", use_bias=False)
    model = keras.Sequential([keras.Input((6, 8)), cell_rnn])
    cell_rnn.cell.kernel.assign(np.eye(8, units, dtype="float32"))
    cell_rnn.cell.recurrent_kernel.assign(np.zeros((units, units), "float32"))
    x = np.ones((1, 6, 8), "float32")
    s = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0).sample(x)  # (T, 1, 6, units)
    # with identity input weights and no recurrence, h_t = mask * x_t: equal across time steps
    assert np.all(s.min(axis=2) == s.max(axis=2))
    assert 0 < np.mean(s == 0) < 1


def test_bidirectional_rnn_dropout():
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    model = keras.Sequential([keras.Input((5, 3)), L.Bidirectional(L.GRU(4, dropout=0.4, recurrent_dropout=0.4)),
                              L.Dense(1)])
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert len(mc.view.rnns) == 2  # forward and backward copies
    assert _spread(mc.sample(x)) > 1e-4


def test_multi_head_attention_dropout():
    inp = keras.Input((5, 4))
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5)
    model = keras.Model(inp, att(inp, inp))
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert [type(layer).__name__ for layer in mc.view.leaves] == ["Dropout"]
    assert _spread(mc.sample(x)) > 1e-4


def test_attention_layer_dropout_is_reported_not_silently_ignored():
    q = keras.Input((3, 4))
    out = L.Attention(dropout=0.5)([q, q])
    model = keras.Model(q, L.Dropout(0.1)(out))
    with pytest.warns(UserWarning, match="cannot make the dropout"):
        mcdrop.MCDropout(model, num_samples=2, verbose=0)

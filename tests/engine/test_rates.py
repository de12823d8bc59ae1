"""Sampling at other dropout rates than the trained ones (``MCDropout(model, rate=...)``)."""

import keras
import numpy as np
import pytest

from mcdrop import MCDropout

L = keras.layers


def _linear_model(layer, weights):
    """x -> (dropout-family layer) -> Dense(1, no bias, linear): the output of one pass is
    sum_i w_i x_i n_i, whose variance over the noise n is known in closed form."""
    inp = keras.Input((len(weights),))
    out = L.Dense(1, use_bias=False, name="head")(layer(inp))
    model = keras.Model(inp, out)
    model.get_layer("head").set_weights([np.asarray(weights, np.float32)[:, None]])
    return model


@pytest.mark.parametrize("family", [L.Dropout, L.GaussianDropout])
def test_higher_rate_gives_the_bernoulli_variance(family):
    # Var[w . (x * n)] = sum_i w_i^2 x_i^2 * r / (1 - r) for inverted dropout (Bernoulli(1 - r) / (1 - r))
    # and for Gaussian dropout (N(1, r / (1 - r))) alike.
    rng = np.random.default_rng(0)
    w = rng.normal(size=12)
    x = rng.normal(size=(5, 12)).astype("float32")
    model = _linear_model(family(0.2, name="noise"), w)
    variances = {}
    for r in (0.1, 0.5):
        pred = MCDropout(model, num_samples=4000, seed=3, rate=r).predict(x)
        expected = (w ** 2 * x.astype(np.float64) ** 2).sum(axis=1) * r / (1 - r)
        np.testing.assert_allclose(pred.epistemic_variance[:, 0], expected, rtol=0.1)
        variances[r] = pred.epistemic_variance[:, 0]
    assert np.all(variances[0.5] > variances[0.1])
    assert model.get_layer("noise").rate == 0.2  # the model is untouched


def test_rate_zero_gives_the_deterministic_output_exactly():
    model = keras.Sequential([keras.Input((6,)), L.Dense(16, activation="relu"), L.Dropout(0.4),
                              L.Dense(8, activation="tanh"), L.AlphaDropout(0.1), L.Dense(3, activation="softmax")])
    x = np.random.default_rng(1).normal(size=(33, 6)).astype("float32")
    pred = MCDropout(model, num_samples=4, seed=0, rate=0.0).predict(x, return_samples=True)
    expected = model.predict(x, verbose=0)
    for t in range(4):
        np.testing.assert_array_equal(pred.samples[t].astype(np.float32), expected)
    assert np.all(pred.variance == 0)


def test_mapping_by_name_and_by_class():
    model = keras.Sequential([keras.Input((1,)), L.Dense(1, use_bias=False, kernel_initializer="ones"),
                              L.Dropout(0.2, name="a"), L.GaussianDropout(0.2, name="g")])
    x = np.ones((1, 1), np.float32)
    # only the Dropout at 0.5 (the Gaussian one off): each pass is 0 or 2
    pred = MCDropout(model, num_samples=400, seed=0, rate={"a": 0.5, L.GaussianDropout: 0.0}).predict(
        x, return_samples=True)
    assert set(np.unique(pred.samples)) == {0.0, 2.0}
    np.testing.assert_allclose(np.mean(pred.samples == 0.0), 0.5, atol=0.08)
    # a name wins over a class
    pred = MCDropout(model, num_samples=5, seed=0, rate={L.Dropout: 0.5, "a": 0.0, "g": 0.0}).predict(x)
    assert np.all(pred.epistemic_variance == 0)


def test_rate_override_reaches_rnn_dropout():
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, dropout=0.3, recurrent_dropout=0.2, name="lstm"),
                              L.Dense(1)])
    x = np.random.default_rng(2).normal(size=(6, 5, 3)).astype("float32")
    off = MCDropout(model, num_samples=3, seed=0, rate={"lstm": 0.0}).predict(x, return_samples=True)
    np.testing.assert_allclose(off.samples[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert np.all(off.epistemic_variance == 0)
    low = MCDropout(model, num_samples=400, seed=0, rate=0.05).predict(x)
    high = MCDropout(model, num_samples=400, seed=0, rate=0.6).predict(x)
    assert np.all(high.epistemic_variance > low.epistemic_variance)


def test_same_seed_nests_the_masks_across_rates():
    # common random numbers: a unit dropped at rate r is dropped at every higher rate
    inp = keras.Input((64,))
    model = keras.Model(inp, L.Dropout(0.5)(inp))
    x = np.ones((1, 64), np.float32)
    low = MCDropout(model, num_samples=20, seed=7, rate=0.2).predict(x, return_samples=True).samples
    high = MCDropout(model, num_samples=20, seed=7, rate=0.6).predict(x, return_samples=True).samples
    assert np.all((low == 0) <= (high == 0))


@pytest.mark.parametrize("rate, error, match", [
    ({"nope": 0.1}, ValueError, r"argument `rate`.*no layer named 'nope'"),
    ({"head": 0.1}, ValueError, r"argument `rate`.*'head' is a Dense, which has no dropout rate"),
    ({L.AlphaDropout: 0.1}, ValueError, r"argument `rate`.*AlphaDropout matches none"),
    ({3: 0.1}, TypeError, r"argument `rate`: expected a mapping keyed by layer names"),
    (1.0, ValueError, r"argument `rate`: expected a number in \[0.0, 1.0\), received 1.0"),
    ({"noise": -0.1}, ValueError, r"argument `rate\['noise'\]`: expected a number in \[0.0, 1.0\)"),
    ("high", TypeError, r"argument `rate`: expected a float in \[0, 1\), a mapping"),
])
def test_rate_errors(rate, error, match):
    model = _linear_model(L.Dropout(0.2, name="noise"), [1.0, 2.0])
    with pytest.raises(error, match=match):
        MCDropout(model, rate=rate)


def test_a_rate_on_a_model_without_dropout_is_still_refused():
    model = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    with pytest.raises(ValueError, match="at least one stochastic layer"):
        MCDropout(model, rate=0.3)


def test_a_float_rate_reaches_attention_dropout():
    inp = keras.Input((4, 8))
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1)(inp, inp)
    model = keras.Model(inp, L.Dense(1)(L.Flatten()(att)))
    x = np.random.default_rng(3).normal(size=(5, 4, 8)).astype("float32")
    off = MCDropout(model, num_samples=3, seed=0, rate=0.0).predict(x, return_samples=True)
    np.testing.assert_allclose(off.samples[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert np.all(off.epistemic_variance == 0)
    trained = MCDropout(model, num_samples=200, seed=0).predict(x)
    higher = MCDropout(model, num_samples=200, seed=0, rate=0.5).predict(x)
    assert np.all(higher.epistemic_variance > trained.epistemic_variance)

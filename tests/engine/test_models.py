"""Behaviours 2 and 3: every kind of Keras model works, and the user's model is never changed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from tests.engine.conftest import L, linear_after_dropout, mlp

T_LARGE = 3000


def _assert_unbiased(model, x, mc_kwargs=None, atol=0.03):
    """With nothing nonlinear after the dropout, E[output] is the deterministic output (inverted dropout
    is unbiased), which Keras' own `predict` gives: an independent check of every pass's plumbing."""
    mc = mcdrop.MCDropout(model, num_samples=T_LARGE, seed=0, verbose=0, task="regression",
                          **(mc_kwargs or {}))
    pred = mc.predict(x, return_samples=False)
    expected = model.predict(x, verbose=0)
    preds = pred if isinstance(pred, (list, dict)) else [pred]
    expected = expected if isinstance(expected, (list, dict)) else [expected]
    if isinstance(preds, dict):
        preds, expected = list(preds.values()), [expected[k] for k in pred]
    for p, e in zip(preds, expected):
        e = e.reshape(p.mean.shape)
        scale = np.abs(e).max() + 1e-6
        np.testing.assert_allclose(p.mean / scale, e / scale, atol=atol)
        assert p.epistemic_variance.max() > 0 or np.allclose(p.mean, e)
    return pred


def test_sequential(rng):
    _assert_unbiased(linear_after_dropout(), rng.standard_normal((7, 6)).astype("float32"))


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_functional_with_skip_connection_and_branches(rng, run_eagerly):
    inp = keras.Input((5,))
    h = L.Dense(8)(inp)
    skip = L.Add()([h, L.Dropout(0.5)(h)])                      # deterministic side broadcast over passes
    branch = L.Dense(4)(L.Dropout(0.2)(L.Dense(6)(inp)))
    out = L.Dense(2)(L.Concatenate()([skip, branch]))
    model = keras.Model(inp, out)
    x = rng.standard_normal((6, 5)).astype("float32")
    kwargs = {"run_eagerly": run_eagerly}
    if run_eagerly:  # eager is slow: fewer passes, looser check
        mc = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0, task="regression", **kwargs)
        compiled = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0, task="regression")
        np.testing.assert_allclose(mc.sample(x), compiled.sample(x), rtol=1e-5, atol=1e-5)
    else:
        _assert_unbiased(model, x, kwargs)


def test_multi_input_multi_output_dict(rng):
    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    h = L.Dropout(0.3)(L.Dense(8)(a))
    cls = L.Dense(3, activation="softmax", name="cls")(L.Concatenate()([h, b]))
    reg = L.Dense(1, name="reg")(L.Dropout(0.3)(L.Dense(4)(b)))
    model = keras.Model({"a": a, "b": b}, {"cls": cls, "reg": reg})
    x = {"a": rng.standard_normal((9, 5)).astype("float32"), "b": rng.standard_normal((9, 3)).astype("float32")}
    pred = mcdrop.MCDropout(model, num_samples=T_LARGE, seed=0, verbose=0).predict(x)
    assert set(pred) == {"cls", "reg"}
    assert isinstance(pred["cls"], mcdrop.ClassificationPrediction) and pred["cls"].mean.shape == (9, 3)
    assert isinstance(pred["reg"], mcdrop.RegressionPrediction) and pred["reg"].mean.shape == (9, 1)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(pred["reg"].mean, expected["reg"], atol=0.03 * np.abs(expected["reg"]).max())
    assert np.allclose(pred["cls"].mean.sum(axis=1), 1.0)


def test_list_inputs_and_outputs(rng):
    a, b = keras.Input((4,)), keras.Input((2,))
    h = L.Dropout(0.4)(L.Dense(6)(L.Concatenate()([a, b])))
    model = keras.Model([a, b], [L.Dense(1)(h), L.Dense(2)(h)])
    x = [rng.standard_normal((5, 4)).astype("float32"), rng.standard_normal((5, 2)).astype("float32")]
    pred = _assert_unbiased(model, x)
    assert isinstance(pred, list) and [p.mean.shape for p in pred] == [(5, 1), (5, 2)]


def test_nested_models(rng):
    inner = keras.Sequential([keras.Input((8,)), L.Dense(8), L.Dropout(0.5), L.Dense(4)], name="inner")
    inp = keras.Input((5,))
    out = L.Dense(2)(inner(L.Dense(8)(inp)))
    model = keras.Model(inp, out)
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert len(mc.view.leaves) == 1
    _assert_unbiased(model, rng.standard_normal((6, 5)).astype("float32"))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d1 = L.Dense(16)
        self.bn = L.BatchNormalization()
        self.drop = L.Dropout(0.4)
        self.d2 = L.Dense(2)

    def call(self, x, training=False):
        return self.d2(self.drop(self.bn(self.d1(x), training=training), training=training))


def test_subclassed_model(rng):
    model = Subclassed()
    x = rng.standard_normal((6, 5)).astype("float32")
    model(x)
    model.bn.moving_mean.assign(np.full(16, 0.5, "float32"))
    _assert_unbiased(model, x)


def _snapshot(model):
    layers = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layers[id(layer)] = {k: (id(v), type(v).__name__) for k, v in vars(layer).items()}
    return layers, [w.numpy().copy() for w in model.weights]


@pytest.mark.parametrize("build", ["mlp", "rnn", "subclassed"])
def test_model_is_never_modified(rng, build):
    if build == "mlp":
        model, x = mlp(), rng.standard_normal((10, 8)).astype("float32")
    elif build == "rnn":
        model = keras.Sequential([keras.Input((4, 3)), L.LSTM(5, dropout=0.3, recurrent_dropout=0.3),
                                  L.BatchNormalization(), L.Dense(2, activation="softmax")])
        x = rng.standard_normal((10, 4, 3)).astype("float32")
    else:
        model = Subclassed()
        x = rng.standard_normal((10, 5)).astype("float32")
        model(x)
    before_predict = model.predict(x, verbose=0)  # Keras' predict caches its own function: do it first
    before_layers, before_weights = _snapshot(model)
    mc = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0)
    mc.predict(x)
    mc.sample(x)
    after_layers, after_weights = _snapshot(model)
    assert after_layers == before_layers  # no attribute added, removed or rebound on any layer
    for b, a in zip(before_weights, after_weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before_predict)
    # the model itself still runs its dropout only in training, as Keras does
    np.testing.assert_array_equal(model(x, training=False).numpy(), before_predict)


def test_tf_tensor_and_dataset_inputs(rng):
    model = mlp()
    x = rng.standard_normal((20, 8)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=6, seed=3, verbose=0, batch_size=8)
    ref = mc.sample(x)
    np.testing.assert_array_equal(mc.sample(tf.constant(x)), ref)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(20))).batch(3)  # (x, y) elements: y ignored
    np.testing.assert_array_equal(mc.sample(ds), ref)
    gen = (x[i:i + 5] for i in range(0, 20, 5))
    np.testing.assert_array_equal(mc.sample(gen), ref)

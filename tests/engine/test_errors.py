"""Bad input: a clear error naming the argument and the value received, and nothing half-done."""

import keras
import numpy as np
import pytest

import mcdrop
from tests.engine.conftest import L, mlp

X = np.zeros((4, 8), "float32")


@pytest.mark.parametrize("value", [0, -3])
def test_num_samples_below_one(value):
    with pytest.raises(ValueError, match=rf"Invalid value for argument `num_samples`: expected an integer >= 1, "
                                         rf"received {value}\."):
        mcdrop.MCDropout(mlp(), num_samples=value)


def test_num_samples_not_an_integer():
    with pytest.raises(TypeError, match=r"argument `num_samples`: expected an integer >= 1, received 2\.5"):
        mcdrop.MCDropout(mlp(), num_samples=2.5)


def test_model_without_stochastic_layer():
    model = keras.Sequential([keras.Input((8,)), L.Dense(3, activation="softmax"), L.Dropout(0.0)])
    with pytest.raises(ValueError, match=r"argument `model`: expected a model with at least one stochastic layer.*"
                                         r"Every pass would be identical\. Pass allow_deterministic=True"):
        mcdrop.MCDropout(model)


def test_not_a_keras_model():
    with pytest.raises(TypeError, match=r"argument `model`: expected a keras.Model \(Keras 3\), received "
                                        r"'not a model'"):
        mcdrop.MCDropout("not a model")


def test_input_of_wrong_shape():
    mc = mcdrop.MCDropout(mlp(), num_samples=3, verbose=0)
    with pytest.raises(ValueError, match=r"argument `x`: expected an array of shape \(None, 8\), received an array "
                                         r"of shape \(4, 7\).*cannot take"):
        mc.predict(np.zeros((4, 7), "float32"))


def test_input_of_wrong_dtype_for_integer_input():
    model = keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(10, 4), L.Flatten(), L.Dropout(0.5),
                              L.Dense(2, activation="softmax")])
    mc = mcdrop.MCDropout(model, num_samples=3, verbose=0)
    with pytest.raises(TypeError, match=r"argument `x`: expected integer values for the model's int32 input"):
        mc.predict(np.full((2, 5), 0.5))
    assert mc.predict(np.ones((2, 5), "int64")).mean.shape == (2, 2)


def test_non_numeric_input():
    with pytest.raises(TypeError, match=r"argument `x`: expected a numeric array"):
        mcdrop.MCDropout(mlp(), num_samples=3, verbose=0).predict(np.array([["a"] * 8]))


def test_missing_dict_key():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    out = L.Dense(1)(L.Dropout(0.5)(L.Concatenate()([a, b])))
    model = keras.Model({"a": a, "b": b}, out)
    mc = mcdrop.MCDropout(model, num_samples=3, verbose=0)
    with pytest.raises(ValueError, match=r"argument `x`: expected a dict with the model's input keys \['a', 'b'\], "
                                         r"received \['a'\]\. Missing key\(s\): \['b'\]"):
        mc.predict({"a": np.zeros((2, 2), "float32")})


def test_declared_probs_that_do_not_sum_to_one():
    mc = mcdrop.MCDropout(mlp(activation=None), num_samples=3, seed=0, verbose=0, task="classification",
                          outputs="probs")
    with pytest.raises(ValueError, match=r"argument `outputs`: expected 'probs' outputs whose rows sum to one, "
                                         r"received \d+ row\(s\) that do not.*outputs='logits'"):
        mc.predict(np.random.default_rng(0).standard_normal((6, 8)).astype("float32"))


class LogOfFirstFeature(L.Layer):
    """Adds log(x[:, 0]) to every unit: -inf exactly on the rows whose first feature is 0, from finite
    input, whatever the CPU's kernels do with NaN (an AVX-512 ReLU maps NaN to a finite value)."""

    def call(self, inputs):
        h, x = inputs
        return h + keras.ops.log(x[:, :1])


def _nonfinite_on_zero_rows():
    inp = keras.Input((8,))
    h = L.Dense(3)(L.Dropout(0.5)(L.Dense(16, activation="relu")(inp)))
    return keras.Model(inp, LogOfFirstFeature()([h, inp]))


def test_nonfinite_outputs_name_the_number_of_rows():
    mc = mcdrop.MCDropout(_nonfinite_on_zero_rows(), num_samples=3, seed=0, verbose=0, task="regression")
    x = np.ones((10, 8), "float32")
    x[[1, 4, 7], 0] = 0.0  # finite input, infinite output
    with pytest.raises(ValueError, match=r"3 of 10 row\(s\) of `x` gave NaN or infinite values"):
        mc.predict(x)
    with pytest.raises(ValueError, match=r"3 of 10 row\(s\) of `x` gave NaN or infinite values"):
        mc.sample(x)
    assert np.all(np.isfinite(mc.predict(np.ones((4, 8), "float32")).mean))  # the model itself is fine


@pytest.mark.parametrize("arg, value, message", [
    ("mask", "per_batch", r"argument `mask`: expected one of 'consistent', 'per_example', received 'per_batch'"),
    ("task", "ranking", r"argument `task`: expected one of 'classification', 'regression', received 'ranking'"),
    ("outputs", "scores", r"argument `outputs`: expected one of 'probs', 'logits', received 'scores'"),
    ("heteroscedastic", "gamma", r"argument `heteroscedastic`: expected one of 'log_variance'"),
    ("batch_size", 0, r"argument `batch_size`: expected an integer >= 1, received 0"),
    ("passes_per_chunk", 0, r"argument `passes_per_chunk`: expected an integer >= 1, received 0"),
    ("seed", -1, r"argument `seed`: expected an integer >= 0 and <= 4611686018427387903, received -1"),
])
def test_bad_options(arg, value, message):
    with pytest.raises(ValueError, match=message):
        mcdrop.MCDropout(mlp(), num_samples=3, **{arg: value})


def test_heteroscedastic_with_classification_is_refused():
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected None for task='classification'"):
        mcdrop.MCDropout(mlp(), task="classification", heteroscedastic="log_variance")


def test_heteroscedastic_needs_an_even_number_of_units():
    mc = mcdrop.MCDropout(mlp(n_out=3, activation=None), num_samples=2, verbose=0, heteroscedastic="log_variance")
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected a model output with a mean half"):
        mc.predict(X)


def test_empty_input():
    with pytest.raises(ValueError, match=r"argument `x`: expected at least one row"):
        mcdrop.MCDropout(mlp(), num_samples=2, verbose=0).predict(np.zeros((0, 8), "float32"))


def test_failed_call_leaves_engine_usable_and_model_untouched():
    model = mlp()
    mc = mcdrop.MCDropout(model, num_samples=3, seed=0, verbose=0)
    with pytest.raises(ValueError):
        mc.predict(np.zeros((4, 7), "float32"))
    assert "call" not in vars(model.layers[1])  # no shadowed method left behind
    assert mc.predict(X).mean.shape == (4, 3)


def test_seed_beyond_62_bits_is_refused():
    """Masks are keyed by a 62-bit seed: 2**62 would silently repeat seed 0's passes."""
    with pytest.raises(ValueError, match=r"argument `seed`: expected an integer >= 0 and <= 4611686018427387903, "
                                         r"received 4611686018427387904"):
        mcdrop.MCDropout(mlp(), num_samples=2, seed=2**62, verbose=0)
    assert mcdrop.MCDropout(mlp(), num_samples=2, seed=2**62 - 1, verbose=0).seed == 2**62 - 1

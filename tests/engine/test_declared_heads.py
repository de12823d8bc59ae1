"""Issue 9 item 4: a declared head that contradicts the model is refused (or, where only the values
hint at it, warned about) instead of read silently as something else."""

import keras
import numpy as np
import pytest
from scipy import special

import mcdrop
from tests.engine.conftest import L, mlp

X = np.random.default_rng(0).standard_normal((6, 8)).astype("float32")


def test_heteroscedastic_on_a_softmax_classifier_is_refused():
    # before: read as "regression, 3 targets" with made-up variances
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected None for an output with a softmax "
                                         r"activation.*received 'log_variance'"):
        mcdrop.MCDropout(mlp(activation="softmax"), heteroscedastic="log_variance")


def test_heteroscedastic_on_a_sigmoid_output_is_refused():
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected None for an output with a sigmoid"):
        mcdrop.MCDropout(mlp(n_out=2, activation="sigmoid"), heteroscedastic="std")


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_logits_on_a_probability_output_is_refused(activation):
    # before: a second softmax over probabilities (confidence 0.21 instead of 0.87 in the issue)
    n_out = 1 if activation == "sigmoid" else 3
    with pytest.raises(ValueError, match=rf"argument `outputs`: expected 'probs' \(or None\) for an output with a "
                                         rf"{activation} activation.*received 'logits'"):
        mcdrop.MCDropout(mlp(n_out=n_out, activation=activation), outputs="logits")


def test_classification_on_a_linear_output_must_say_logits():
    # before: a linear regressor's output silently read as a sigmoid logit
    regressor = mlp(n_out=1, activation=None)
    with pytest.raises(ValueError, match=r"argument `task`: expected 'regression' for an output with a linear "
                                         r"activation, or outputs='logits'.*received 'classification'"):
        mcdrop.MCDropout(regressor, task="classification")
    # stating the outputs as logits is the way to say it is a classifier
    mc = mcdrop.MCDropout(mlp(activation=None), num_samples=20, seed=0, verbose=0, task="classification",
                          outputs="logits")
    logits = mc.sample(X).astype(np.float64)
    np.testing.assert_allclose(mc.predict(X).mean, special.softmax(logits, axis=2).mean(axis=0), rtol=1e-10)


def test_declared_probs_on_a_linear_output_that_are_not_probabilities():
    mc = mcdrop.MCDropout(mlp(activation=None), num_samples=3, seed=0, verbose=0, task="classification",
                          outputs="probs")
    with pytest.raises(ValueError, match=r"argument `outputs`: expected 'probs' outputs whose rows sum to one"):
        mc.predict(X)


def test_per_output_declarations_are_checked_per_output():
    inp = keras.Input((4,))
    h = L.Dropout(0.3)(L.Dense(8)(inp))
    model = keras.Model(inp, {"cls": L.Dense(3, activation="softmax", name="cls")(h),
                              "reg": L.Dense(2, name="reg")(h)})
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected None for an output with a softmax "
                                         r"activation.*Output 'cls'"):
        mcdrop.MCDropout(model, heteroscedastic="log_variance")
    mc = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, heteroscedastic={"cls": None, "reg": "std"})
    pred = mc.predict(np.ones((2, 4), "float32"))
    assert pred["reg"].heteroscedastic and pred["cls"].mean.shape == (2, 3)


class SoftmaxSubclassed(keras.Model):
    """A subclassed classifier: its activation cannot be read from a graph, only from its values."""

    def __init__(self):
        super().__init__()
        self.d1, self.drop, self.d2 = L.Dense(16), L.Dropout(0.3), L.Dense(4)

    def call(self, x, training=False):
        return keras.ops.softmax(self.d2(self.drop(self.d1(x), training=training)))


def test_values_that_look_like_probabilities_warn_for_logits_and_gaussian_heads():
    model = SoftmaxSubclassed()
    model(X)
    with pytest.warns(UserWarning, match=r"outputs='logits'.*rows of probabilities.*second softmax"):
        mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, outputs="logits").predict(X)
    with pytest.warns(UserWarning, match=r"heteroscedastic='log_variance'.*rows of probabilities"):
        mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, heteroscedastic="log_variance").predict(X)


def test_a_softmax_op_in_the_graph_is_a_softmax_output():
    """`keras.ops.softmax` in a Functional graph is read as a softmax (it used to read as linear, and so as
    a regressor); a final layer that does not say what it computes is never refused as linear."""
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.ops.softmax(L.Dense(3)(L.Dropout(0.5)(inp))))
    pred = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0).predict(X)
    assert pred.task == "classification" and pred.outputs == "probs"
    with pytest.raises(ValueError, match=r"argument `outputs`: expected 'probs' \(or None\) for an output with a "
                                         r"softmax activation"):
        mcdrop.MCDropout(model, outputs="logits")

    class Normalise(L.Layer):  # a custom last layer: its activation cannot be read
        def call(self, x):
            return keras.ops.softmax(x)

    model = keras.Model(inp, Normalise()(L.Dense(3)(L.Dropout(0.5)(inp))))
    pred = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, task="classification").predict(X)
    assert pred.outputs == "probs"  # read from the values, which are probabilities

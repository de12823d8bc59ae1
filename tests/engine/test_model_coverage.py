"""Issue 9 items 9 and 10 (and issue 15's unbatched dataset): unknown dimensions are traced at the
data's size, a failed step names its real cause, and subclassed multi-output models get per-output
options and named outputs as Functional ones do."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from tests.engine.conftest import L, mlp


# -- unknown dimensions ------------------------------------------------------------------------------

def _time_distributed():
    inp = keras.Input((None, 3))  # time axis of unknown length
    return keras.Model(inp, L.Dropout(0.5)(L.TimeDistributed(L.Dense(4))(inp)))


@pytest.mark.parametrize("batch_size", [2, 5, 8])  # fewer, as many and more rows than time steps
def test_time_distributed_over_an_unknown_axis_equals_keras_eager(batch_size):
    """Before: with more rows per call than time steps the step raised; with fewer it kept only
    `batch_size` time steps. Every kept unit must be 2x Keras' own inference output (rate 0.5)."""
    model = _time_distributed()
    x = np.random.default_rng(0).normal(size=(5, 7, 3)).astype("float32")
    expected = model(x, training=False).numpy()  # Keras, eagerly
    mc = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0, batch_size=batch_size)
    s = mc.sample(x)
    assert s.shape == (6, 5, 7, 4)
    kept = s != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(s[kept], np.broadcast_to(2 * expected, s.shape)[kept], rtol=1e-5, atol=1e-6)
    # the masks do not depend on the batch size
    other = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0, batch_size=1).sample(x)
    np.testing.assert_array_equal(other == 0, s == 0)


def test_unknown_axis_traces_once_per_length_not_per_batch_size():
    model = _time_distributed()
    mc = mcdrop.MCDropout(model, num_samples=2, seed=0, verbose=0)
    rng = np.random.default_rng(1)
    for rows in (3, 4):
        mc.sample(rng.normal(size=(rows, 7, 3)).astype("float32"), batch_size=rows)
    assert mc.sampler.traces == 1
    assert mc.sample(rng.normal(size=(2, 9, 3)).astype("float32")).shape == (2, 2, 9, 4)
    assert mc.sampler.traces == 2


def test_a_failed_step_shows_the_real_cause():
    """Before: "The model failed on it: Graph execution error:" with the cause only in __cause__."""
    inp = keras.Input((3,), dtype="int32")
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(L.Dropout(0.5)(L.Embedding(5, 4)(inp)))))
    mc = mcdrop.MCDropout(model, num_samples=3, verbose=0)
    with pytest.raises(ValueError, match=r"argument `x`: expected input the model can take.*The model failed on "
                                         r"it: indices\[0,2\] = 10 is not in \[0, 5\)") as info:
        mc.sample(np.array([[1, 2, 10]], "int32"))
    assert "Graph execution error" not in str(info.value)


# -- unbatched datasets ------------------------------------------------------------------------------

def test_an_unbatched_dataset_is_told_to_batch():
    x = np.random.default_rng(0).standard_normal((6, 8)).astype("float32")
    mc = mcdrop.MCDropout(mlp(), num_samples=2, seed=0, verbose=0)
    for ds in (tf.data.Dataset.from_tensor_slices(x), tf.data.Dataset.from_tensor_slices((x, np.zeros(6)))):
        with pytest.raises(ValueError, match=r"argument `x`: expected a batched tf.data.Dataset.*single rows.*"
                                             r"Call `\.batch\(n\)` on it"):
            mc.predict(ds)
    assert mc.predict(tf.data.Dataset.from_tensor_slices(x).batch(4)).mean.shape == (6, 3)


# -- subclassed multi-output models ------------------------------------------------------------------

class TwoHeads(keras.Model):
    """A subclassed model returning a dict: a softmax classifier and a Gaussian (mean, log-variance) head."""

    def __init__(self, as_list=False):
        super().__init__()
        self.as_list = as_list
        self.body, self.drop = L.Dense(16, activation="relu"), L.Dropout(0.3)
        self.cls, self.reg = L.Dense(3), L.Dense(2)

    def call(self, x, training=False):
        h = self.drop(self.body(x), training=training)
        probs, gauss = keras.ops.softmax(self.cls(h)), self.reg(h)
        # keys deliberately not in sorted order
        return [probs, gauss] if self.as_list else {"zeta": probs, "alpha": gauss}


@pytest.fixture
def two_heads():
    model = TwoHeads()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    model(x)
    return model, x


def test_subclassed_dict_outputs_come_back_named(two_heads):
    model, x = two_heads
    pred = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0).predict(x)
    assert isinstance(pred, dict) and set(pred) == {"zeta", "alpha"}  # before: an unnamed list
    assert isinstance(pred["zeta"], mcdrop.ClassificationPrediction) and pred["zeta"].mean.shape == (4, 3)
    samples = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0).sample(x)
    assert set(samples) == {"zeta", "alpha"} and samples["alpha"].shape == (8, 4, 2)
    np.testing.assert_allclose(pred["zeta"].mean, samples["zeta"].astype(np.float64).mean(axis=0), rtol=1e-6)


def test_subclassed_dict_outputs_take_per_output_options(two_heads):
    model, x = two_heads
    # before: "expected one value per model output (1)" / IndexError
    mc = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0, task={"zeta": "classification",
                                                                        "alpha": "regression"},
                          heteroscedastic={"zeta": None, "alpha": "log_variance"})
    pred = mc.predict(x)
    assert pred["alpha"].heteroscedastic and pred["alpha"].mean.shape == (4, 1)
    raw = mc.sample(x)["alpha"].astype(np.float64)
    np.testing.assert_allclose(pred["alpha"].aleatoric_variance, np.exp(raw[..., 1:]).mean(axis=0), rtol=1e-5)
    assert [h.task for h in mc.heads] == ["regression", "classification"]  # alpha, zeta: the flat order


def test_subclassed_list_outputs_take_a_list_of_options():
    model = TwoHeads(as_list=True)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    model(x)
    pred = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0, task=["classification", "regression"],
                            heteroscedastic=[None, "std"]).predict(x)
    assert isinstance(pred, list) and pred[1].heteroscedastic and pred[0].mean.shape == (4, 3)


def test_subclassed_per_output_options_that_do_not_match(two_heads):
    model, x = two_heads
    with pytest.raises(ValueError, match=r"argument `task`: expected one value per model output \(2\)"):
        mcdrop.MCDropout(model, num_samples=2, verbose=0, task=["regression"]).predict(x)
    with pytest.raises(ValueError, match=r"argument `task`: expected a value for every model output "
                                         r"\['alpha', 'zeta'\].*Unknown output name\(s\): \['beta'\]"):
        mcdrop.MCDropout(model, num_samples=2, verbose=0, task={"zeta": "classification", "beta": "regression"}
                         ).predict(x)
    with pytest.raises(ValueError, match=r"argument `task`: expected one of 'classification', 'regression', "
                                         r"received 'ranking'"):
        mcdrop.MCDropout(model, num_samples=2, verbose=0, task={"zeta": "ranking"})


def test_subclassed_dict_outputs_stream_to_named_folders(two_heads, tmp_path):
    model, x = two_heads
    mc = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0)
    pred = mc.predict(x, out=tmp_path / "pool")
    assert set(pred) == {"zeta", "alpha"}
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == ["alpha", "zeta"]
    np.testing.assert_allclose(np.asarray(pred["zeta"].mean), mc.predict(x)["zeta"].mean)

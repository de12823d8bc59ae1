"""predict(x, num_samples="auto", tolerance=...): T chosen by the Monte Carlo error accepted."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcdrop import MCDropout
from mcdrop.engine.adaptive import SampleCountWarning

from tests.engine.conftest import linear_after_dropout, mlp


def _se(samples):
    """MC standard error of the mean over passes, from the kept samples (numpy, ddof=1)."""
    t = samples.shape[0]
    return np.std(samples.astype(np.float64), axis=0, ddof=1) / np.sqrt(t)


def _assert_same(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=field.name)
        else:
            assert va == vb, field.name


@pytest.mark.parametrize("make, tolerance", [(lambda: mlp(n_in=6, n_out=4), 0.01),
                                             (lambda: linear_after_dropout(n_in=6, n_out=2), 0.1)])
def test_stops_at_the_first_chunk_below_tolerance_and_equals_the_fixed_run(make, tolerance, rng):
    model = make()
    x = rng.normal(size=(200, 6)).astype("float32")
    pred = MCDropout(model, seed=5, passes_per_chunk=10).predict(
        x, num_samples="auto", tolerance=tolerance, max_samples=2000, return_samples=True)
    t = pred.num_samples
    assert t % 10 == 0 and 20 <= t < 2000
    assert _se(pred.samples).max() < tolerance
    assert _se(pred.samples[:t - 10]).max() >= tolerance  # it did not run a chunk more than needed
    fixed = MCDropout(model, num_samples=t, seed=5, passes_per_chunk=10).predict(x, return_samples=True)
    _assert_same(pred, fixed)


def test_equals_the_fixed_run_under_its_default_plan_to_float32(rng):
    model = mlp(n_in=6, n_out=4)
    x = rng.normal(size=(100, 6)).astype("float32")
    pred = MCDropout(model, seed=1).predict(x, num_samples="auto", tolerance=0.02)
    fixed = MCDropout(model, num_samples=pred.num_samples, seed=1).predict(x)
    np.testing.assert_allclose(pred.mean, fixed.mean, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pred.votes, fixed.votes)


def test_warns_when_max_samples_is_not_enough(rng):
    model = mlp(n_in=6, n_out=4)
    x = rng.normal(size=(30, 6)).astype("float32")
    with pytest.warns(SampleCountWarning, match=r"max_samples=30 passes .* above the tolerance 1e-06"):
        pred = MCDropout(model, seed=0).predict(x, num_samples="auto", tolerance=1e-6, max_samples=30)
    assert pred.num_samples == 30
    assert issubclass(SampleCountWarning, UserWarning)


def test_a_deterministic_model_stops_at_the_first_check(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    x = rng.normal(size=(5, 3)).astype("float32")
    pred = MCDropout(model, seed=0, allow_deterministic=True).predict(x, num_samples="auto", tolerance=1e-3)
    assert pred.num_samples == 20 and np.all(pred.variance == 0)


def test_datasets_and_the_store(tmp_path, rng):
    model = linear_after_dropout()
    x = rng.normal(size=(40, 6)).astype("float32")
    mc = MCDropout(model, seed=2)
    ref = mc.predict(x, num_samples="auto", tolerance=0.05)
    data = tf.data.Dataset.from_tensor_slices(x).batch(7)
    streamed = mc.predict(data, num_samples="auto", tolerance=0.05)
    assert streamed.num_samples == ref.num_samples
    np.testing.assert_allclose(streamed.mean, ref.mean, atol=1e-6)
    stored = mc.predict(x, num_samples="auto", tolerance=0.05, out=tmp_path / "store")
    assert stored.num_samples == ref.num_samples
    np.testing.assert_array_equal(np.asarray(stored.mean), ref.mean)


def test_progress_bar_shows_the_worst_standard_error(rng, capsys):
    model = mlp(n_in=6, n_out=4)
    x = rng.normal(size=(20, 6)).astype("float32")
    MCDropout(model, seed=0).predict(x, num_samples="auto", tolerance=0.05, verbose=1)
    assert "worst SE" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_samples": 20, "tolerance": 0.1}, ValueError, r"argument `num_samples`: expected 'auto'"),
    ({"num_samples": "auto"}, TypeError, r"argument `tolerance`: expected a number > 0 with num_samples='auto'"),
    ({"num_samples": "auto", "tolerance": 0.0}, ValueError, r"argument `tolerance`: expected a number in \(0.0"),
    ({"num_samples": "auto", "tolerance": 0.1, "max_samples": 1}, ValueError,
     r"argument `max_samples`: expected an integer >= 2"),
])
def test_errors(kwargs, error, match, rng):
    mc = MCDropout(mlp(n_in=6), seed=0)
    with pytest.raises(error, match=match):
        mc.predict(rng.normal(size=(4, 6)).astype("float32"), **kwargs)


def test_a_one_shot_iterator_is_refused(rng):
    mc = MCDropout(mlp(n_in=6), seed=0)
    batches = (rng.normal(size=(4, 6)).astype("float32") for _ in range(2))
    with pytest.raises(TypeError, match=r"argument `x`: expected arrays or a re-iterable dataset"):
        mc.predict(batches, num_samples="auto", tolerance=0.1)


def test_an_existing_store_is_refused_before_any_pass(tmp_path, rng):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "keep.txt").write_text("x")
    mc = MCDropout(mlp(n_in=6), seed=0)
    calls = []
    mc._run = lambda *a, **k: calls.append(1)
    with pytest.raises(FileExistsError, match=r"argument `out`: expected a new or empty folder"):
        mc.predict(rng.normal(size=(4, 6)).astype("float32"), num_samples="auto", tolerance=0.1,
                   out=tmp_path / "store")
    assert calls == []

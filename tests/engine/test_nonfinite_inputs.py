"""Non-finite inputs are refused before the model runs (issue 9, item 1): the error names how many rows
and the first few of their absolute indices, for every input structure; ``allow_nonfinite_inputs`` is the
explicit opt-out for models built to take NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from mcdrop._validation import check_finite_rows, nonfinite_row_indices
from tests.engine.conftest import L, mlp


class ZeroForNaN(L.Layer):
    """A model built to take NaN: missing values become 0 before anything else."""

    def call(self, x):
        return keras.ops.where(keras.ops.isnan(x), keras.ops.zeros_like(x), x)


def nan_tolerant():
    inp = keras.Input((8,))
    h = L.Dropout(0.5)(L.Dense(16, activation="relu")(ZeroForNaN()(inp)))
    return keras.Model(inp, L.Dense(3, activation="softmax")(h))


def two_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = L.Dropout(0.5)(L.Dense(8, activation="relu")(L.Concatenate()([a, b])))
    return keras.Model({"a": a, "b": b}, L.Dense(1)(h))


def with_bad_rows(n=10, rows=(1, 4, 7), value=np.nan, features=8):
    x = np.random.default_rng(0).standard_normal((n, features)).astype("float32")
    x[list(rows), -1] = value
    return x


@pytest.mark.parametrize("method", ["predict", "sample"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_rows_of_an_array_are_named_before_the_model_runs(method, value):
    mc = mcdrop.MCDropout(mlp(), num_samples=3, seed=0, verbose=0)
    with pytest.raises(ValueError, match=r"Invalid value for argument `x`: expected finite values, received 3 of "
                                         r"10 row\(s\) holding NaN or infinity \(rows 1, 4, 7\)\. "
                                         r"Pass allow_nonfinite_inputs=True"):
        getattr(mc, method)(with_bad_rows(value=value))
    assert mc.sampler.traces == 0  # nothing was traced, let alone run


def test_indices_are_absolute_with_row_offset_and_only_the_first_few_are_listed():
    mc = mcdrop.MCDropout(mlp(), num_samples=2, seed=0, verbose=0)
    with pytest.raises(ValueError, match=r"received 1 of 10 row\(s\) holding NaN or infinity \(row 1002\)\."):
        mc.predict(with_bad_rows(rows=(2,)), row_offset=1000)
    with pytest.raises(ValueError, match=r"received 8 of 10 row\(s\) .*\(rows 0, 1, 2, 3, 4, \.\.\.\)\."):
        mc.predict(with_bad_rows(rows=range(8)))


def test_dict_and_list_inputs_are_checked_in_every_array():
    mc = mcdrop.MCDropout(two_inputs(), num_samples=2, seed=0, verbose=0)
    a = np.zeros((6, 3), "float32")
    b = np.zeros((6, 2), "float32")
    b[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"received 1 of 6 row\(s\) holding NaN or infinity \(row 5\)"):
        mc.predict({"a": a, "b": b})
    with pytest.raises(ValueError, match=r"received 1 of 6 row\(s\) holding NaN or infinity \(row 5\)"):
        mc.sample([a, b])
    with pytest.raises(ValueError, match=r"received 1 of 6 row\(s\) holding NaN or infinity \(row 5\)"):
        mc.predict((a, tf.constant(b)))


@pytest.mark.parametrize("make_stream", [
    lambda x: (x[i:i + 4] for i in range(0, len(x), 4)),
    lambda x: tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(3),
], ids=["generator", "dataset"])
def test_streams_are_checked_block_by_block_with_absolute_indices(make_stream):
    mc = mcdrop.MCDropout(mlp(), num_samples=2, seed=0, verbose=0, batch_size=5)
    x = with_bad_rows(n=23, rows=(12, 14))
    with pytest.raises(ValueError, match=r"received 2 row\(s\) holding NaN or infinity \(rows 112, 114\)\. "
                                         r"The stream was not read further\."):
        mc.predict(make_stream(x), row_offset=100)


def test_streams_stop_at_the_first_bad_block():
    mc = mcdrop.MCDropout(mlp(), num_samples=2, seed=0, verbose=0, batch_size=4)
    x = with_bad_rows(n=40, rows=(5,))
    read = []

    def stream():
        for i in range(0, 40, 4):
            read.append(i)
            yield x[i:i + 4]

    with pytest.raises(ValueError, match=r"\(row 5\)"):
        mc.predict(stream())
    assert read == [0, 4]  # the block holding row 5 was the last one read


def test_opt_out_lets_a_model_built_for_nan_run():
    x = with_bad_rows()
    with pytest.raises(ValueError, match=r"3 of 10 row\(s\) holding NaN"):
        mcdrop.MCDropout(nan_tolerant(), num_samples=4, seed=0, verbose=0).predict(x)
    mc = mcdrop.MCDropout(nan_tolerant(), num_samples=4, seed=0, verbose=0, allow_nonfinite_inputs=True)
    pred = mc.predict(x)
    assert np.all(np.isfinite(pred.mean))
    zeroed = np.where(np.isnan(x), 0.0, x).astype("float32")
    np.testing.assert_array_equal(mc.sample(x), mc.sample(zeroed))  # NaN read as 0, as the model says
    streamed = mc.predict(iter([x[:5], x[5:]]))
    np.testing.assert_allclose(streamed.mean, pred.mean, rtol=1e-6)


def test_opt_out_must_be_a_bool():
    with pytest.raises(ValueError, match=r"argument `allow_nonfinite_inputs`: expected one of False, True, "
                                         r"received 'yes'"):
        mcdrop.MCDropout(mlp(), allow_nonfinite_inputs="yes")


def test_integer_inputs_and_finite_floats_pass():
    assert nonfinite_row_indices([np.arange(12).reshape(4, 3), np.ones((4, 2))]).size == 0
    check_finite_rows([np.ones((3, 2), "float16")], "x")  # no error


def test_nonfinite_row_indices_against_a_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 3, 4))
    x[rng.random(x.shape) < 0.01] = np.nan
    expected = [i for i in range(50) if not np.isfinite(x[i]).all()]
    assert nonfinite_row_indices([x]).tolist() == expected
    assert nonfinite_row_indices([np.moveaxis(x, 0, 1)], axis=1).tolist() == expected

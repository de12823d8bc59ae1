"""Issue 10 item 4: ``MCDropout(..., jit_compile=False|True|"auto")`` and the guarantees stated for each setting."""

import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from mcdrop.engine._reduce import PassReducer
from mcdrop.heads import Head
from tests.engine.conftest import mlp

X = np.random.default_rng(1).standard_normal((23, 8)).astype("float32")


def test_jit_compile_takes_false_true_or_auto():
    with pytest.raises(ValueError, match=r"argument `jit_compile`: expected one of .*received 'yes'"):
        mcdrop.MCDropout(mlp(), jit_compile="yes")
    mc = mcdrop.MCDropout(mlp(), jit_compile="auto")
    assert mc.sampler.jit_compile is bool(tf.config.list_logical_devices("GPU"))
    assert mcdrop.MCDropout(mlp()).sampler.jit_compile is False


@pytest.mark.parametrize("jit", [False, True])
def test_seeded_results_are_bit_identical_for_any_batching_of_the_stream(jit):
    mc = mcdrop.MCDropout(mlp(), num_samples=12, seed=7, verbose=0, batch_size=8, passes_per_chunk=5,
                          jit_compile=jit)
    whole = mc.predict(X)
    for batch in (3, 10):
        streamed = mc.predict(tf.data.Dataset.from_tensor_slices(X).batch(batch))
        for name in ("mean", "variance", "expected_entropy", "votes"):
            np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_under_xla_a_rows_passes_do_not_depend_on_the_block_size(mask):
    mc = mcdrop.MCDropout(mlp(), num_samples=6, seed=3, verbose=0, mask=mask, jit_compile=True)
    one = mc.sample(X, batch_size=23)
    np.testing.assert_array_equal(mc.sample(X, batch_size=5), one)
    parts = [mc.sample(X[:10], batch_size=10), mc.sample(X[10:], batch_size=10, row_offset=10)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), one)


def test_the_reductions_under_xla_agree_with_the_plain_ones_to_float_rounding():
    raw = tf.constant(np.random.default_rng(2).standard_normal((1, 9, 11, 4)).astype("float32"))
    for head in (Head("classification", "logits"), Head("regression", None, "log_variance")):
        plain, xla = PassReducer()(head, raw, 7), PassReducer(jit_compile=True)(head, raw, 7)
        assert plain.keys() == xla.keys()
        for name in plain:
            np.testing.assert_allclose(xla[name], plain[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_xla_and_plain_runs_draw_differently_but_agree_within_monte_carlo_error():
    model = mlp()
    plain = mcdrop.MCDropout(model, num_samples=400, seed=0, verbose=0).predict(X)
    xla = mcdrop.MCDropout(model, num_samples=400, seed=0, verbose=0, jit_compile=True).predict(X)
    se = np.sqrt(plain.standard_error ** 2 + xla.standard_error ** 2)
    assert np.all(np.abs(plain.mean - xla.mean) <= 5 * se + 1e-9)


def test_an_ensemble_passes_jit_compile_to_its_members():
    from mcdrop import Ensemble

    ensemble = Ensemble([mlp(), mlp()], num_samples=3, seed=0, jit_compile=True)
    assert all(member.sampler.jit_compile is True for member in ensemble.members)
    assert Ensemble([mlp()], num_samples=3).members[0].sampler.jit_compile is False

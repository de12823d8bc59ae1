"""Behaviour 5: consistent masks, per-example masks, and seeds.

The identity-dropout model (x = ones → Dropout → output) makes every sample *be* its mask, in exact
arithmetic, so mask equalities are checked bit for bit. For a general network the same masks pass
through TensorFlow's kernels, which choose their vectorisation by shape and position: there the
claims are bit-identical for the same block layout, and equal to float32 rounding otherwise.
"""

import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from tests.engine.conftest import L, identity_dropout, mlp

ONES = np.ones((37, 16), "float32")


def test_consistent_masks_are_shared_by_every_input():
    s = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=0, verbose=0).sample(ONES)
    assert np.all(s == s[:, :1])  # pass t: one mask for all 37 inputs
    assert not np.all(s == s[:1])  # but passes differ


def test_per_example_masks_differ_across_inputs():
    s = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=0, mask="per_example", verbose=0).sample(ONES)
    assert not np.all(s == s[:, :1])
    assert abs(np.mean(s == 0) - 0.5) < 0.03  # still Bernoulli(0.5)


@pytest.mark.parametrize("batch_size", [1, 5, 37, 64])
@pytest.mark.parametrize("passes_per_chunk", [1, 7, 20])
def test_masks_bit_identical_whatever_batch_and_chunk_size(batch_size, passes_per_chunk):
    ref = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=11, verbose=0).sample(ONES)
    s = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=11, batch_size=batch_size,
                         passes_per_chunk=passes_per_chunk, verbose=0).sample(ONES)
    np.testing.assert_array_equal(s, ref)


def test_masks_key_on_absolute_pass_index():
    """More passes extend the same draws: the first 20 of 50 are the 20 of a 20-pass run."""
    short = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=5, verbose=0).sample(ONES)
    long = mcdrop.MCDropout(identity_dropout(), num_samples=50, seed=5, verbose=0, passes_per_chunk=9).sample(ONES)
    np.testing.assert_array_equal(long[:20], short)


def test_per_example_masks_key_on_absolute_pass_index():
    short = mcdrop.MCDropout(identity_dropout(), num_samples=7, seed=5, mask="per_example", verbose=0).sample(ONES)
    long = mcdrop.MCDropout(identity_dropout(), num_samples=30, seed=5, mask="per_example", verbose=0,
                            passes_per_chunk=4).sample(ONES)
    np.testing.assert_array_equal(long[:7], short)


def test_seed_reproducible_across_calls_and_objects_without_seed_calls_differ():
    model = mlp()
    x = np.random.default_rng(0).standard_normal((30, 8)).astype("float32")
    a = mcdrop.MCDropout(model, num_samples=10, seed=3, verbose=0)
    first = a.sample(x)
    np.testing.assert_array_equal(a.sample(x), first)  # number of calls
    np.testing.assert_array_equal(mcdrop.MCDropout(model, num_samples=10, seed=3, verbose=0).sample(x), first)
    assert not np.array_equal(mcdrop.MCDropout(model, num_samples=10, seed=4, verbose=0).sample(x), first)
    unseeded = mcdrop.MCDropout(model, num_samples=10, verbose=0)
    p1, p2 = unseeded.predict(x), unseeded.predict(x)
    assert not np.array_equal(p1.mean, p2.mean)
    # the seed an unseeded call drew is recorded, and reproduces it
    replay = mcdrop.MCDropout(model, num_samples=10, seed=p1.seed, verbose=0).predict(x)
    np.testing.assert_array_equal(replay.mean, p1.mean)


def test_network_outputs_do_not_depend_on_how_rows_arrive():
    """Dataset batching, generator chunks and number of calls: bit-identical at a fixed block size."""
    model = mlp()
    x = np.random.default_rng(1).standard_normal((50, 8)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=12, seed=2, verbose=0, batch_size=16)
    ref = mc.sample(x)
    for batch in (1, 7, 16, 50):
        np.testing.assert_array_equal(mc.sample(tf.data.Dataset.from_tensor_slices(x).batch(batch)), ref)
    # the first blocks' rows, predicted alone, are the same bits
    np.testing.assert_array_equal(mc.sample(x[:32]), ref[:, :32])


def test_network_outputs_under_reordering_and_other_block_sizes_agree_to_float_rounding():
    model = mlp()
    x = np.random.default_rng(2).standard_normal((50, 8)).astype("float32")
    ref = mcdrop.MCDropout(model, num_samples=12, seed=2, verbose=0).sample(x)
    perm = np.random.default_rng(3).permutation(50)
    shuffled = mcdrop.MCDropout(model, num_samples=12, seed=2, verbose=0).sample(x[perm])
    np.testing.assert_allclose(shuffled, ref[:, perm], rtol=1e-5, atol=1e-6)
    for batch_size, passes in ((3, 5), (50, 12), (17, 1)):
        other = mcdrop.MCDropout(model, num_samples=12, seed=2, verbose=0, batch_size=batch_size,
                                 passes_per_chunk=passes).sample(x)
        np.testing.assert_allclose(other, ref, rtol=1e-5, atol=1e-6)


def test_consistent_masks_make_each_pass_one_network():
    """Two identical inputs get identical outputs in every pass (one draw of the network), whereas
    per-example masks treat them as different draws."""
    model = mlp()
    row = np.random.default_rng(4).standard_normal((1, 8)).astype("float32")
    x = np.repeat(row, 2, axis=0)
    consistent = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0).sample(x)
    np.testing.assert_array_equal(consistent[:, 0], consistent[:, 1])
    per_example = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0, mask="per_example").sample(x)
    assert not np.allclose(per_example[:, 0], per_example[:, 1])
    assert mcdrop.MCDropout(model, num_samples=2, seed=0, mask="per_example", verbose=0).predict(x).mask == \
        "per_example"


def test_row_offset_reproduces_per_example_masks_of_a_pool_scored_in_parts():
    mc = mcdrop.MCDropout(identity_dropout(), num_samples=6, seed=9, mask="per_example", verbose=0, batch_size=8)
    whole = mc.sample(ONES)
    rows, _ = mc.plan(37)
    assert rows == 8
    second = mc.sample(ONES[16:], row_offset=16)
    np.testing.assert_array_equal(second, whole[:, 16:])
    assert not np.array_equal(mc.sample(ONES[16:]), whole[:, 16:])  # without the offset: other draws
    with pytest.raises(ValueError, match=r"argument `row_offset`: expected an integer >= 0, received -1"):
        mc.predict(ONES, row_offset=-1)


@pytest.mark.parametrize("batch_size", [1, 5, 36, 64])
@pytest.mark.parametrize("passes_per_chunk", [1, 7, 20])
def test_per_example_masks_bit_identical_whatever_batch_and_chunk_size(batch_size, passes_per_chunk):
    """A row's per-example noise is keyed by its absolute index, not by its place in a block."""
    ref = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=11, mask="per_example", batch_size=37,
                           verbose=0).sample(ONES)
    s = mcdrop.MCDropout(identity_dropout(), num_samples=20, seed=11, mask="per_example", batch_size=batch_size,
                         passes_per_chunk=passes_per_chunk, verbose=0).sample(ONES)
    np.testing.assert_array_equal(s, ref)


@pytest.mark.parametrize("features, layer", [
    (16, None), (5, None), (3, lambda: L.GaussianDropout(0.3)), (7, lambda: L.AlphaDropout(0.2))],
    ids=["dropout-16", "dropout-5", "gaussian-3", "alpha-7"])
def test_per_example_noise_follows_the_absolute_row_whatever_the_stream(features, layer):
    """The same rows streamed in other batch sizes, or scored in parts with row_offset, get the same noise
    (feature counts that are not a multiple of 4 included: each row's draw is padded)."""
    model = identity_dropout(features=features, layer=layer and layer())
    ones = np.ones((23, features), "float32")
    mc = mcdrop.MCDropout(model, num_samples=6, seed=3, mask="per_example", verbose=0, batch_size=8)
    ref = mc.sample(ones)
    for size in (1, 3, 10):
        streamed = mc.sample(tf.data.Dataset.from_tensor_slices(ones).batch(size))
        np.testing.assert_array_equal(streamed, ref)
    other = mcdrop.MCDropout(model, num_samples=6, seed=3, mask="per_example", verbose=0, batch_size=5)
    np.testing.assert_array_equal(other.sample(ones[9:], row_offset=9), ref[:, 9:])
    assert not np.array_equal(ref[:, 0], ref[:, 1])  # rows still differ


def test_per_example_masks_are_independent_bernoulli_draws():
    """Rows and features are independent Bernoulli(1 - rate) draws (checked against their exact moments)."""
    s = mcdrop.MCDropout(identity_dropout(rate=0.3, features=13), num_samples=40, seed=2, mask="per_example",
                         verbose=0).sample(np.ones((300, 13), "float32"))
    kept = s != 0
    n = kept.size
    assert abs(kept.mean() - 0.7) < 4 * np.sqrt(0.21 / n)
    # neighbouring rows (adjacent counters) and neighbouring features are uncorrelated
    a, b = kept[:, :-1].ravel().astype(float), kept[:, 1:].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(a.size)
    a, b = kept[..., :-1].ravel().astype(float), kept[..., 1:].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(a.size)

"""The noise streams, recomputed independently: which Philox counters each pass and row reads.

The engine draws a chunk's consistent masks in one counter-based draw and falls back to pass-by-pass
draws for other index vectors; per-example noise is one draw per pass. Here every value is recomputed
the plain way — one ``tf.raw_ops`` draw per pass (and row), at the counters the layout in
``mcdrop/engine/noise.py`` promises — and the masks are compared bit for bit: through the engine (the
identity-dropout model makes each sample its mask), and through ``PassContext`` directly for pass
index vectors the engine never sends, for dtypes and under XLA.
"""

import math

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import mcdrop
from mcdrop.engine.noise import PassContext
from tests.engine.conftest import L, identity_dropout

ALPHA_P = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
SEED_PAIR = np.array([17, 99], np.int64)


# -- the reference: one plain draw per pass (and row) -------------------------------------------------
def _stream(seed_pair, site):
    """Key and high counter word of call site ``site``: the seed folded with the site index."""
    site_key = tf.random.experimental.stateless_fold_in(tf.constant(seed_pair, tf.int64), site)
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=site_key)
    return key, np.uint64(counter.numpy()[1])


def _draw(key, low, high, count, normal):
    op = tf.raw_ops.StatelessRandomNormalV2 if normal else tf.raw_ops.StatelessRandomUniformFullIntV2
    return op(shape=[count], key=key, counter=tf.constant([low, high], tf.uint64), alg=1,
              dtype=tf.float32 if normal else tf.uint32).numpy()


def reference(seed_pair, passes, rows, features, mask, *, normal=False, site=0):
    """(len(passes), len(rows), features) raw values: pass t of a consistent mask reads the counters
    [t·k, (t+1)·k) of the site's stream (k = ceil(features / 4)); per-example row R of pass t reads
    [R·k, (R+1)·k) with t xor-ed into the high counter word. uint32 words, or float32 normals."""
    key, high = _stream(seed_pair, site)
    k = -(-features // 4)
    out = np.empty((len(passes), len(rows), features), np.float32 if normal else np.uint32)
    for i, t in enumerate(passes):
        if mask == "consistent":
            out[i, :] = _draw(key, t * k, high, 4 * k, normal)[:features]
        else:
            for j, r in enumerate(rows):
                out[i, j] = _draw(key, r * k, high ^ np.uint64(t), 4 * k, normal)[:features]
    return out


def keep_of(words, rate):
    return words >= np.uint32(math.ceil(rate * 2**32))


def _pair(mc):
    return mc._seed_pair()[1]


# -- through the engine --------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_dropout_masks_are_the_words_at_their_counters(mask):
    """Features not a multiple of 4, a padded last pass chunk, blocks of 4 rows and a row offset."""
    rate, features, n = 0.3, 13, 11
    mc = mcdrop.MCDropout(identity_dropout(rate=rate, features=features), num_samples=9, seed=7, mask=mask,
                          passes_per_chunk=4, batch_size=4, verbose=0)
    s = mc.sample(np.ones((n, features), "float32"), row_offset=5)
    words = reference(_pair(mc), range(9), range(5, 5 + n), features, mask)
    expected = np.where(keep_of(words, rate), np.float32(1 / (1 - rate)), np.float32(0))
    np.testing.assert_array_equal(s, np.broadcast_to(expected, s.shape))


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_alpha_dropout_is_the_affine_map_of_the_words(mask):
    rate, features = 0.2, 7
    mc = mcdrop.MCDropout(identity_dropout(features=features, layer=L.AlphaDropout(rate)), num_samples=6, seed=2,
                          mask=mask, verbose=0)
    s = mc.sample(np.ones((5, features), "float32"))
    a = ((1 - rate) * (1 + rate * ALPHA_P**2)) ** -0.5
    b = -a * ALPHA_P * rate
    keep = keep_of(reference(_pair(mc), range(6), range(5), features, mask), rate)
    expected = np.where(keep, np.float32(a) + np.float32(b), np.float32(a * ALPHA_P + b))
    np.testing.assert_array_equal(s, np.broadcast_to(expected, s.shape))


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_gaussian_noise_is_the_normals_at_their_counters(mask):
    rate, features = 0.3, 5
    mc = mcdrop.MCDropout(identity_dropout(features=features, layer=L.GaussianDropout(rate)), num_samples=7, seed=4,
                          mask=mask, passes_per_chunk=3, batch_size=3, verbose=0)
    s = mc.sample(np.ones((4, features), "float32"))
    z = reference(_pair(mc), range(7), range(4), features, mask, normal=True)
    expected = 1 + np.float32(math.sqrt(rate / (1 - rate))) * z
    np.testing.assert_allclose(s, np.broadcast_to(expected, s.shape), rtol=1e-6, atol=0)


def test_spatial_dropout_draws_one_word_per_feature_map():
    mc = mcdrop.MCDropout(keras.Sequential([keras.Input((3, 3, 5)), L.SpatialDropout2D(0.5)]), num_samples=6,
                          seed=1, verbose=0)
    s = mc.sample(np.ones((2, 3, 3, 5), "float32"))
    keep = keep_of(reference(_pair(mc), range(6), [0], 5, "consistent"), 0.5)  # (T, 1, channels)
    np.testing.assert_array_equal(s, np.broadcast_to(np.where(keep, 2.0, 0.0)[:, :, None, None], s.shape))


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_masks_do_not_depend_on_the_dtype(dtype):
    """The same Bernoulli mask in float16, float32 and float64 (the words are compared, not floats)."""
    def model(d):
        inp = keras.Input((10,), dtype=d)
        return keras.Model(inp, L.Dropout(0.4, dtype=d)(inp))

    ref = mcdrop.MCDropout(model("float32"), num_samples=8, seed=3, verbose=0).sample(np.ones((3, 10)))
    other = mcdrop.MCDropout(model(dtype), num_samples=8, seed=3, verbose=0).sample(np.ones((3, 10)))
    assert other.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(other != 0, ref != 0)
    np.testing.assert_array_equal(other[other != 0], np.asarray(1 / 0.6, dtype))


# -- PassContext directly: index vectors, edge rates, statistics ------------------------------------------
def _noise(passes, *, rows=3, features=6, mask="consistent", rate=0.5, dtype=tf.float32, row_offset=0,
           jit=False):
    """What one compiled step (``jit=None``: the same step run eagerly) applies to ones for these pass indices, per family: (Tc, rows, features)
    arrays (sites in this order: dropout, alpha, Gaussian noise, RNN mask, spatial-style dropout with
    the mask shared along the features)."""
    def step(passes, row_offset):
        ctx = PassContext(passes, tf.constant(rows), tf.constant(SEED_PAIR), row_offset, mask)
        x = tf.ones([tf.shape(passes)[0] * rows, features], dtype)
        out = {"dropout": ctx.dropout(x, rate), "alpha": ctx.alpha_dropout(x, rate),
               "gaussian": ctx.gaussian_noise(x - 1, 1.0), "rnn": ctx.rnn_mask(x, rate, None),
               "shared": ctx.dropout(x, rate, tf.constant([1]))}
        return {k: ctx.unflatten(v) for k, v in out.items()}

    fn = step if jit is None else tf.function(step, jit_compile=jit, autograph=False)
    return {k: v.numpy() for k, v in fn(tf.constant(passes, tf.int32), tf.constant(row_offset, tf.int64)).items()}


def _masks(passes, family="dropout", **kwargs):
    return _noise(passes, **kwargs)[family]


@pytest.mark.parametrize("passes", [
    [3, 4, 5, 6], [3, 4, 5, 5, 5], [2, 2, 2], [6, 5, 4, 3], [0, 100, 7], [9], [4, 1, 2, 3]],
    ids=["contiguous", "padded", "repeated", "reversed", "scattered", "one", "wrapped"])
def test_any_pass_indices_give_each_pass_its_own_mask(passes):
    """A contiguous chunk is drawn at once, other index vectors pass by pass: the same bits."""
    got = _masks(passes)
    keep = keep_of(reference(SEED_PAIR, passes, range(3), 6, "consistent"), 0.5)
    np.testing.assert_array_equal(got, np.where(keep, 2.0, 0.0).astype("float32"))


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_eager_step_draws_what_the_compiled_step_draws(mask):
    for passes in ([5, 6, 7, 7], [7, 2, 5]):
        eager, compiled = _noise(passes, mask=mask, jit=None), _noise(passes, mask=mask)
        for family in compiled:
            np.testing.assert_array_equal(eager[family], compiled[family], err_msg=f"{family}, passes {passes}")


def test_edge_rates_keep_all_or_nothing():
    np.testing.assert_array_equal(_masks([0, 1], rate=0.0), np.ones((2, 3, 6)))
    assert np.all(_masks([0, 1], rate=1 - 1e-12) == 0)  # ceil(rate · 2^32) = 2^32: no word reaches it
    kept = _masks(list(range(400)), features=50, rate=0.3) != 0
    assert abs(kept[:, 0].mean() - 0.7) < 4 * math.sqrt(0.21 / kept[:, 0].size)


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_gaussian_noise_is_standard_normal(mask):
    z = _masks(list(range(40)), rows=25, features=10, mask=mask, family="gaussian")
    sample = (z[:, 0] if mask == "consistent" else z).ravel()
    assert scipy.stats.kstest(sample, "norm").pvalue > 1e-3


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_rnn_and_shared_axis_masks_are_scaled_masks_broadcast_to_their_shape(mask):
    noise = _noise([0, 1, 2], rows=4, features=7, mask=mask, rate=0.25)
    keep = keep_of(reference(SEED_PAIR, range(3), range(4), 7, mask, site=3), 0.25)  # the 4th site
    got = noise["rnn"]
    np.testing.assert_array_equal(got, np.broadcast_to(np.where(keep, np.float32(1 / 0.75), 0), got.shape))
    keep = keep_of(reference(SEED_PAIR, range(3), range(4), 1, mask, site=4), 0.25)  # one word per row
    got = noise["shared"]
    np.testing.assert_array_equal(got, np.broadcast_to(np.where(keep, np.float32(1 / 0.75), 0), got.shape))


# -- XLA -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xla():
    try:
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(1.0))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError) as error:
        pytest.skip(f"XLA is not available in this TensorFlow build: {error}")


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_jit_compiled_step_draws_the_same_masks(xla, mask):
    """Dropout, alpha, RNN and shared-axis masks: the same bits with ``jit_compile=True``, for a padded
    chunk (one draw) and scattered pass indices (pass by pass)."""
    for passes in ([5, 6, 7, 7], [7, 2, 5]):
        kwargs = dict(rows=3, features=9, mask=mask, row_offset=4)
        compiled, plain = _noise(passes, jit=True, **kwargs), _noise(passes, **kwargs)
        for family in ("dropout", "alpha", "rnn", "shared"):
            np.testing.assert_array_equal(compiled[family], plain[family], err_msg=f"{family}, passes {passes}")
        assert not np.array_equal(compiled["gaussian"], plain["gaussian"])  # XLA's normals: another stream


def test_gaussian_noise_under_jit_is_keyed_by_the_absolute_row(xla):
    """XLA computes normals its own way (another stream), but still per absolute pass and row."""
    whole = _masks([0, 1, 2], rows=6, features=5, mask="per_example", family="gaussian", jit=True)
    part = _masks([1, 2], rows=3, features=5, mask="per_example", family="gaussian", jit=True, row_offset=3)
    np.testing.assert_array_equal(part, whole[1:, 3:])
    assert scipy.stats.kstest(whole.ravel(), "norm").pvalue > 1e-3


# -- a tiled input is broadcast, not read back -------------------------------------------------------------
@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_noise_on_a_tiled_input_equals_noise_on_a_copy_of_it(mask):
    """The first noise layer after a deterministic trunk gets ``ctx.tile``'s output and broadcasts the
    untiled rows against the noise: the same bits as on any other (Tc * n, ...) tensor."""
    rows = np.random.default_rng(0).standard_normal((5, 3, 4)).astype("float32")

    @tf.function(autograph=False)
    def step(copy):
        ctx = PassContext(tf.range(2, 8), tf.constant(5), tf.constant(SEED_PAIR), tf.constant(0, tf.int64), mask)
        tiled = ctx.tile(tf.constant(rows))
        x = tf.identity(tiled) if copy else tiled
        assert (ctx._passes_of(x).shape[0] == 1) != copy  # the broadcast path is taken for the tile only
        return [ctx.dropout(x, 0.3), ctx.dropout(x, 0.3, tf.constant([1, 4])), ctx.alpha_dropout(x, 0.2),
                ctx.gaussian_dropout(x, 0.4), ctx.gaussian_noise(x, 0.5)]

    for broadcast, copied in zip(step(False), step(True)):
        assert broadcast.shape == (30, 3, 4)
        np.testing.assert_array_equal(broadcast.numpy(), copied.numpy())

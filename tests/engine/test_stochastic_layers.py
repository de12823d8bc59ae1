"""Behaviour 1: only the stochastic regularisers run stochastically, and each draws the right noise."""

import re

import keras
import numpy as np
import pytest

import mcdrop
from tests.engine.conftest import L, identity_dropout


def _spread(samples):
    return float(np.std(samples, axis=0).max())


def test_dropout_mask_is_bernoulli_with_inverted_scaling():
    model = identity_dropout(rate=0.3, features=64)
    s = mcdrop.MCDropout(model, num_samples=400, seed=0, verbose=0).sample(np.ones((2, 64), "float32"))
    values = np.unique(s)
    np.testing.assert_array_equal(values, np.array([0.0, 1 / 0.7], dtype=np.float32))
    dropped = float(np.mean(s == 0))
    # 400 x 64 Bernoulli(0.3) draws per row: sd of the fraction ~ 0.0029; 5 sd
    assert abs(dropped - 0.3) < 0.015


def test_gaussian_dropout_variance():
    rate = 0.2
    model = identity_dropout(features=64, layer=L.GaussianDropout(rate))
    s = mcdrop.MCDropout(model, num_samples=500, seed=0, verbose=0).sample(np.ones((1, 64), "float32"))
    assert abs(s.mean() - 1.0) < 0.01
    assert abs(s.var() - rate / (1 - rate)) < 0.01


def test_alpha_dropout_matches_keras_affine_map():
    rate = 0.25
    model = identity_dropout(features=64, layer=L.AlphaDropout(rate))
    s = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0).sample(np.ones((1, 64), "float32"))
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    np.testing.assert_allclose(np.unique(s), np.sort([a * alpha_p + b, a + b]), rtol=1e-6)
    assert abs(np.mean(np.isclose(s, a * alpha_p + b)) - rate) < 0.02


def test_spatial_dropout_drops_whole_feature_maps():
    model = keras.Sequential([keras.Input((5, 5, 8)), L.SpatialDropout2D(0.5)])
    s = mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0).sample(np.ones((2, 5, 5, 8), "float32"))
    # within a pass and a channel, every spatial position shares the draw
    assert np.all(s.min(axis=(2, 3)) == s.max(axis=(2, 3)))
    assert 0 < np.mean(s == 0) < 1


@pytest.mark.parametrize("cls", [L.SpatialDropout1D, L.SpatialDropout3D])
def test_spatial_dropout_1d_3d(cls):
    shape = (6, 4) if cls is L.SpatialDropout1D else (3, 3, 3, 4)
    model = keras.Sequential([keras.Input(shape), cls(0.5)])
    s = mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0).sample(np.ones((1, *shape), "float32"))
    spatial_axes = tuple(range(2, 2 + len(shape) - 1))
    assert np.all(s.min(axis=spatial_axes) == s.max(axis=spatial_axes))
    assert 0 < np.mean(s == 0) < 1


def test_gaussian_noise_only_when_opted_in():
    model = keras.Sequential([keras.Input((4,)), L.GaussianNoise(0.5), L.Dense(2)])
    x = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="allow_deterministic"):
        mcdrop.MCDropout(model, num_samples=5, verbose=0)
    off = mcdrop.MCDropout(model, num_samples=5, verbose=0, allow_deterministic=True).sample(x)
    assert np.all(off == off[:1])
    on = mcdrop.MCDropout(model, num_samples=50, seed=0, verbose=0, gaussian_noise=True).sample(
        np.zeros((3, 4), "float32"))
    w = model.layers[-1].kernel.numpy()
    # output = noise @ W: per-unit sd = 0.5 * ||W[:, j]||
    np.testing.assert_allclose(on.std(axis=0).mean(axis=0), 0.5 * np.linalg.norm(w, axis=0), rtol=0.3)


def test_batch_normalization_keeps_moving_statistics():
    """The test the naive `model(x, training=True)` loop fails: BN must use its moving statistics."""
    bn = L.BatchNormalization(epsilon=1e-3)
    model = keras.Sequential([keras.Input((4,)), bn, L.Dropout(0.5)])
    bn.moving_mean.assign(np.full(4, 5.0, "float32"))
    bn.moving_variance.assign(np.full(4, 4.0, "float32"))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")  # batch mean ~0, var ~1
    s = mcdrop.MCDropout(model, num_samples=30, seed=0, verbose=0).sample(x)
    inference = (x - 5.0) / np.sqrt(4.0 + 1e-3)  # gamma = 1, beta = 0
    kept = s != 0
    scaled = np.broadcast_to(2.0 * inference, s.shape)
    np.testing.assert_allclose(s[kept], scaled[kept], rtol=1e-5, atol=1e-5)
    assert 0.3 < kept.mean() < 0.7
    # batch statistics would centre the outputs near zero; moving statistics put them near -2.5
    assert s[kept].mean() < -4.0


def test_layer_normalization_and_other_layers_are_deterministic():
    inp = keras.Input((6,))
    features = L.LayerNormalization(name="ln")(L.Dense(8)(inp))
    noisy = L.Dense(2, name="noisy")(L.Dropout(0.4)(features))
    model = keras.Model(inp, [features, noisy])
    x = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0)
    clean, stochastic = mc.sample(x)
    expected = keras.Model(inp, features).predict(x, verbose=0)
    for t in range(6):  # the branch no dropout feeds is the same in every pass, and is Keras' inference output
        np.testing.assert_allclose(clean[t], expected, rtol=1e-5, atol=1e-6)
    assert np.all(clean == clean[:1])
    assert _spread(stochastic) > 1e-4
    assert [layer.name for layer in mc.view.leaves] == [model.layers[3].name]


@pytest.mark.parametrize("rnn", [L.SimpleRNN, L.GRU, L.LSTM])
@pytest.mark.parametrize("kind", ["dropout", "recurrent_dropout"])
def test_rnn_dropout_and_recurrent_dropout_are_stochastic(rnn, kind):
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    layer = rnn(6, **{kind: 0.5})
    model = keras.Sequential([keras.Input((5, 3)), layer, L.Dense(1)])
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert _spread(mc.sample(x)) > 1e-4
    # the cell object holds no mask of ours after sampling
    assert getattr(layer.cell, "_dropout_mask", None) is None
    assert getattr(layer.cell, "_recurrent_dropout_mask", None) is None


def test_rnn_with_both_dropouts_uses_one_mask_per_gate_lstm():
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    model = keras.Sequential([keras.Input((4, 2)), L.LSTM(5, dropout=0.3, recurrent_dropout=0.3), L.Dense(1)])
    s = mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0).sample(x)
    assert _spread(s) > 1e-4


def test_rnn_input_dropout_is_fixed_over_time_steps():
    """Variational RNN dropout: one input mask per sequence, not per time step."""
    units = 4
    cell_rnn = L.SimpleRNN(units, dropout=0.5, return_sequences=True, activation="linear", use_bias=False)
    model = keras.Sequential([keras.Input((6, 8)), cell_rnn])
    cell_rnn.cell.kernel.assign(np.eye(8, units, dtype="float32"))
    cell_rnn.cell.recurrent_kernel.assign(np.zeros((units, units), "float32"))
    x = np.ones((1, 6, 8), "float32")
    s = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0).sample(x)  # (T, 1, 6, units)
    # with identity input weights and no recurrence, h_t = mask * x_t: equal across time steps
    assert np.all(s.min(axis=2) == s.max(axis=2))
    assert 0 < np.mean(s == 0) < 1


def test_bidirectional_rnn_dropout():
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    model = keras.Sequential([keras.Input((5, 3)), L.Bidirectional(L.GRU(4, dropout=0.4, recurrent_dropout=0.4)),
                              L.Dense(1)])
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert len(mc.view.rnns) == 2  # forward and backward copies
    assert _spread(mc.sample(x)) > 1e-4


def test_multi_head_attention_dropout():
    inp = keras.Input((5, 4))
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5)
    model = keras.Model(inp, att(inp, inp))
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0)
    assert [type(layer).__name__ for layer in mc.view.leaves] == ["Dropout"]
    assert _spread(mc.sample(x)) > 1e-4


@pytest.mark.parametrize("cls", [L.Attention, L.AdditiveAttention])
def test_attention_and_additive_attention_dropout_are_driven(cls):
    """Before: only warned about, and run in inference mode. Dropout acts on the attention weights, and the
    output is linear in them, so the mean over passes is Keras' inference output (inverted dropout is
    unbiased): an independent check that the weights, not something else, get the noise."""
    q, v = keras.Input((3, 4)), keras.Input((5, 4))
    att = cls(dropout=0.5)
    model = keras.Model([q, v], att([q, v]))
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((2, 3, 4)).astype("float32"), rng.standard_normal((2, 5, 4)).astype("float32")]
    mc = mcdrop.MCDropout(model, num_samples=4000, seed=0, verbose=0, task="regression")
    assert list(mc.view.attentions) == [att]
    s = mc.sample(x)
    assert _spread(s) > 0.1
    expected = model.predict(x, verbose=0)
    # per-unit sd of the mean of 4000 passes is below 0.02 here (outputs of order 1); 0.06 is > 3 sd
    np.testing.assert_allclose(s.mean(axis=0), expected, atol=0.06)
    # masks are shared across the inputs of a pass (consistent): the same x twice gives the same passes
    twice = mc.sample([np.concatenate([a[:1], a[:1]]) for a in x])
    np.testing.assert_array_equal(twice[:, 0], twice[:, 1])


class DropoutOnlyInTraining(keras.Model):
    """The pattern item 7 of issue 9 names: a Dropout that only runs under `if training:`."""

    def __init__(self):
        super().__init__()
        self.d1, self.drop, self.d2 = L.Dense(8), L.Dropout(0.5), L.Dense(2)

    def call(self, x, training=False):
        h = self.d1(x)
        if training:
            h = self.drop(h)
        return self.d2(h)


def test_identical_passes_despite_stochastic_layers_warn_naming_the_output():
    model = DropoutOnlyInTraining()
    x = np.ones((3, 4), "float32")
    model(x)
    with pytest.warns(UserWarning) as caught:
        pred = mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0, task="regression").predict(x)
    assert np.all(pred.epistemic_variance == 0)
    messages = [str(w.message) for w in caught]
    assert any(re.search(rf"never ran in a pass.*Dropout\({model.drop.name}\).*if training:", m) for m in messages)
    assert any(re.search(r"Every pass gave identical values for the model's output .*never ran", m) for m in messages)
    with pytest.warns(UserWarning, match=r"Every pass gave identical values"):
        mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0).sample(x)


class OneDropoutSkipped(DropoutOnlyInTraining):
    def __init__(self):
        super().__init__()
        self.always = L.Dropout(0.5)

    def call(self, x, training=False):
        return self.always(super().call(x, training=training))


def test_a_skipped_stochastic_layer_is_named_even_when_passes_vary():
    model = OneDropoutSkipped()
    x = np.ones((3, 4), "float32")
    model(x)
    with pytest.warns(UserWarning, match=rf"never ran in a pass.*: Dropout\({model.drop.name}\)\. "):
        s = mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0).sample(x)
    assert np.std(s, axis=0).max() > 0


def test_identical_passes_name_the_output_of_a_multi_output_model():
    inp = keras.Input((4,))
    model = keras.Model(inp, {"noisy": L.Dense(2)(L.Dropout(0.5)(inp)), "clean": L.Dense(2)(inp)})
    with pytest.warns(UserWarning, match=r"Every pass gave identical values for 'clean' .*does not change it"):
        mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0).predict(np.ones((2, 4), "float32"))
    inp = keras.Input((4,))
    model = keras.Model(inp, [L.Dense(2, name="noisy")(L.Dropout(0.5)(inp)), L.Dense(2, name="clean")(inp)])
    with pytest.warns(UserWarning, match=r"Every pass gave identical values for 'clean' "):
        mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0).sample(np.ones((2, 4), "float32"))


class StochasticDepth(L.Layer):
    """keras-io style stochastic depth: drop the whole residual branch of a row with probability `rate`."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x, training=None):
        if training:
            keep = 1 - self.rate
            shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            random_tensor = keras.ops.floor(keep + keras.random.uniform(shape, 0, 1, seed=self.seed_generator))
            return (x / keep) * random_tensor
        return x


class PassesTrainingOn(L.Layer):
    """A block that takes `training` only to hand it to its Dropout: not a layer to warn about."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense, self.drop = L.Dense(4), L.Dropout(0.2)

    def call(self, x, training=None):
        return self.drop(self.dense(x), training=training)


def _residual(depth_layer, features=6):
    inp = keras.Input((features,))
    h = L.Dense(features)(inp)
    out = L.Add()([inp, depth_layer(h)])
    return keras.Model(inp, L.Dense(1)(L.Dropout(0.1)(out)) if depth_layer is not None else out)


def test_layers_that_take_training_and_are_not_driven_are_named():
    model = _residual(StochasticDepth(0.5, name="depth"))
    with pytest.warns(UserWarning, match=r"mcdrop does not drive these layers, whose `call` takes `training`.*"
                                         r"StochasticDepth\(depth\).*stochastic_layers"):
        mcdrop.MCDropout(model, num_samples=2, verbose=0)
    # Keras' own layers (BatchNormalization, RandomFlip, ...) and blocks that pass `training` on are not named
    inp = keras.Input((4,))
    quiet = keras.Model(inp, L.Dense(1)(PassesTrainingOn()(L.BatchNormalization()(L.GaussianNoise(0.1)(inp)))))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mcdrop.MCDropout(quiet, num_samples=2, verbose=0)


def test_opted_in_custom_layer_matches_keras_training_mode_samples():
    """Before: run in inference mode (variance ratio 0.78 against Keras' own training-mode samples in the
    issue). Opted in, its spread matches Keras' training-mode samples: compared per row through a
    two-sample test on the outputs (independent draws on each side)."""
    from scipy import stats

    depth = StochasticDepth(0.3, name="depth")
    inp = keras.Input((6,))
    h = L.Dense(6)(inp)
    model = keras.Model(inp, L.Dense(2)(L.Add()([inp, depth(h)])))
    x = np.random.default_rng(0).standard_normal((3, 6)).astype("float32")
    T = 1500
    for mask in ("consistent", "per_example"):
        mc = mcdrop.MCDropout(model, num_samples=T, seed=0, verbose=0, task="regression", mask=mask,
                              stochastic_layers=[StochasticDepth])
        assert list(mc.view.custom) == [depth]
        ours = mc.sample(x)  # (T, 3, 2)
        theirs = model(np.repeat(x, T, axis=0), training=True).numpy().reshape(3, T, 2).transpose(1, 0, 2)
        for row in range(3):
            # each side is a two-point mixture (branch kept or dropped): compare the dropped fraction and
            # the variance; Kolmogorov-Smirnov on the first unit at level 1e-3
            assert stats.ks_2samp(ours[:, row, 0], theirs[:, row, 0]).pvalue > 1e-3
            ratio = ours[:, row].var(axis=0) / theirs[:, row].var(axis=0)
            np.testing.assert_allclose(ratio, 1.0, atol=0.15)  # sd of a variance ratio at T=1500 ~0.04
    # consistent masks: every input of a pass shares the draw (same keep/drop decision for all rows)
    mc = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0, task="regression",
                          stochastic_layers=["depth"], batch_size=2)
    s = mc.sample(x)
    dropped = np.isclose(s, model.layers[-1](x).numpy()[None], atol=1e-5).all(axis=2)  # branch dropped
    assert 0.15 < dropped[:, 0].mean() < 0.45
    np.testing.assert_array_equal(dropped, np.repeat(dropped[:, :1], 3, axis=1))
    # and the passes do not depend on the batch size
    np.testing.assert_array_equal(mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0, task="regression",
                                                   stochastic_layers=[depth], batch_size=3).sample(x), s)


def test_opted_in_per_example_masks_are_independent_across_rows():
    depth = StochasticDepth(0.5)
    inp = keras.Input((4,))
    model = keras.Model(inp, depth(inp))
    x = np.ones((2, 4), "float32")

    def sample(**kwargs):
        return mcdrop.MCDropout(model, num_samples=400, seed=0, verbose=0, task="regression", mask="per_example",
                                stochastic_layers=[depth], **kwargs).sample(x)

    s = sample()
    kept = s[:, :, 0] > 0  # (T, 2)
    assert 0.4 < kept.mean() < 0.6
    # independent rows agree on half the passes (sd 0.025 at T=400); shared draws would agree on all
    assert 0.4 < np.mean(kept[:, 0] == kept[:, 1]) < 0.6
    np.testing.assert_allclose(np.unique(s), [0.0, 2.0])
    # keyed by the row's index in the input, not its place in a block: the same whatever the batch size
    np.testing.assert_array_equal(sample(batch_size=1), s)


def test_stochastic_layers_that_cannot_be_driven_are_refused():
    model = _residual(StochasticDepth(0.5))
    with pytest.raises(ValueError, match=r"argument `stochastic_layers`: expected layer classes, layers or layer "
                                         r"names found in the model, received 'nope'"):
        mcdrop.MCDropout(model, stochastic_layers=["nope"])
    with pytest.raises(ValueError, match=r"argument `stochastic_layers`: expected layers whose `call` takes "
                                         r"`training` and that draw their noise with a keras.random.SeedGenerator"):
        mcdrop.MCDropout(model, stochastic_layers=[L.Dense])
    with pytest.raises(TypeError, match=r"argument `stochastic_layers`: expected layer classes, layers or layer "
                                        r"names, received 3"):
        mcdrop.MCDropout(model, stochastic_layers=[3])


@pytest.mark.parametrize("mask", ["consistent", "per_example"])
def test_opted_in_layer_eagerly_equals_compiled(mask):
    depth = StochasticDepth(0.5)
    inp = keras.Input((3,))
    model = keras.Model(inp, L.Dense(2)(depth(inp)))
    x = np.random.default_rng(0).standard_normal((3, 3)).astype("float32")
    runs = [mcdrop.MCDropout(model, num_samples=8, seed=0, verbose=0, task="regression", mask=mask,
                             stochastic_layers=[depth], run_eagerly=eager).sample(x) for eager in (False, True)]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6, atol=1e-6)
    assert np.std(runs[0], axis=0).max() > 0

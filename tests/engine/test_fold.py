"""A dropout folded into the Dense layer that alone reads it (consistent masks).

``x diag(keep_t) W = x (diag(keep_t) W)``: the engine gives each pass its own kernel instead of
masking the (T, n, F) activations (``PassContext.dropout_matmul``). Checked against the forward pass
recomputed in numpy (float64) from the model's weights and the masks at their Philox counters (the
reference of ``test_noise_streams``), on both sides of the rows >= units switch, for a dropout after
the deterministic trunk (untiled rows) and one inside the passes; and the cases that must not fold.
"""

import keras
import numpy as np
import pytest

import mcdrop
from mcdrop.engine.noise import PassContext
from tests.engine.conftest import L
from tests.engine.test_noise_streams import keep_of, reference

RATES = (0.3, 0.4)


def _mlp():
    return keras.Sequential([
        keras.Input((8,)),
        L.Dense(16, activation="relu"), L.Dropout(RATES[0]),
        L.Dense(12, activation="tanh"), L.Dropout(RATES[1]),
        L.Dense(5, activation="softmax"),
    ])


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _by_hand(model, x, seed_pair, passes):
    """(T, n, 5) softmax outputs of ``_mlp`` in float64, each pass with its masks (sites 0 and 1)."""
    (w1, b1), (w2, b2), (w3, b3) = [[np.float64(v) for v in layer.get_weights()]
                                    for layer in model.layers if isinstance(layer, L.Dense)]
    m1 = keep_of(reference(seed_pair, range(passes), [0], 16, "consistent", site=0), RATES[0]) / (1 - RATES[0])
    m2 = keep_of(reference(seed_pair, range(passes), [0], 12, "consistent", site=1), RATES[1]) / (1 - RATES[1])
    h = np.maximum(np.float64(x) @ w1 + b1, 0)                      # (n, 16): the trunk, once
    h = np.tanh((h[None] * m1) @ w2 + b2)                           # (T, n, 12)
    return _softmax((h * m2) @ w3 + b3)


@pytest.fixture
def folds(monkeypatch):
    """How many dropouts each trace folded (counted while the step is traced)."""
    calls = []
    original = PassContext.dropout_matmul

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("untiled", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PassContext, "dropout_matmul", counting)
    return calls


@pytest.mark.parametrize("rows", [40, 3])  # 40 >= every Dense's units: folded kernels; 3: masked activations
def test_folded_passes_equal_the_masked_forward_pass(rows, folds):
    model = _mlp()
    x = np.random.default_rng(0).standard_normal((rows, 8)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=7, seed=3, verbose=0)
    samples = mc.sample(x)
    assert folds == [True, False]  # the first dropout reads the trunk's untiled rows, the second the passes
    expected = _by_hand(model, x, mc._seed_pair()[1], 7)
    np.testing.assert_allclose(samples, expected, rtol=2e-5, atol=1e-6)


def test_a_dropout_on_the_model_input_folds_into_its_dense(folds):
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(4)(L.Dropout(0.5)(inp)))
    x = np.random.default_rng(1).standard_normal((10, 6)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0)
    samples = mc.sample(x)
    keep = keep_of(reference(mc._seed_pair()[1], range(5), [0], 6, "consistent"), 0.5) * 2.0
    w, b = (np.float64(v) for v in model.layers[-1].get_weights())
    np.testing.assert_allclose(samples, (np.float64(x)[None] * keep) @ w + b, rtol=2e-5, atol=1e-6)
    assert folds == [True]


def test_every_batching_gives_the_same_bits(folds):
    model = _mlp()
    x = np.random.default_rng(2).standard_normal((50, 8)).astype("float32")
    mc = mcdrop.MCDropout(model, num_samples=6, seed=1, verbose=0, batch_size=20)
    whole = mc.predict(x)
    streamed = mc.predict(iter([x[:7], x[7:31], x[31:]]))
    np.testing.assert_array_equal(whole.mean, streamed.mean)
    np.testing.assert_array_equal(whole.mutual_information, streamed.mutual_information)
    assert folds


def _skip_connection():
    inp = keras.Input((8,))
    h = L.Dense(8)(inp)
    d = L.Dropout(0.5)(h)
    return keras.Model(inp, L.Add()([L.Dense(8)(d), d]))  # the dropout's output is read twice


def _sequence():
    return keras.Sequential([keras.Input((5, 8)), L.Dropout(0.5), L.Dense(4)])  # a Dense over a sequence


def _spatial():
    return keras.Sequential([keras.Input((5, 8)), L.SpatialDropout1D(0.5), L.Flatten(), L.Dense(4)])


def _noise_shape():
    return keras.Sequential([keras.Input((8,)), L.Dropout(0.5, noise_shape=(None, 8)), L.Dense(4)])


def _dropout_output():
    inp = keras.Input((8,))
    d = L.Dropout(0.5)(L.Dense(8)(inp))
    return keras.Model(inp, [d, L.Dense(4)(d)])  # the dropout's output is also a model output


def _subclassed_dense():
    class Scaled(L.Dense):
        def call(self, inputs, training=None):
            return 2.0 * super().call(inputs)

    return keras.Sequential([keras.Input((8,)), L.Dropout(0.5), Scaled(4)])


@pytest.mark.parametrize("build", [_skip_connection, _sequence, _spatial, _noise_shape, _dropout_output,
                                   _subclassed_dense])
def test_what_must_not_fold_is_masked_as_before(build, folds):
    model = build()
    x = np.random.default_rng(3).standard_normal((12, *model.inputs[0].shape[1:])).astype("float32")
    mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0).sample(x)
    assert folds == []


def test_per_example_masks_never_fold(folds):
    mc = mcdrop.MCDropout(_mlp(), num_samples=4, seed=0, verbose=0, mask="per_example")
    mc.sample(np.ones((12, 8), "float32"))
    assert folds == []


def test_mixed_precision_dense_is_not_folded(folds):
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8,)), L.Dense(8), L.Dropout(0.5), L.Dense(4)])
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    samples = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0).sample(np.ones((12, 8), "float32"))
    assert folds == [] and np.all(np.isfinite(samples))


def _lora():
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dropout(0.5), L.Dense(6)])
    model.layers[-1].enable_lora(2)
    model.layers[-1].lora_kernel_b.assign(np.full((2, 6), 0.3, "float32"))  # a LoRA update that changes the kernel
    return model


def _nested_no_bias():
    inner = keras.Sequential([keras.Input((12,)), L.Dropout(0.4), L.Dense(5, use_bias=False, activation="sigmoid")])
    inp = keras.Input((8,))
    return keras.Model(inp, inner(L.Dense(12, activation="relu")(inp)))


def _two_heads():
    inp = keras.Input((8,))
    h = L.Dense(16, activation="relu")(inp)
    return keras.Model(inp, [L.Dense(3, activation="softmax")(L.Dropout(0.2)(h)), L.Dense(2)(L.Dropout(0.5)(h))])


@pytest.mark.parametrize("build", [_mlp, _lora, _nested_no_bias, _two_heads])
def test_folded_and_masked_passes_agree(build, folds, monkeypatch):
    """The same masks through the folded kernels and through masked activations (fold switched off)."""
    model = build()
    x = np.random.default_rng(4).standard_normal((24, 8)).astype("float32")
    folded = mcdrop.MCDropout(model, num_samples=6, seed=5, verbose=0).sample(x)
    assert folds
    monkeypatch.setattr(mcdrop.engine.view.StochasticView, "foldable_ids", property(lambda self: frozenset()))
    masked = mcdrop.MCDropout(model, num_samples=6, seed=5, verbose=0).sample(x)
    for a, b in zip(folded if isinstance(folded, list) else [folded], masked if isinstance(masked, list) else [masked]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        assert np.ptp(a, axis=0).max() > 0  # the passes differ: the noise is in them

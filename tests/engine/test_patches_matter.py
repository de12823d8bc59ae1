"""Each of the engine's patches is what makes its layer's noise keyed — and a test would notice it gone.

Keras' own dropout (and an RNN cell's own masks) still give spread between passes when our patch is
missing, so "the samples differ" proves nothing. The property that only the patches give is
*keyed* noise: with consistent masks, the same seed gives bit-identical samples (from a fresh
engine, or the same one called twice), another seed gives other samples, and the batch size does
not matter (outputs equal to float32 rounding, as ``MCDropout``'s docstring states).

For every patched layer family the property is checked, then checked again with that one patch
replaced by a stub, and must then fail. The patch points are named once, in ``PATCHES``.
"""

import keras
import numpy as np
import pytest

import mcdrop
from mcdrop.engine import view as engine_view

L = keras.layers
T = 8  # passes
RTOL, ATOL = 1e-5, 1e-6  # float32 rounding between block layouts (see tests/engine/test_masks.py)


# -- the models: one per patched family ------------------------------------------------------------
def _rnn(cls, kind):
    kwargs = {kind: 0.4}
    return keras.Sequential([keras.Input((5, 3)), cls(6, **kwargs), L.Dense(2)])


def _bidirectional():
    return keras.Sequential([keras.Input((5, 3)),
                             L.Bidirectional(L.GRU(4, dropout=0.4, recurrent_dropout=0.4)), L.Dense(2)])


def _attention():
    inp = keras.Input((4, 6))
    out = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5)(inp, inp)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(out)))


def _spatial(cls):
    shape = {L.SpatialDropout1D: (6, 4), L.SpatialDropout2D: (3, 3, 4)}[cls]
    inp = keras.Input(shape)
    return keras.Model(inp, cls(0.5)(inp))


MODELS = {
    **{f"{cls.__name__}-{kind}": (lambda cls=cls, kind=kind: _rnn(cls, kind))
       for cls in (L.SimpleRNN, L.GRU, L.LSTM) for kind in ("dropout", "recurrent_dropout")},
    "Bidirectional-GRU": _bidirectional,
    "MultiHeadAttention": _attention,
    "SpatialDropout1D": lambda: _spatial(L.SpatialDropout1D),
    "SpatialDropout2D": lambda: _spatial(L.SpatialDropout2D),
}


def _inputs(model, n=12, seed=0):
    shape = (n, *model.input_shape[1:])
    if any(isinstance(layer, L.SpatialDropout1D | L.SpatialDropout2D) for layer in model.layers):
        return np.ones(shape, "float32")  # each sample is the mask itself: feature maps are visible
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _engine(model, seed):
    return mcdrop.MCDropout(model, num_samples=T, seed=seed, verbose=0, batch_size=12, task="regression")


def _keyed_noise_problems(model):
    """Yield what is wrong with ``model``'s noise under mcdrop; nothing when it is keyed and consistent.

    Lazily, so a caller that only needs to know *whether* something is wrong stops at the first
    problem (each new engine traces its sampling step once, which dominates the run time).
    """
    x = _inputs(model)
    engine = _engine(model, seed=3)
    ref = engine.sample(x)
    if np.all(ref == ref[:1]):
        yield "no spread between passes"
    if not np.array_equal(engine.sample(x), ref):
        yield "same engine called twice, different samples"
    for batch_size in (4, 7):  # blocks of other sizes, the last one partial
        if not np.allclose(engine.sample(x, batch_size=batch_size), ref, rtol=RTOL, atol=ATOL):
            yield f"batch size {batch_size} changes the samples"
    # consistent masks: pass t is one network, so two copies of a row agree within every pass
    twin = engine.sample(np.concatenate([x[:1], x[:1]]))
    if not np.allclose(twin[:, 0], twin[:, 1], rtol=RTOL, atol=ATOL):
        yield "identical rows see different masks"
    if any(isinstance(layer, L.SpatialDropout1D | L.SpatialDropout2D) for layer in model.layers):
        maps = ref.reshape(T, ref.shape[1], -1, ref.shape[-1])  # (T, N, positions, channels)
        if not np.all(maps == maps[:, :, :1]):
            yield "spatial dropout does not drop whole feature maps"
    if not np.array_equal(_engine(model, seed=3).sample(x), ref):
        yield "same seed, another engine, different samples"
    if np.array_equal(_engine(model, seed=4).sample(x), ref):
        yield "another seed, same samples"


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_is_keyed_by_the_seed_and_independent_of_the_batch(name):
    assert list(_keyed_noise_problems(MODELS[name]())) == []


# -- the patches, and stubs that stand for each one missing ----------------------------------------
def _keras_own_leaf(layer, ctx, rate=None):
    """The layer's own Keras call in training mode: stochastic, but from Keras' unkeyed generator."""
    bound = type(layer).call.__get__(layer)
    return lambda inputs, *args, **kwargs: bound(inputs, training=True)


def _elementwise_leaf(layer, ctx, rate=None):
    """Keyed dropout, but ignoring the layer's noise shape (what losing the spatial patch gives)."""
    return lambda inputs, *args, **kwargs: ctx.dropout(inputs, float(layer.rate))


def _no_cell_patches(cell, ctx, rate=None):
    return {}  # the cell keeps Keras' own mask getters


def _inference_rnn(layer):
    return type(layer).call.__get__(layer)  # the RNN stays in inference mode: the cell applies no mask


PATCHES = {
    # stub name: (attribute of mcdrop.engine.view, its stand-in, models it must break: one per family)
    "leaf call -> Keras' own dropout": ("_leaf_call", _keras_own_leaf, ["MultiHeadAttention", "SpatialDropout2D"]),
    "spatial noise shape ignored": ("_leaf_call", _elementwise_leaf, ["SpatialDropout1D"]),
    "cell mask getters -> Keras' own": ("_cell_patches", _no_cell_patches,
                                        ["LSTM-recurrent_dropout", "GRU-dropout", "Bidirectional-GRU"]),
    "RNN not switched to training": ("_training_call", _inference_rnn, ["SimpleRNN-dropout", "Bidirectional-GRU"]),
}
CASES = [pytest.param(stub, name, id=f"{stub}|{name}") for stub, (_, _, names) in PATCHES.items() for name in names]


@pytest.mark.parametrize("stub, name", CASES)
def test_the_check_fails_when_the_patch_is_removed(monkeypatch, stub, name):
    attribute, stand_in, _ = PATCHES[stub]
    assert hasattr(engine_view, attribute), f"the patch point {attribute} moved: update PATCHES"
    monkeypatch.setattr(engine_view, attribute, stand_in)
    assert next(_keyed_noise_problems(MODELS[name]()), None) is not None

"""The stochastic view of a Keras model: which layers draw noise, and how to make
them draw ours.

The user's model is read, never modified. While a sampling step is traced the
stochastic layers' ``call`` (and the dropout-mask getters of RNN cells) are
shadowed by instance attributes that draw keyed noise from the step's
:class:`~mcdrop.engine.noise.PassContext`; they are removed when tracing ends, so
the traced graph keeps our noise and the model object is as it was.
Everything else runs in inference mode (``training=False``): BatchNormalization
keeps its moving statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Iterator

import keras

from mcdrop._validation import invalid

from keras.src.layers.regularization.spatial_dropout import BaseSpatialDropout

try:  # the mixin Keras' dropout-capable RNN cells share
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
except ImportError:  # pragma: no cover - very old or very new Keras
    DropoutRNNCell = ()

__all__ = ["StochasticView", "build_view", "patched", "output_activations"]

_LEAF_FAMILIES = (
    keras.layers.Dropout,  # also SpatialDropout1D/2D/3D, which subclass it
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


@dataclasses.dataclass(frozen=True)
class StochasticView:
    """What the engine decided about a model, once.

    leaves : the dropout-family layers (and GaussianNoise when opted in) with a rate > 0
    cells : RNN cells with ``dropout`` or ``recurrent_dropout`` > 0
    rnns : the RNN layers that own those cells (run with ``training=True`` so the cell applies
        our masks; nothing else in an RNN depends on the flag)
    ignored : layers that look stochastic but that the engine cannot drive (reported to the user)
    """

    leaves: tuple
    cells: tuple
    rnns: tuple
    ignored: tuple
    rates: dict = dataclasses.field(default_factory=dict)  # sampling-rate overrides (engine/rates.py)

    @property
    def stochastic_ids(self) -> frozenset:
        return frozenset(id(layer) for layer in (*self.leaves, *self.cells, *self.rnns))

    @property
    def is_stochastic(self) -> bool:
        return bool(self.leaves or self.cells)

    def describe(self) -> str:
        names = [f"{type(layer).__name__}({layer.name})" for layer in (*self.leaves, *self.rnns)]
        return ", ".join(names) if names else "none"


def _all_layers(model) -> list:
    # Keras' own traversal: depth-first, deterministic, each layer once.
    return list(model._flatten_layers(include_self=True, recursive=True))


def _is_leaf(layer, gaussian_noise: bool, rates=None) -> bool:
    if isinstance(layer, _LEAF_FAMILIES):
        return (rates or {}).get(id(layer), getattr(layer, "rate", 0)) > 0
    if gaussian_noise and isinstance(layer, keras.layers.GaussianNoise):
        return getattr(layer, "stddev", 0) > 0
    return False


def _rnn_cells(rnn, rates=None) -> list:
    cell = getattr(rnn, "cell", None)
    if cell is None:
        return []
    cells = list(getattr(cell, "cells", [cell]))
    rates = rates or {}
    return [c for c in cells if isinstance(c, DropoutRNNCell)
            and max(rates.get(id(c), (getattr(c, "dropout", 0), getattr(c, "recurrent_dropout", 0)))) > 0]


def build_view(model, *, gaussian_noise: bool = False, rates=None) -> StochasticView:
    """Find the stochastic layers of ``model`` (``rates``: overrides from :func:`~mcdrop.engine.rates.resolve_rates`)."""
    if not isinstance(model, keras.Model):
        raise invalid("model", "a keras.Model (Keras 3)", model, error=TypeError)
    leaves, cells, rnns, ignored = [], [], [], []
    for layer in _all_layers(model):
        if _is_leaf(layer, gaussian_noise, rates):
            leaves.append(layer)
        elif isinstance(layer, keras.layers.RNN):
            found = _rnn_cells(layer, rates)
            if found:
                cells.extend(found)
                rnns.append(layer)
        elif (isinstance(layer, (keras.layers.Attention, keras.layers.AdditiveAttention))
              and getattr(layer, "dropout", 0) > 0):
            ignored.append(layer)
    if ignored:
        names = ", ".join(f"{type(layer).__name__}({layer.name})" for layer in ignored)
        warnings.warn(
            f"mcdrop cannot make the dropout of these layers stochastic; they run in inference mode: {names}.",
            stacklevel=3,
        )
    return StochasticView(tuple(leaves), tuple(cells), tuple(rnns), tuple(ignored), dict(rates or {}))


def _noise_shape(layer, x):
    """Non-batch noise shape of a dropout-family layer applied to ``x`` (None: the input's own)."""
    import tensorflow as tf

    if isinstance(layer, BaseSpatialDropout):
        shape = layer._get_noise_shape(x)  # (batch, 1, ..., channels): one draw per feature map
    else:
        shape = getattr(layer, "noise_shape", None)
        if shape is None:
            return None
    dims = tf.shape(x)
    return tf.stack([dims[i] if d is None else tf.cast(d, tf.int32) for i, d in enumerate(shape)][1:])


def _leaf_call(layer, ctx, rate=None):
    rate = float(getattr(layer, "rate", 0.0)) if rate is None else float(rate)  # None: the trained rate

    def call(inputs, *args, **kwargs):
        if isinstance(layer, keras.layers.Dropout):
            return ctx.dropout(inputs, rate, _noise_shape(layer, inputs))
        if isinstance(layer, keras.layers.GaussianDropout):
            return ctx.gaussian_dropout(inputs, rate)
        if isinstance(layer, keras.layers.AlphaDropout):
            return ctx.alpha_dropout(inputs, rate, _noise_shape(layer, inputs))
        return ctx.gaussian_noise(inputs, float(layer.stddev))

    return call


def _training_call(layer):
    bound = type(layer).call.__get__(layer)

    def call(*args, **kwargs):
        kwargs["training"] = True
        return bound(*args, **kwargs)

    return call


def _cell_patches(cell, ctx, rates=None) -> dict:
    """Mask getters for one RNN call: each drawn once per call of the RNN (fixed over time steps)."""
    dropout, recurrent = rates if rates is not None else (cell.dropout, cell.recurrent_dropout)
    cache = {}
    count = getattr(cell, "dropout_mask_count", None)

    def getter(kind, rate, trained):
        def get(step_input):
            if trained <= 0:  # the cell applies no mask of this kind (an override to 0 draws all-ones)
                return None
            if kind not in cache:
                cache[kind] = ctx.rnn_mask(step_input, rate, count)
            return cache[kind]

        return get

    def reset(kind):
        return lambda: cache.pop(kind, None)

    return {
        "get_dropout_mask": getter("input", float(dropout), float(cell.dropout)),
        "get_recurrent_dropout_mask": getter("recurrent", float(recurrent), float(cell.recurrent_dropout)),
        "reset_dropout_mask": reset("input"),
        "reset_recurrent_dropout_mask": reset("recurrent"),
    }


@contextlib.contextmanager
def patched(view: StochasticView, ctx) -> Iterator[None]:
    """Shadow the stochastic layers' methods with keyed-noise versions while a step is traced.

    Instance attributes are set with ``object.__setattr__`` (bypassing Keras' attribute
    tracking) and deleted afterwards, whatever happens, leaving the model as it was.
    """
    undo = []

    def shadow(obj, name, fn):
        had = name in vars(obj)
        previous = vars(obj).get(name)
        object.__setattr__(obj, name, fn)
        undo.append((obj, name, had, previous))

    try:
        for layer in view.leaves:
            shadow(layer, "call", _leaf_call(layer, ctx, view.rates.get(id(layer))))
        for rnn in view.rnns:
            shadow(rnn, "call", _training_call(rnn))
        for cell in view.cells:
            for name, fn in _cell_patches(cell, ctx, view.rates.get(id(cell))).items():
                shadow(cell, name, fn)
        yield
    finally:
        for obj, name, had, previous in reversed(undo):
            if had:
                object.__setattr__(obj, name, previous)
            else:
                object.__delattr__(obj, name)


def output_activations(model) -> list[str | None]:
    """The final activation of each model output ('softmax', 'sigmoid', 'linear', ...), None where
    it cannot be read from the graph (subclassed models)."""
    outputs = getattr(model, "outputs", None)
    try:
        outputs = list(outputs) if outputs else None
    except (AttributeError, TypeError, ValueError):
        outputs = None
    if not outputs:
        return [None]
    return [_activation_of(t) for t in outputs]


def _activation_of(tensor, depth: int = 0) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    if history is None or depth > 20:
        return None
    op = history[0]
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    if isinstance(op, keras.Model) and getattr(op, "outputs", None):
        inner = list(op.outputs)
        index = history[2] if len(history) > 2 else 0
        return _activation_of(inner[min(index, len(inner) - 1)], depth + 1)
    if isinstance(op, (*_LEAF_FAMILIES, keras.layers.GaussianNoise, keras.layers.Identity)):
        node = op._inbound_nodes[history[1]]
        return _activation_of(node.input_tensors[0], depth + 1) if node.input_tensors else None
    activation = getattr(op, "activation", None)
    if activation is None:
        return "linear"
    name = getattr(activation, "__name__", None) or getattr(activation, "name", None)
    return str(name) if name else None

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
from mcdrop.engine import _keras_compat as compat

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
    attentions : ``Attention``/``AdditiveAttention`` layers with ``dropout`` > 0 (their attention
        weights get our dropout)
    custom : the user's own stochastic layers, opted in with ``stochastic_layers=`` (run in training
        mode, one keyed seed per pass)
    undriven : layers whose ``call`` takes ``training`` that the engine neither drives nor knows to be
        deterministic (reported to the user)
    """

    leaves: tuple
    cells: tuple
    rnns: tuple
    ignored: tuple
    attentions: tuple = ()
    custom: tuple = ()
    undriven: tuple = ()
    rates: dict = dataclasses.field(default_factory=dict)  # sampling-rate overrides (engine/rates.py)

    @property
    def stochastic_ids(self) -> frozenset:
        return frozenset(id(layer) for layer in (*self.leaves, *self.cells, *self.rnns, *self.attentions,
                                                 *self.custom))

    @property
    def is_stochastic(self) -> bool:
        return bool(self.leaves or self.cells or self.attentions or self.custom)

    @property
    def foldable_ids(self) -> frozenset:
        """Plain ``Dropout`` layers (no noise shape, not spatial): with consistent masks their mask can be
        folded into a ``Dense`` layer that alone reads their output (see :func:`mcdrop.engine.graph.run_model`)."""
        return frozenset(id(layer) for layer in self.leaves
                         if type(layer) is keras.layers.Dropout and getattr(layer, "noise_shape", None) is None)

    def describe(self) -> str:
        names = [_label(layer) for layer in (*self.leaves, *self.rnns, *self.attentions, *self.custom)]
        return ", ".join(names) if names else "none"


def _label(layer) -> str:
    return f"{type(layer).__name__}({layer.name})"


def _all_layers(model) -> list:
    # Keras' own traversal: depth-first, deterministic, each layer once.
    return compat.flatten_layers(model, include_self=True)


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
    return [c for c in cells if compat.is_dropout_rnn_cell(c)
            and max(rates.get(id(c), (getattr(c, "dropout", 0), getattr(c, "recurrent_dropout", 0)))) > 0]


def build_view(model, *, gaussian_noise: bool = False, stochastic_layers=(), rates=None) -> StochasticView:
    """Find the stochastic layers of ``model``.

    ``rates`` holds sampling-rate overrides from :func:`~mcdrop.engine.rates.resolve_rates`.

    ``stochastic_layers`` opts the user's own stochastic layers in: layer classes, layer objects or
    layer names (see :func:`_custom_layers`).
    """
    if not isinstance(model, keras.Model):
        raise invalid("model", "a keras.Model (Keras 3)", model, error=TypeError)
    compat.check(model)  # every engine is built here: a Keras without what mcdrop relies on fails now, loudly
    layers = _all_layers(model)
    custom = _custom_layers(layers, stochastic_layers)
    custom_ids = {id(layer) for layer in custom}
    leaves, cells, rnns, attentions = [], [], [], []
    for layer in layers:
        if id(layer) in custom_ids:
            continue
        if _is_leaf(layer, gaussian_noise, rates):
            leaves.append(layer)
        elif isinstance(layer, keras.layers.RNN):
            found = _rnn_cells(layer, rates)
            if found:
                cells.extend(found)
                rnns.append(layer)
        elif (isinstance(layer, (keras.layers.Attention, keras.layers.AdditiveAttention))
              and getattr(layer, "dropout", 0) > 0):
            attentions.append(layer)
    undriven = tuple(layer for layer in layers if id(layer) not in custom_ids and _undriven(layer))
    if undriven:
        warnings.warn(
            "mcdrop does not drive these layers, whose `call` takes `training`: they run with training=False, "
            "so any noise they draw in training is missing from the passes: "
            f"{', '.join(_label(layer) for layer in undriven)}. If they are stochastic, opt them in with "
            "stochastic_layers=[...] (see the engine docs); if not, this warning can be ignored.",
            UserWarning, stacklevel=3,
        )
    return StochasticView(tuple(leaves), tuple(cells), tuple(rnns), (), tuple(attentions),
                          tuple(custom), undriven, dict(rates or {}))


def _takes_training(layer) -> bool:
    return compat.call_takes_training(layer)


def _undriven(layer) -> bool:
    """A layer of the user's own whose ``call`` takes ``training`` but that nothing here drives.

    Excepted: Keras' own layers (the engine knows which of them are stochastic: the dropout family, RNN
    and attention dropout, GaussianNoise when opted in; the rest, BatchNormalization included, are
    deterministic at inference), models (they pass ``training`` on to their layers, which are looked at
    themselves), and layers containing a layer that takes ``training`` (they most likely take it only to
    pass it on, as a Transformer block does to its Dropout and BatchNormalization).
    """
    if not _takes_training(layer) or isinstance(layer, keras.Model):
        return False
    if type(layer).__module__.split(".")[0] == "keras":
        return False
    return not any(_takes_training(sub) for sub in compat.flatten_layers(layer, include_self=False))


def _custom_layers(layers, requested) -> list:
    """The layers ``stochastic_layers=`` names: each entry a layer class (every instance in the model),
    a layer object, or a layer name; each must match at least one layer that draws its noise from a
    ``keras.random.SeedGenerator`` it owns and whose ``call`` takes ``training``."""
    if requested is None:
        return []
    if isinstance(requested, (str, type, keras.layers.Layer)):
        requested = [requested]
    found = []
    for entry in requested:
        if isinstance(entry, type):
            matches = [layer for layer in layers if isinstance(layer, entry)]
        elif isinstance(entry, str):
            matches = [layer for layer in layers if layer.name == entry]
        elif isinstance(entry, keras.layers.Layer):
            matches = [layer for layer in layers if layer is entry]
        else:
            raise invalid("stochastic_layers", "layer classes, layers or layer names", entry, error=TypeError)
        if not matches:
            raise invalid("stochastic_layers", "layer classes, layers or layer names found in the model",
                          entry if not isinstance(entry, type) else entry.__name__)
        for layer in matches:
            if not _takes_training(layer) or not _seed_generators(layer):
                raise invalid("stochastic_layers", "layers whose `call` takes `training` and that draw their "
                              "noise with a keras.random.SeedGenerator they own (as Keras' own layers do)",
                              _label(layer))
            if all(layer is not f for f in found):
                found.append(layer)
    return found


def _seed_generators(layer) -> list:
    return compat.seed_generators(layer)


def _noise_shape(layer, x):
    """Non-batch noise shape of a dropout-family layer applied to ``x`` (None: the input's own)."""
    import tensorflow as tf

    if compat.is_spatial_dropout(layer):
        shape = compat.spatial_noise_shape(layer, x)  # (batch, 1, ..., channels): one draw per feature map
    else:
        shape = getattr(layer, "noise_shape", None)
        if shape is None:
            return None
    dims = tf.shape(x)
    return tf.stack([dims[i] if d is None else tf.cast(d, tf.int32) for i, d in enumerate(shape)][1:])


def _leaf_call(layer, ctx, rate=None):
    rate = float(getattr(layer, "rate", 0.0)) if rate is None else float(rate)  # None: the trained rate

    def call(inputs, *args, into=None, untiled=False, **kwargs):
        if into is not None:  # the graph runner folds this dropout into the Dense that alone reads it
            return ctx.dropout_matmul(inputs, rate, into.kernel, into.bias, into.activation, untiled=untiled)
        if isinstance(layer, keras.layers.Dropout):
            return ctx.dropout(inputs, rate, _noise_shape(layer, inputs))
        if isinstance(layer, keras.layers.GaussianDropout):
            return ctx.gaussian_dropout(inputs, rate)
        if isinstance(layer, keras.layers.AlphaDropout):
            return ctx.alpha_dropout(inputs, rate, _noise_shape(layer, inputs))
        return ctx.gaussian_noise(inputs, float(layer.stddev))

    return call


def _attention_scores(layer, ctx):
    """``Attention``/``AdditiveAttention._apply_scores`` with our dropout on the attention weights: Keras'
    own masking and softmax (run with training=False), then keyed dropout, then the weighted sum."""
    bound = compat.attention_apply_scores(layer)

    def apply_scores(scores, value, scores_mask=None, training=False):
        _, weights = bound(scores, value, scores_mask=scores_mask, training=False)
        weights = ctx.dropout(weights, float(layer.dropout))
        return keras.ops.matmul(weights, value), weights

    return apply_scores


def _custom_call(layer, ctx):
    """An opted-in layer's ``call`` in training mode, once per row of every pass, its seed generators
    returning seeds keyed like the built-in noise: by (seed, site, pass), and the row's index in the
    whole input with per-example masks. One row at a time is what makes a layer that draws noise of
    shape (batch, ...) give the same draw to every input of a pass (consistent masks)."""
    bound = type(layer).call.__get__(layer)
    generators = _seed_generators(layer)

    def call(inputs, *args, **kwargs):
        kwargs["training"] = True

        def one_row(row, key):
            counter = iter(range(1 << 30))

            def next_seed(ordered=True):
                return compat.fold_in(key, next(counter))

            undo = [compat.shadow_seed_generator(generator, next_seed) for generator in generators]
            try:
                batched = keras.tree.map_structure(lambda t: t[None], row)
                return keras.tree.map_structure(lambda t: t[0], bound(batched, *args, **kwargs))
            finally:
                for restore in reversed(undo):
                    restore()

        return ctx.per_row(one_row, inputs)

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
    count = compat.dropout_mask_count(cell)

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

    return compat.cell_mask_methods(
        get_input=getter("input", float(dropout), float(cell.dropout)),
        get_recurrent=getter("recurrent", float(recurrent), float(cell.recurrent_dropout)),
        reset_input=reset("input"),
        reset_recurrent=reset("recurrent"),
    )


@contextlib.contextmanager
def patched(view: StochasticView, ctx) -> Iterator[set]:
    """Shadow the stochastic layers' methods with keyed-noise versions while a step is traced; yield the
    set that collects the ids of the stochastic layers that ran (a layer the model's ``call`` skips, as
    under ``if training:``, never draws its noise).

    Instance attributes are set past Keras' attribute tracking (:func:`~mcdrop.engine._keras_compat.shadow`)
    and removed afterwards, whatever happens, leaving the model as it was.
    """
    undo = []
    ran = set()  # ids of the stochastic layers whose noise was drawn while tracing

    def shadow(obj, name, fn, record=False):
        if record:
            inner = fn

            def fn(*args, **kwargs):
                ran.add(id(obj))
                return inner(*args, **kwargs)

        undo.append(compat.shadow(obj, name, fn))

    try:
        for layer in view.leaves:
            shadow(layer, "call", _leaf_call(layer, ctx, view.rates.get(id(layer))), record=True)
        for rnn in view.rnns:
            shadow(rnn, "call", _training_call(rnn), record=True)
        for layer in view.attentions:
            shadow(layer, compat.ATTENTION_SCORES, _attention_scores(layer, ctx), record=True)
        for layer in view.custom:
            shadow(layer, "call", _custom_call(layer, ctx), record=True)
        for cell in view.cells:
            for name, fn in _cell_patches(cell, ctx, view.rates.get(id(cell))).items():
                shadow(cell, name, fn)
        yield ran
    finally:
        for restore in reversed(undo):
            restore()


def output_activations(model) -> list[str | None]:
    """The final activation of each model output ('softmax', 'sigmoid', 'linear', ...), None where
    it cannot be read from the graph (subclassed models, and a last layer that does not say).

    'linear' only where the last layer says so (an ``activation`` attribute that is linear, as a Dense
    layer without activation has); a layer without one (a custom or a reshaping layer) gives None, so
    its values decide, and a declaration is never refused because of it."""
    outputs = getattr(model, "outputs", None)
    try:
        outputs = list(outputs) if outputs else None
    except (AttributeError, TypeError, ValueError):
        outputs = None
    if not outputs:
        return [None]
    return [_activation_of(t) for t in outputs]


def _activation_of(tensor, depth: int = 0) -> str | None:
    history = compat.keras_history(tensor)
    if history is None or depth > 20:
        return None
    op = history[0]
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    if not isinstance(op, keras.layers.Layer):  # an op such as keras.ops.softmax applied in the graph
        name = type(op).__name__.lower()
        return name if name in ("softmax", "sigmoid") else None
    if isinstance(op, keras.Model) and getattr(op, "outputs", None):
        inner = list(op.outputs)
        index = history[2] if len(history) > 2 else 0
        return _activation_of(inner[min(index, len(inner) - 1)], depth + 1)
    if isinstance(op, (*_LEAF_FAMILIES, keras.layers.GaussianNoise, keras.layers.Identity)):
        inputs = compat.node_inputs(op, history[1])
        return _activation_of(inputs[0], depth + 1) if inputs else None
    activation = getattr(op, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None) or getattr(activation, "name", None)
    return str(name) if name else None

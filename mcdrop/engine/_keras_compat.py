"""Every private or undocumented Keras and TensorFlow name mcdrop relies on, in one place, checked.

The engine reads a user's model through Keras' own graph (to compute what no noise reaches
once), and swaps the noise of Keras' stochastic layers for keyed noise while it traces. Keras 3
has no public API for either, so some of its internals are used. Each one is behind a small
accessor here, with what public behaviour it stands for and since when Keras has it; nothing
else in :mod:`mcdrop` touches them (``tests/engine/test_keras_compat.py`` scans the package).

:func:`check` runs when an engine is built (from :func:`mcdrop.engine.view.build_view`): once
per process for what Keras' classes must have, and per model for what its graph must have
(attribute look-ups only). A missing or changed piece raises :class:`KerasCompatibilityError`
naming the installed Keras version, the piece and the supported range, instead of an engine that
silently loses a feature (the compute-once saving, the task read from the output activation,
dict outputs, RNN dropout).

All of the names below exist, with the behaviour described, from Keras 3.12 (the lower bound in
``pyproject.toml``) to the newest Keras this package is tested on; "since" gives the first
Keras 3 release that has a name where it is older than that.
"""

from __future__ import annotations

import inspect
import logging
import random
from typing import Any, Callable, Iterator, NamedTuple

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "KerasCompatibilityError", "SUPPORTED_KERAS", "check", "check_model",
    # layers
    "flatten_layers", "call_takes_training", "accepts_training", "seed_generators", "shadow",
    "shadow_seed_generator", "is_spatial_dropout", "spatial_noise_shape", "ATTENTION_SCORES",
    "attention_apply_scores", "is_dropout_rnn_cell", "DropoutRNNCell", "dropout_mask_count",
    "cell_mask_methods",
    # graphs
    "functional_graph", "inputs_structure", "outputs_structure", "GraphNode", "graph_nodes",
    "keras_history", "keras_history_layer", "node_inputs",
    # TensorFlow
    "fold_in", "distribute_values_from_function", "local_results", "saved_model_endpoint",
    "hide_retracing_reports", "RETRACING_MESSAGE",
]

#: The Keras versions mcdrop supports: the ``keras`` requirement of ``pyproject.toml`` (a test keeps the
#: two equal; CI runs the engine tests at both ends, see ``.ci/keras-oldest``).
SUPPORTED_KERAS = ">=3.12,<3.16"


class KerasCompatibilityError(RuntimeError):
    """The installed Keras lacks (or changed) a piece of its internals that mcdrop relies on."""


def _missing(piece: str, what: str, detail: str | None = None) -> KerasCompatibilityError:
    found = f" ({detail})" if detail else ""
    return KerasCompatibilityError(
        f"mcdrop cannot run on the installed Keras {keras.__version__}: it needs {piece} ({what}), which is "
        f"missing or changed{found}. mcdrop supports keras{SUPPORTED_KERAS} (pyproject.toml); install a "
        f"version in that range, e.g. pip install 'keras{SUPPORTED_KERAS}'.")


# --------------------------------------------------------------------------- imports from keras.src
# Resolved at import time but never allowed to fail there: a missing one is reported by `check()` (and by
# the accessor that needs it) with the version and the supported range.
try:  # SpatialDropout1D/2D/3D's common base, which defines the noise shape (Keras 3.0)
    from keras.src.layers.regularization.spatial_dropout import BaseSpatialDropout
except ImportError:  # pragma: no cover - reported by check()
    BaseSpatialDropout = None
try:  # the mixin of Keras' dropout-capable RNN cells: SimpleRNNCell, GRUCell, LSTMCell, ConvLSTMCell (Keras 3.0)
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
except ImportError:  # pragma: no cover - reported by check()
    DropoutRNNCell = None
try:  # the class of graph models: keras.Model(inputs, outputs) and what a built Sequential wraps (Keras 3.0)
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - reported by check()
    _Functional = None

_IMPORTS = {
    "keras.src.layers.regularization.spatial_dropout.BaseSpatialDropout":
        (lambda: BaseSpatialDropout, "the base class of SpatialDropout1D/2D/3D"),
    "keras.src.layers.rnn.dropout_rnn_cell.DropoutRNNCell":
        (lambda: DropoutRNNCell, "the mixin of the RNN cells that take dropout and recurrent_dropout"),
    "keras.src.models.functional.Functional":
        (lambda: _Functional, "the class of graph models built from keras.Input"),
}


def _require(name: str):
    value, what = _IMPORTS[name]
    if value() is None:
        raise _missing(f"`{name}`", what, "it cannot be imported")
    return value()


# --------------------------------------------------------------------------- layers
def flatten_layers(layer, *, include_self: bool = True) -> list:
    """Every layer inside ``layer`` (itself first when ``include_self``), depth-first, each once.

    Stands for Keras' own traversal, ``Layer._flatten_layers(include_self, recursive=True)`` (Keras
    3.0): unlike the public ``Model.layers`` it reaches layers nested in layers (a Dropout inside a
    MultiHeadAttention or a Transformer block), in a deterministic order.
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


def call_takes_training(layer) -> bool:
    """Whether ``layer.call`` has a ``training`` argument: ``Layer._call_has_training_arg`` (Keras 3.0),
    what Keras reads to decide whether to pass ``training`` on."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def accepts_training(op) -> bool:
    """Whether calling ``op`` accepts ``training=`` (a Keras layer: ``training`` is one of its call-context
    arguments, ``Layer._call_context_args``, Keras 3.0, set in ``Layer.__init__``, and Keras passes it on to
    the layers inside even when ``call`` itself does not take it; a plain ``keras.ops`` operation in a
    graph does not)."""
    return "training" in getattr(op, "_call_context_args", ()) or call_takes_training(op)


def seed_generators(layer) -> list:
    """The ``keras.random.SeedGenerator`` objects ``layer`` draws its noise from: those Keras tracks in
    ``Layer._seed_generators`` (Keras 3.0), else any held in an instance attribute."""
    own = list(getattr(layer, "_seed_generators", None) or [])
    return own or [v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator)]


def shadow(obj, name: str, value) -> Callable[[], None]:
    """Set the instance attribute ``obj.name = value`` past Keras' attribute tracking (``object.__setattr__``,
    so a function assigned to a layer is not tracked or wrapped), and return the function that undoes it
    (restoring an instance attribute that was there, or deleting the new one).

    An instance attribute shadows the class's method: this is how the engine swaps a layer's ``call``
    (and the methods below) while a sampling step is traced, leaving the model as it was afterwards.
    """
    had, previous = name in vars(obj), vars(obj).get(name)
    object.__setattr__(obj, name, value)

    def undo() -> None:
        if had:
            object.__setattr__(obj, name, previous)
        else:
            object.__delattr__(obj, name)

    return undo


def shadow_seed_generator(generator, next_seed: Callable[..., Any]) -> Callable[[], None]:
    """Make Keras' random ops draw their seeds from ``next_seed(ordered=True)`` instead of ``generator``;
    return the undo function.

    Keras' random functions (``keras.random.*``, hence every Keras layer's noise) take their seed from a
    ``SeedGenerator`` by calling its public ``next`` method (``keras.random`` ``draw_seed``, Keras 3.0);
    shadowing that method on the instance keys the layer's noise by our stream.
    """
    return shadow(generator, "next", next_seed)


def is_spatial_dropout(layer) -> bool:
    """Whether ``layer`` is a SpatialDropout1D/2D/3D (or a subclass of their common base)."""
    return isinstance(layer, _require("keras.src.layers.regularization.spatial_dropout.BaseSpatialDropout"))


def spatial_noise_shape(layer, x) -> tuple:
    """The noise shape a spatial dropout layer uses for input ``x``: (batch, 1, ..., channels) for
    channels-last data, one draw per whole feature map as documented for SpatialDropout1D/2D/3D; Keras
    computes it in each class's ``_get_noise_shape`` (Keras 3.0), which honours ``data_format``."""
    return tuple(layer._get_noise_shape(x))


#: The method of ``Attention``/``AdditiveAttention`` that applies the softmax of the scores, the dropout on
#: the attention weights and the weighted sum, ``_apply_scores(scores, value, scores_mask=None,
#: training=False) -> (output, weights)`` (Keras 3.0). The engine shadows it to put its keyed dropout on
#: the weights (the documented ``dropout`` argument of both layers).
ATTENTION_SCORES = "_apply_scores"


def attention_apply_scores(layer) -> Callable:
    """Keras' own ``_apply_scores`` (see :data:`ATTENTION_SCORES`) bound to ``layer``, from its class (so a
    shadowing instance attribute is not found)."""
    return getattr(type(layer), ATTENTION_SCORES).__get__(layer)


def is_dropout_rnn_cell(cell) -> bool:
    """Whether ``cell`` is one of Keras' dropout-capable RNN cells (SimpleRNNCell, GRUCell, LSTMCell,
    ConvLSTMCell: the ``DropoutRNNCell`` mixin), whose masks the engine can replace."""
    return isinstance(cell, _require("keras.src.layers.rnn.dropout_rnn_cell.DropoutRNNCell"))


def dropout_mask_count(cell) -> int | None:
    """How many independent masks of each kind the cell applies per call: one per gate for GRUCell (3),
    LSTMCell and ConvLSTMCell (4) when they run gate by gate (``implementation=1``, which
    ``recurrent_dropout`` forces), else None for a single mask. Keras' ``dropout_mask_count``
    (Keras 3.0)."""
    return getattr(cell, "dropout_mask_count", None)


#: The mask methods of ``DropoutRNNCell`` (Keras 3.0): the cell asks for its input and recurrent masks with
#: ``get_*(step_input)`` (the same mask at every time step) and the RNN clears them after each call.
_CELL_MASK_METHODS = ("get_dropout_mask", "get_recurrent_dropout_mask", "reset_dropout_mask",
                      "reset_recurrent_dropout_mask")


def cell_mask_methods(*, get_input, get_recurrent, reset_input, reset_recurrent) -> dict:
    """The four mask methods of a dropout RNN cell, by Keras' method names, for :func:`shadow`:
    ``get_input(step_input)`` and ``get_recurrent(step_input)`` return the masks (None: no mask);
    ``reset_*()`` forget them at the end of the RNN's call."""
    return dict(zip(_CELL_MASK_METHODS, (get_input, get_recurrent, reset_input, reset_recurrent)))


# --------------------------------------------------------------------------- graphs
def functional_graph(model):
    """The Keras graph behind ``model``: the model itself for a graph model (``keras.Model(inputs,
    outputs)``), the one a built Sequential wraps (``Sequential._functional``, Keras 3.0), or None (a
    subclassed model, an unbuilt Sequential)."""
    if isinstance(model, keras.Sequential):
        return model._functional
    if (isinstance(model, _require("keras.src.models.functional.Functional"))
            and model._inputs_struct is not None):
        return model
    return None


def inputs_structure(model):
    """How a graph model's inputs nest, as given to ``keras.Model(inputs=...)`` (a tensor, list or dict):
    ``Functional._inputs_struct`` (Keras 3.0). None for a model without a graph."""
    return getattr(model, "_inputs_struct", None)


def outputs_structure(model):
    """How a graph model's outputs nest, as given to ``keras.Model(outputs=...)``, so a dict of outputs
    stays a dict: ``Functional._outputs_struct`` (Keras 3.0). None for a model without a graph."""
    return getattr(model, "_outputs_struct", None)


class GraphNode(NamedTuple):
    """One call of an operation in a Keras graph (Keras' ``Node``, Keras 3.0)."""

    operation: Any        # the layer or keras.ops operation called (None for some input nodes)
    is_input: bool        # a keras.Input's node: nothing to run
    inputs: tuple         # the KerasTensors it reads
    outputs: tuple        # the KerasTensors it makes
    fill_in: Callable     # fill_in({id(tensor): value}) -> (args, kwargs) to call ``operation`` with


def graph_nodes(functional) -> Iterator[GraphNode]:
    """The nodes of a graph model in an order that runs each after its inputs (deepest first, as Keras'
    own ``Functional`` runs them), from ``Functional._nodes_by_depth`` (Keras 3.0)."""
    by_depth = functional._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            yield _as_graph_node(node)


def _as_graph_node(node) -> GraphNode:
    return GraphNode(node.operation, bool(node.is_input), tuple(node.input_tensors), tuple(node.outputs),
                     node.arguments.fill_in)


def keras_history(tensor):
    """Where a symbolic tensor of a graph model comes from: ``(operation, node_index, tensor_index)``, the
    ``KerasTensor._keras_history`` record (Keras 3.0); None for a tensor of no graph."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return tuple(history)


def keras_history_layer(tensor):
    """The layer (or operation) that made a symbolic tensor of a graph model, or None."""
    history = keras_history(tensor)
    return None if history is None else history[0]


def node_inputs(operation, node_index: int) -> tuple:
    """The tensors the ``node_index``-th call of ``operation`` read (``Operation._inbound_nodes``, Keras 3.0)."""
    return tuple(operation._inbound_nodes[node_index].input_tensors)


# --------------------------------------------------------------------------- TensorFlow
def fold_in(key, data):
    """A new stateless key from ``key`` (int64 of shape (2,)) and an integer: TensorFlow's
    ``tf.random.experimental.stateless_fold_in`` (TF 2.11), the counter-based key split that keys the
    noise by (seed, site, pass)."""
    return tf.random.experimental.stateless_fold_in(key, data)


def distribute_values_from_function(strategy, value_fn):
    """One value per replica of ``strategy``, made by ``value_fn(context)``:
    ``Strategy.experimental_distribute_values_from_function`` (TF 2.4)."""
    return strategy.experimental_distribute_values_from_function(value_fn)


def local_results(strategy, value) -> tuple:
    """The per-replica parts of a distributed value on this worker: ``Strategy.experimental_local_results``
    (TF 2.1)."""
    return strategy.experimental_local_results(value)


def saved_model_endpoint(layer):
    """The TensorFlow function a ``keras.layers.TFSMLayer`` calls, whose ``structured_input_signature``
    gives the endpoint's input specs: ``TFSMLayer.call_endpoint_fn`` (Keras 3.0), set when the layer loads."""
    try:
        return layer.call_endpoint_fn
    except AttributeError:
        raise _missing("`keras.layers.TFSMLayer.call_endpoint_fn`",
                       "the TensorFlow function of a loaded SavedModel's endpoint") from None


#: The text TensorFlow's retracing warning contains (``tensorflow/python/eager/polymorphic_function``).
RETRACING_MESSAGE = "triggered tf.function retracing"


class _RetracingOf(logging.Filter):
    def __init__(self, owner: str):
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (RETRACING_MESSAGE in message and self.owner in message)


def hide_retracing_reports(owner: str) -> logging.Filter:
    """Drop TensorFlow's "excessive retracing" warnings about functions whose name contains ``owner``.

    TensorFlow counts traces per code object, so every engine tracing the same step code once is
    reported as retracing; the reports about other functions are kept. TensorFlow has no switch for
    this: the filter sits on its logger (``tf.get_logger()``) and matches the message text, which only
    silences the report (a changed text brings the warning back; nothing else depends on it).
    Installed once per ``owner``; the filter is returned.
    """
    logger = tf.get_logger()
    for existing in logger.filters:
        if isinstance(existing, _RetracingOf) and existing.owner == owner:
            return existing
    added = _RetracingOf(owner)
    logger.addFilter(added)
    return added


# --------------------------------------------------------------------------- the self-check
_CHECKED = False


def check(model=None) -> None:
    """Fail loudly if the installed Keras lacks a piece mcdrop relies on.

    What Keras' classes must have is checked once per process; what a graph model must have (``model``,
    if given) is checked for that model, by attribute look-ups. Raises :class:`KerasCompatibilityError`
    naming the Keras version, the missing piece and the supported range.
    """
    global _CHECKED
    if not _CHECKED:
        # The probes make a few small Keras objects, named, eagerly even inside a tf.function. Keras seeds a
        # new layer's initializers from Python's `random`: its state is put back, so building an engine
        # does not change the weights of the next model the user builds.
        state = random.getstate()
        try:
            with tf.init_scope():
                for piece, what, probe in _CLASS_PIECES:
                    _probe(piece, what, probe)
        finally:
            random.setstate(state)
        _CHECKED = True
    if model is not None:
        check_model(model)


def check_model(model) -> None:
    """The graph pieces of one model: for a graph model (or a built Sequential) its node table, input and
    output structures, the node API and the history of its output tensors."""
    if isinstance(model, keras.Sequential):
        _probe("`Sequential._functional`", "the graph behind a built Sequential model",
               lambda: hasattr(model, "_functional"))
        model = model._functional
        if model is None:
            return
    if not isinstance(model, _require("keras.src.models.functional.Functional")):
        return
    for piece, what, probe in _GRAPH_PIECES:
        _probe(piece, what, lambda probe=probe: probe(model))


def _probe(piece: str, what: str, probe: Callable[[], Any]) -> None:
    try:
        ok = probe()
    except KerasCompatibilityError:
        raise
    except Exception as err:  # any failure of a probe is the piece being absent or changed
        raise _missing(piece, what, f"{type(err).__name__}: {err}") from err
    if not ok:
        raise _missing(piece, what)


def _has_method(cls, name: str, *params: str) -> bool:
    method = getattr(cls, name, None)
    if not callable(method):
        return False
    found = list(inspect.signature(method).parameters)
    return all(p in found for p in params)


def _mask_counts() -> bool:
    lstm = keras.layers.LSTMCell(1, recurrent_dropout=0.5, seed=0, name="mcdrop_compat_lstm")
    gru = keras.layers.GRUCell(1, recurrent_dropout=0.5, seed=0, name="mcdrop_compat_gru")
    return dropout_mask_count(lstm) == 4 and dropout_mask_count(gru) == 3


def _dense_is_affine() -> bool:
    """What the engine's fold (``PassContext.dropout_matmul``) computes in place of a plain ``Dense``: its
    output from ``kernel`` (LoRA included), ``bias`` and ``activation``, on a small float32 example."""
    dense = keras.layers.Dense(3, activation="tanh", name="mcdrop_compat_dense")
    x = np.arange(8, dtype="float32").reshape(2, 4) / 8.0
    y = np.asarray(dense(x))
    expected = np.tanh(x @ np.asarray(dense.kernel) + np.asarray(dense.bias))
    return (dense.dtype_policy.quantization_mode is None and dense.variable_dtype == dense.compute_dtype
            and np.allclose(y, expected, rtol=1e-5, atol=1e-6))


def _training_arg() -> bool:
    return (call_takes_training(keras.layers.BatchNormalization(name="mcdrop_compat_batchnorm")) is True
            and call_takes_training(keras.layers.Flatten(name="mcdrop_compat_flatten")) is False)


def _context_args() -> bool:
    flatten = keras.layers.Flatten(name="mcdrop_compat_flatten")  # `call` without `training`
    return "training" in flatten._call_context_args and accepts_training(flatten)


def _own_seed_generators() -> bool:
    layer = keras.layers.Layer(name="mcdrop_compat_layer")
    layer.generator = keras.random.SeedGenerator(seed=0, name="mcdrop_compat_seed")  # tracked by Keras
    return [id(g) for g in layer._seed_generators] == [id(layer.generator)]


def _seed_generator_shadowing() -> bool:
    """A shadowed ``next`` is what Keras' random ops draw from: two draws from one generator agree when its
    ``next`` returns a fixed seed (unshadowed, they differ), and the undo removes the shadow."""
    generator = keras.random.SeedGenerator(seed=0, name="mcdrop_compat_seed")
    fixed = tf.constant([3, 5], tf.int64)
    undo = shadow_seed_generator(generator, lambda ordered=True: fixed)
    try:
        first = keras.random.uniform((4,), seed=generator)
        second = keras.random.uniform((4,), seed=generator)
    finally:
        undo()
    return bool(tf.reduce_all(first == second)) and "next" not in vars(generator)


_CLASS_PIECES = [
    *((f"`{name}`", what, lambda name=name: _require(name) is not None) for name, (_, what) in _IMPORTS.items()),
    ("`Layer._flatten_layers(include_self, recursive)`", "the traversal of layers nested in layers",
     lambda: _has_method(keras.layers.Layer, "_flatten_layers", "include_self", "recursive")),
    ("`Layer._call_has_training_arg`", "which layers' `call` takes `training`", _training_arg),
    ("`Layer._call_context_args`", "passing training=False to every layer of a graph", _context_args),
    ("`Layer._seed_generators`", "the seed generators an opted-in layer draws its noise from",
     _own_seed_generators),
    ("`SeedGenerator.next` called by keras.random", "keying a layer's own noise by mcdrop's seed",
     _seed_generator_shadowing),
    ("`SpatialDropout1D/2D/3D._get_noise_shape(inputs)`", "the noise shape of spatial dropout",
     lambda: all(issubclass(cls, BaseSpatialDropout) and _has_method(cls, "_get_noise_shape", "inputs")
                 for cls in (keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                             keras.layers.SpatialDropout3D))),
    (f"`Attention.{ATTENTION_SCORES}(scores, value, scores_mask, training)`",
     "the dropout on the attention weights of Attention and AdditiveAttention",
     lambda: _has_method(keras.layers.Attention, ATTENTION_SCORES, "scores", "value", "scores_mask", "training")
     and issubclass(keras.layers.AdditiveAttention, keras.layers.Attention)),
    ("the `DropoutRNNCell` mask methods (`get_dropout_mask`, `get_recurrent_dropout_mask`, `reset_*`)",
     "the RNN dropout masks",
     lambda: all(_has_method(DropoutRNNCell, name) for name in _CELL_MASK_METHODS)
     and all(issubclass(c, DropoutRNNCell) for c in (keras.layers.SimpleRNNCell, keras.layers.GRUCell,
                                                     keras.layers.LSTMCell))),
    ("`dropout_mask_count` of LSTMCell and GRUCell", "one RNN dropout mask per gate", _mask_counts),
    ("`Dense.call` as `activation(inputs @ kernel + bias)`, `dtype_policy.quantization_mode`, `variable_dtype`",
     "folding a dropout's mask into the kernel of the Dense layer that reads it", _dense_is_affine),
    ("`Sequential._functional`", "the graph behind a built Sequential model",
     lambda: keras.Sequential(name="mcdrop_compat_sequential")._functional is None),
    ("`tf.random.experimental.stateless_fold_in`", "the keyed noise streams",
     lambda: callable(tf.random.experimental.stateless_fold_in)),
    ("`tf.distribute.Strategy.experimental_distribute_values_from_function` and "
     "`experimental_local_results`", "sampling on several devices",
     lambda: all(callable(getattr(tf.distribute.Strategy, name, None)) for name in
                 ("experimental_distribute_values_from_function", "experimental_local_results"))),
]


def _nodes_ok(model) -> bool:
    nodes = list(graph_nodes(model))
    return bool(nodes) and all(callable(node.fill_in) for node in nodes)


def _history_ok(model) -> bool:
    for tensor in model.outputs:
        history = keras_history(tensor)
        if history is None or len(history) != 3:
            return False
        operation, node_index, _ = history
        node_inputs(operation, node_index)
    return True


_GRAPH_PIECES = [
    ("`Functional._inputs_struct` and `Functional._outputs_struct`", "how a graph model's inputs and "
     "outputs nest (a dict of outputs stays a dict)",
     lambda m: m._inputs_struct is not None and m._outputs_struct is not None),
    ("`Functional._nodes_by_depth` and the Node API (`operation`, `is_input`, `input_tensors`, `outputs`, "
     "`arguments.fill_in`)", "the graph walk that computes what no noise reaches once", _nodes_ok),
    ("`KerasTensor._keras_history` and `Operation._inbound_nodes`",
     "the output activations, which decide how an output is read", _history_ok),
]

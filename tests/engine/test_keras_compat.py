"""mcdrop.engine._keras_compat: each accessor against real Keras objects, the self-check on this Keras,
and the self-check failing loudly (Keras version, missing piece, supported range) with a piece taken away.

The scan that keeps every private Keras/TF name in that one module is in ``test_private_names.py``.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from mcdrop.engine import _keras_compat as compat

L = keras.layers
ROOT = Path(__file__).resolve().parents[2]


# -- models: one of each kind the engine reads ----------------------------------------------------
def _functional():
    """Two inputs (a dict), two outputs (a dict), a Dense called twice, a keras.ops operation."""
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = L.Dense(4, name="shared")
    h = keras.ops.add(shared(a), shared(b))
    h = L.Dropout(0.5, name="drop")(h)
    out = {"p": L.Dense(3, activation="softmax", name="probs")(h), "y": L.Dense(1, name="value")(h)}
    return keras.Model({"a": a, "b": b}, out)


def _sequential():
    return keras.Sequential([keras.Input((5,)), L.Dense(3, name="d1"), L.Dropout(0.2, name="dr"),
                             L.Dense(2, name="d2")])


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3)
        self.drop = L.Dropout(0.5)

    def call(self, x, training=False):
        return self.drop(self.dense(x), training=training)


def _rnn():
    return keras.Sequential([keras.Input((6, 3)), L.LSTM(4, dropout=0.3, recurrent_dropout=0.3, name="lstm"),
                             L.Dense(2)])


def _spatial():
    return keras.Sequential([keras.Input((5, 5, 4)), L.SpatialDropout2D(0.5, name="sd")])


def _attention():
    inp = keras.Input((4, 6))
    out = L.MultiHeadAttention(num_heads=2, key_dim=3, dropout=0.5, name="mha")(inp, inp)
    return keras.Model(inp, L.Flatten()(out))


# -- layers ------------------------------------------------------------------------------------------
def test_flatten_layers_reaches_nested_layers_in_order():
    model = _attention()
    layers = compat.flatten_layers(model)
    assert layers[0] is model
    mha = model.get_layer("mha")
    assert mha in layers and mha._dropout_layer in layers  # the Dropout inside MultiHeadAttention
    assert len({id(layer) for layer in layers}) == len(layers)
    assert compat.flatten_layers(mha, include_self=False) == [
        layer for layer in compat.flatten_layers(mha) if layer is not mha]
    assert model not in compat.flatten_layers(model, include_self=False)
    seq = _sequential()
    inner = compat.flatten_layers(seq, include_self=False)
    assert isinstance(inner[0], L.InputLayer) and [layer.name for layer in inner[1:]] == ["d1", "dr", "d2"]


class _TakesTraining(L.Layer):
    def call(self, x, training=None):
        return x


def test_which_layers_take_training():
    assert compat.call_takes_training(L.Dropout(0.5))
    assert compat.call_takes_training(_TakesTraining())
    assert not compat.call_takes_training(L.Flatten())
    assert compat.accepts_training(L.Flatten())  # a layer passes `training` on even when `call` has none
    ops = [node.operation for node in compat.graph_nodes(_functional())]
    add = [op for op in ops if op is not None and not isinstance(op, L.Layer)]
    assert len(add) == 1 and not compat.accepts_training(add[0])  # keras.ops.add in the graph


class _OwnNoise(L.Layer):
    def __init__(self):
        super().__init__()
        self.generator = keras.random.SeedGenerator(7)

    def call(self, x, training=None):
        return x + keras.random.normal(keras.ops.shape(x), seed=self.generator)


def test_seed_generators():
    drop = L.Dropout(0.5, seed=1)
    assert compat.seed_generators(drop) == [drop.seed_generator]
    own = _OwnNoise()
    assert compat.seed_generators(own) == [own.generator]
    assert compat.seed_generators(L.Flatten()) == []


def test_shadow_sets_an_instance_attribute_and_undo_restores_the_layer():
    layer = L.Dense(2)
    layer.build((None, 3))
    x = np.ones((1, 3), "float32")
    undo = compat.shadow(layer, "call", lambda inputs, *a, **k: inputs[:, :2] * 0 + 5)
    assert "call" in vars(layer)
    np.testing.assert_array_equal(layer(x), np.full((1, 2), 5.0))
    undo()
    assert "call" not in vars(layer)
    np.testing.assert_allclose(layer(x), x @ layer.kernel.numpy() + layer.bias.numpy(), rtol=1e-6)
    marker = object()
    object.__setattr__(layer, "probe", marker)
    undo = compat.shadow(layer, "probe", 1)
    assert layer.probe == 1
    undo()
    assert layer.probe is marker


def test_a_shadowed_seed_generator_keys_keras_own_noise():
    generator = keras.random.SeedGenerator(3)
    seed = tf.constant([11, 12], tf.int64)
    undo = compat.shadow_seed_generator(generator, lambda ordered=True: seed)
    first = keras.random.uniform((5,), seed=generator)
    second = keras.random.uniform((5,), seed=generator)
    undo()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, tf.random.stateless_uniform((5,), seed=seed))  # TF's own draw
    assert not np.array_equal(keras.random.uniform((5,), seed=generator), keras.random.uniform((5,), seed=generator))


@pytest.mark.parametrize("cls, shape, expected", [
    (L.SpatialDropout1D, (2, 7, 4), (2, 1, 4)),
    (L.SpatialDropout2D, (2, 3, 3, 4), (2, 1, 1, 4)),
    (L.SpatialDropout3D, (2, 2, 3, 3, 4), (2, 1, 1, 1, 4)),
])
def test_spatial_dropout_noise_shape_is_one_draw_per_feature_map(cls, shape, expected):
    layer = cls(0.5)
    assert compat.is_spatial_dropout(layer)
    assert tuple(int(d) for d in compat.spatial_noise_shape(layer, tf.ones(shape))) == expected


def test_spatial_noise_shape_honours_channels_first():
    layer = L.SpatialDropout2D(0.5, data_format="channels_first")
    assert tuple(int(d) for d in compat.spatial_noise_shape(layer, tf.ones((2, 4, 3, 3)))) == (2, 4, 1, 1)
    assert not compat.is_spatial_dropout(L.Dropout(0.5))
    assert compat.is_spatial_dropout(_spatial().get_layer("sd"))


@pytest.mark.parametrize("cls", [L.Attention, L.AdditiveAttention])
def test_attention_apply_scores_is_softmax_then_weighted_sum(cls):
    layer = cls(dropout=0.5)
    rng = np.random.default_rng(0)
    scores, value = rng.standard_normal((2, 3, 4)).astype("float32"), rng.standard_normal((2, 4, 5)).astype("float32")
    out, weights = compat.attention_apply_scores(layer)(scores, value, training=False)
    expected = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(out, expected @ value, rtol=1e-5, atol=1e-6)
    # the bound method comes from the class, so a shadow on the instance is not what it calls
    undo = compat.shadow(layer, compat.ATTENTION_SCORES, lambda *a, **k: None)
    assert compat.attention_apply_scores(layer)(scores, value)[0] is not None
    undo()


def test_dropout_rnn_cells_and_their_mask_counts():
    for cell in (L.SimpleRNNCell(2), L.GRUCell(2), L.LSTMCell(2)):
        assert compat.is_dropout_rnn_cell(cell)
    assert compat.is_dropout_rnn_cell(L.ConvLSTM2D(2, 3, recurrent_dropout=0.2).cell)
    assert not compat.is_dropout_rnn_cell(L.Dense(2))
    assert compat.dropout_mask_count(L.LSTMCell(2, recurrent_dropout=0.2)) == 4  # one per gate
    assert compat.dropout_mask_count(L.GRUCell(2, recurrent_dropout=0.2)) == 3
    assert compat.dropout_mask_count(L.SimpleRNNCell(2, dropout=0.2)) is None
    assert compat.dropout_mask_count(L.LSTMCell(2, dropout=0.2)) is None  # implementation 2: one mask


def test_cell_mask_methods_are_what_keras_rnn_asks_for():
    """Shadowing the four methods changes what the RNN computes in training: an all-zero input mask makes
    the LSTM see zeros."""
    lstm = L.LSTM(3, dropout=0.5)
    x = np.random.default_rng(1).standard_normal((2, 4, 3)).astype("float32")
    lstm(x)
    cell, asked = lstm.cell, []

    def get_input(step_input):
        asked.append("input")
        return tf.zeros_like(step_input)

    methods = compat.cell_mask_methods(get_input=get_input, get_recurrent=lambda step_input: None,
                                       reset_input=lambda: asked.append("reset"), reset_recurrent=lambda: None)
    assert all(callable(getattr(cell, name)) for name in methods)
    undo = [compat.shadow(cell, name, fn) for name, fn in methods.items()]
    try:
        masked = lstm(x, training=True)
    finally:
        for restore in undo:
            restore()
    np.testing.assert_allclose(masked, lstm(np.zeros_like(x), training=False), rtol=1e-6, atol=1e-7)
    assert "input" in asked and "reset" in asked


# -- graphs ------------------------------------------------------------------------------------------
def test_functional_graph_of_each_kind_of_model():
    functional = _functional()
    assert compat.functional_graph(functional) is functional
    seq = _sequential()
    inner = compat.functional_graph(seq)
    assert inner is not None and inner is not seq
    assert [op.name for op in (n.operation for n in compat.graph_nodes(inner)) if isinstance(op, L.Dense)] == [
        "d1", "d2"]
    assert compat.functional_graph(keras.Sequential([L.Dense(2)])) is None  # not built: no graph yet
    assert compat.functional_graph(_Subclassed()) is None
    assert compat.functional_graph(_rnn()) is not None


def test_inputs_and_outputs_structures():
    functional = _functional()
    assert set(compat.inputs_structure(functional)) == {"a", "b"}
    assert set(compat.outputs_structure(functional)) == {"p", "y"}  # a dict of outputs stays a dict
    inp = keras.Input((3,))
    listed = keras.Model([inp], [L.Dense(1)(inp), L.Dense(2)(inp)])
    assert isinstance(compat.outputs_structure(listed), list) and len(compat.outputs_structure(listed)) == 2
    assert compat.inputs_structure(_Subclassed()) is None
    assert compat.outputs_structure(_Subclassed()) is None


def test_graph_nodes_run_each_node_after_its_inputs():
    model = _functional()
    seen = {id(t) for t in model.inputs}
    ops = []
    for node in compat.graph_nodes(model):
        if node.is_input:
            seen.update(id(t) for t in node.outputs)
            continue
        assert all(id(t) in seen for t in node.inputs)
        seen.update(id(t) for t in node.outputs)
        ops.append(node.operation)
    assert [op.name for op in ops if isinstance(op, L.Layer)].count("shared") == 2
    assert {id(t) for t in model.outputs} <= seen
    # fill_in: the node's call arguments with the tensors it reads replaced by values
    last = [n for n in compat.graph_nodes(model) if n.operation is model.get_layer("probs")][0]
    value = tf.ones((1, 4))
    args, _ = last.fill_in({id(last.inputs[0]): value})
    assert args[0] is value


def test_keras_history_of_output_tensors():
    model = _functional()
    out = model.outputs
    layers = [compat.keras_history_layer(t) for t in out]
    assert {layer.name for layer in layers} == {"probs", "value"}
    shared = model.get_layer("shared")
    node_indices = sorted(compat.keras_history(t)[1] for t in [n.outputs[0] for n in compat.graph_nodes(model)
                                                                  if n.operation is shared])
    assert node_indices == [0, 1]  # a layer called twice has two inbound nodes
    assert compat.node_inputs(shared, 0)[0] is compat.inputs_structure(model)["a"]  # its first call
    assert compat.keras_history(np.ones(2)) is None and compat.keras_history_layer(tf.ones(2)) is None


def test_output_activation_reading_uses_the_history_on_every_kind_of_model():
    from mcdrop.engine.view import output_activations

    assert sorted(map(str, output_activations(_functional()))) == ["linear", "softmax"]
    seq = keras.Sequential([keras.Input((3,)), L.Dense(2, activation="sigmoid"), L.Dropout(0.5)])
    assert output_activations(seq) == ["sigmoid"]  # read through the Dropout's inbound node
    assert output_activations(_Subclassed()) == [None]


# -- TensorFlow --------------------------------------------------------------------------------------
def test_fold_in_makes_distinct_reproducible_keys():
    key = tf.constant([1, 2], tf.int64)
    a, b = compat.fold_in(key, 0), compat.fold_in(key, 1)
    assert a.shape == (2,) and a.dtype.is_integer
    np.testing.assert_array_equal(a, compat.fold_in(tf.constant([1, 2], tf.int64), 0))
    assert not np.array_equal(a, b) and not np.array_equal(a, key)


def test_distributed_values_and_local_results():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    values = compat.distribute_values_from_function(
        strategy, lambda ctx: tf.constant(10 + ctx.replica_id_in_sync_group))
    local = compat.local_results(strategy, strategy.run(lambda v: v * 2, args=(values,)))
    assert [int(v) for v in local] == [20]


def test_saved_model_endpoint_gives_the_serving_input_specs(tmp_path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2 * x}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    layer = L.TFSMLayer(str(tmp_path / "sm"), call_endpoint="serving_default")
    args, kwargs = compat.saved_model_endpoint(layer).structured_input_signature
    (spec,) = [*args, *kwargs.values()]
    assert tuple(spec.shape) == (None, 3) and spec.dtype == tf.float32


def test_saved_model_endpoint_missing_fails_loudly():
    with pytest.raises(compat.KerasCompatibilityError,
                       match=rf"Keras {re.escape(keras.__version__)}.*TFSMLayer\.call_endpoint_fn"):
        compat.saved_model_endpoint(L.Flatten())


class CompiledSampler:  # a stand-in whose method's name is in TensorFlow's message, as the engine's is
    def step(self, x):
        return x * 2


def _retrace_six_times(fn):
    for i in range(6):
        tf.function(fn)(tf.constant(float(i)))


def test_retracing_reports_about_our_step_are_hidden_and_others_kept():
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Keep()
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        def other(x):
            return x + 1

        _retrace_six_times(other)  # TensorFlow's own text still carries what the filter matches
        assert messages and all(compat.RETRACING_MESSAGE in m for m in messages)
        messages.clear()
        added = compat.hide_retracing_reports("CompiledSampler")
        assert compat.hide_retracing_reports("CompiledSampler") is added  # installed once
        assert sum(f is added for f in logger.filters) == 1
        _retrace_six_times(CompiledSampler().step)
        assert messages == []

        def another(x):
            return x - 1

        _retrace_six_times(another)
        assert messages and all("another" in m for m in messages)
    finally:
        logger.removeHandler(handler)


# -- the self-check ----------------------------------------------------------------------------------
def test_the_supported_range_is_pyprojects():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (keras_req,) = [r for r in requirements if re.match(r"keras\s*[<>=]", r)]
    bounds = sorted(part.strip() for part in keras_req[len("keras"):].split(","))
    assert bounds == sorted(compat.SUPPORTED_KERAS.split(","))
    oldest = re.search(r"^KERAS_OLDEST=(\S+)", (ROOT / ".ci" / "keras-oldest").read_text(), re.M).group(1)
    assert oldest.startswith(re.search(r">=([\d.]+)", compat.SUPPORTED_KERAS).group(1))


@pytest.mark.parametrize("make", [_functional, _sequential, _Subclassed, _rnn, _spatial, _attention])
def test_the_self_check_passes_on_this_keras(monkeypatch, make):
    monkeypatch.setattr(compat, "_CHECKED", False)  # run the once-per-process part again
    compat.check(make())
    assert compat._CHECKED


def _fails(monkeypatch, piece, model=None):
    monkeypatch.setattr(compat, "_CHECKED", False)
    pattern = (rf"Keras {re.escape(keras.__version__)}: it needs .*{piece}.*missing or changed.*"
               rf"keras{re.escape(compat.SUPPORTED_KERAS)} \(pyproject\.toml\)")
    with pytest.raises(compat.KerasCompatibilityError, match=pattern):
        compat.check(model)


@pytest.mark.parametrize("name, piece", [
    ("BaseSpatialDropout", "spatial_dropout.BaseSpatialDropout"),
    ("DropoutRNNCell", "dropout_rnn_cell.DropoutRNNCell"),
    ("_Functional", "functional.Functional"),
])
def test_a_missing_import_is_named(monkeypatch, name, piece):
    monkeypatch.setattr(compat, name, None)
    _fails(monkeypatch, re.escape(piece))


def _delete(monkeypatch, owner, name):
    """Take ``name`` away from ``owner`` (from the class of its MRO that defines it)."""
    if isinstance(owner, type):
        owner = next(cls for cls in owner.__mro__ if name in vars(cls))
    monkeypatch.delattr(owner, name)


@pytest.mark.parametrize("owner, name, piece", [
    (L.Layer, "_flatten_layers", r"Layer\._flatten_layers"),
    (L.Attention, "_apply_scores", r"Attention\._apply_scores"),
    (L.SpatialDropout2D, "_get_noise_shape", r"_get_noise_shape"),
    ("DropoutRNNCell", "get_recurrent_dropout_mask", r"DropoutRNNCell. mask methods"),
    (tf.random.experimental, "stateless_fold_in", r"stateless_fold_in"),
    (tf.distribute.Strategy, "experimental_local_results", r"experimental_local_results"),
])
def test_a_missing_method_is_named(monkeypatch, owner, name, piece):
    owner = compat.DropoutRNNCell if owner == "DropoutRNNCell" else owner
    _delete(monkeypatch, owner, name)
    _fails(monkeypatch, piece)


def test_a_missing_mask_count_is_named(monkeypatch):
    init = L.LSTMCell.__init__

    def without_count(self, *args, **kwargs):
        init(self, *args, **kwargs)
        vars(self).pop("dropout_mask_count", None)

    monkeypatch.setattr(L.LSTMCell, "__init__", without_count)
    _fails(monkeypatch, "`dropout_mask_count` of LSTMCell")


def test_a_dense_that_is_no_longer_affine_is_named(monkeypatch):
    """The engine folds dropout masks into Dense kernels assuming ``activation(x @ kernel + bias)``: a Keras
    whose Dense computes anything else is refused, not folded wrongly."""
    call = L.Dense.call
    monkeypatch.setattr(L.Dense, "call", lambda self, inputs, training=None: call(self, inputs) * 2.0)
    _fails(monkeypatch, r"`Dense\.call` as `activation\(inputs @ kernel \+ bias\)`")


def test_keras_no_longer_drawing_from_seed_generator_next_is_named(monkeypatch):
    """A Keras whose random ops stopped asking the generator's ``next`` (here: a fresh seed per draw)."""
    import keras.src.backend.tensorflow.random as tf_random

    counter = iter(range(1, 1000))
    monkeypatch.setattr(tf_random, "draw_seed", lambda seed: tf.constant([next(counter), 0], tf.int64))
    _fails(monkeypatch, r"`SeedGenerator\.next` called by keras\.random")


@pytest.mark.parametrize("attribute, piece", [
    ("_nodes_by_depth", r"Functional\._nodes_by_depth"),
    ("_outputs_struct", r"Functional\._inputs_struct` and `Functional\._outputs_struct"),
])
def test_a_graph_model_without_a_piece_is_named(monkeypatch, attribute, piece):
    model = _functional()
    compat.check(model)
    object.__delattr__(model, attribute)
    _fails(monkeypatch, piece, model)


def test_a_graph_model_whose_outputs_lost_their_history_is_named(monkeypatch):
    model = _sequential()
    object.__delattr__(compat.functional_graph(model).outputs[0], "_keras_history")
    _fails(monkeypatch, r"KerasTensor\._keras_history", model)


def test_a_sequential_without_its_graph_is_named(monkeypatch):
    model = _sequential()
    object.__delattr__(model, "_functional")
    _fails(monkeypatch, r"Sequential\._functional", model)


def test_an_engine_is_refused_instead_of_losing_rnn_dropout(monkeypatch):
    """On today's main a Keras without ``DropoutRNNCell`` at its old path left RNN dropout out of the
    passes (the import fell back to ``()``): an LSTM-only model was refused as deterministic, or with other
    dropout its RNN ran without noise. Now building an engine names the missing piece."""
    monkeypatch.setattr(compat, "DropoutRNNCell", None)
    monkeypatch.setattr(compat, "_CHECKED", False)
    with pytest.raises(compat.KerasCompatibilityError, match=r"DropoutRNNCell.*RNN cells"):
        mcdrop.MCDropout(_rnn(), num_samples=2, verbose=0)


def test_the_check_runs_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(compat, "_CHECKED", False)
    monkeypatch.setattr(compat, "_CLASS_PIECES", [("`probe`", "counting", lambda: calls.append(1) or True)])
    for _ in range(3):
        compat.check(_sequential())
    assert calls == [1]


def test_every_accessor_says_what_it_stands_for():
    for name in compat.__all__:
        value = getattr(compat, name)
        if callable(value) and not isinstance(value, type) or name in ("GraphNode", "KerasCompatibilityError"):
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_engine_docs_show_the_real_message(monkeypatch):
    """docs/engine.md quotes the error for a Keras 3.16.0 without DropoutRNNCell: it is what check() says."""
    block = re.search(r"```text\n(KerasCompatibilityError: .*?)```", (ROOT / "docs" / "engine.md").read_text(), re.S)
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    monkeypatch.setattr(compat, "DropoutRNNCell", None)
    monkeypatch.setattr(compat, "_CHECKED", False)
    with pytest.raises(compat.KerasCompatibilityError) as raised:
        compat.check()
    assert " ".join(block.group(1).split()) == f"KerasCompatibilityError: {raised.value}"


def test_the_check_leaves_python_random_and_layer_names_alone(monkeypatch):
    """Keras seeds a new layer's initializers from Python's `random`: had the probes consumed it, the next
    model a user builds after their first engine would start from other weights."""
    import random

    monkeypatch.setattr(compat, "_CHECKED", False)
    before_name = L.Dense(1).name
    state = random.getstate()
    compat.check()
    assert random.getstate() == state
    after_name = L.Dense(1).name

    def number(name):  # dense, dense_1, dense_2, ...
        found = re.search(r"_(\d+)$", name)
        return int(found.group(1)) if found else 0

    assert number(after_name) == number(before_name) + 1  # the probes' layers are named: no counter moved

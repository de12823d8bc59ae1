"""Run a model's forward pass under T passes, computing what no noise reaches once.

For Sequential and Functional models (and Functional models nested in them) the
graph is walked node by node, as Keras' own ``Functional`` does, but every tensor
carries a flag: *deterministic* tensors hold ``n`` rows, *stochastic* ones hold
``Tc * n`` rows (pass-major). A node runs on ``n`` rows while no stochastic
layer feeds it; the first stochastic layer on a path is where its input is
tiled over the passes; where a deterministic branch meets a stochastic one (a
skip connection around a dropout) the deterministic side is tiled then.

Models without a graph (subclassed ``keras.Model``) are run whole on the tiled
batch: correct, but without the compute-once saving.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import tree

from mcdrop.engine import _keras_compat as compat

__all__ = ["run_model", "functional_of"]


def functional_of(model):
    """The Functional graph behind ``model``, or None (subclassed / unbuilt Sequential)."""
    return compat.functional_graph(model)


def _tile(ctx, value):
    # A Keras mask (Embedding(mask_zero=True), Masking) is a tensor of the graph in Keras 3, passed to the
    # next layer as its `mask` argument and tiled like any other input there: nothing rides on the value.
    return ctx.tile(value)


def _contains_stochastic(op, stochastic_ids, memo) -> bool:
    key = id(op)
    if key not in memo:
        if key in stochastic_ids:
            memo[key] = True
        elif isinstance(op, keras.layers.Layer):
            memo[key] = any(id(sub) in stochastic_ids for sub in compat.flatten_layers(op, include_self=False))
        else:
            memo[key] = False
    return memo[key]


def _call_op(op, args, kwargs):
    if compat.accepts_training(op):
        kwargs = {**kwargs, "training": False}
    return op(*args, **kwargs)


def _readers(nodes, outputs) -> dict:
    """id(tensor) -> the nodes that read it; a model output counts as one more reader (None)."""
    readers = {}
    for node in nodes:
        for t in {id(t): t for t in node.inputs}.values():
            readers.setdefault(id(t), []).append(node)
    for t in outputs:
        readers.setdefault(id(t), []).append(None)
    return readers


def _plain_dense(node, tensor) -> bool:
    """Whether ``node`` is a call of a plain ``keras.layers.Dense`` on ``tensor`` alone, a matrix
    (rows, features), with its weights in the compute dtype (no mixed precision, not quantised)."""
    dense = node.operation
    if type(dense) is not keras.layers.Dense or len(node.inputs) != 1 or len(tuple(tensor.shape)) != 2:
        return False
    if getattr(dense.dtype_policy, "quantization_mode", None) is not None:
        return False
    if dense.compute_dtype != dense.variable_dtype or tensor.dtype != dense.compute_dtype:
        return False
    marker = object()
    args, kwargs = node.fill_in({id(tensor): marker})
    return len(args) == 1 and args[0] is marker and set(kwargs) <= {"training"}


class _Runner:
    def __init__(self, ctx, stochastic_ids, foldable=frozenset()):
        self.ctx = ctx
        self.stochastic_ids = stochastic_ids
        self.foldable = foldable
        self.memo = {}

    def _fold_target(self, node, readers):
        """The node of the ``Dense`` layer that alone reads the output of ``node``, a foldable dropout
        (see :meth:`~mcdrop.engine.noise.PassContext.dropout_matmul`); None if there is none."""
        if id(node.operation) not in self.foldable or len(node.inputs) != 1 or len(node.outputs) != 1:
            return None
        users = readers.get(id(node.outputs[0]), [])
        if len(users) != 1 or users[0] is None or id(users[0].operation) in self.stochastic_ids:
            return None
        return users[0] if _plain_dense(users[0], node.outputs[0]) else None

    def run(self, functional, flat_inputs, flags):
        """Walk ``functional`` on flat inputs with their flags; return flat outputs and flags."""
        values, stoch = {}, {}
        for ref, value, flag in zip(functional.inputs, flat_inputs, flags):
            values[id(ref)], stoch[id(ref)] = value, flag
        nodes = list(compat.graph_nodes(functional))
        tiles = {}  # id(tensor) -> its rows tiled over the passes, made once in this run of the graph
        readers = _readers(nodes, functional.outputs) if self.foldable else {}
        for node in nodes:
            op = node.operation
            if not op or node.is_input:
                continue
            if any(id(t) not in values for t in node.inputs):
                continue
            if node.outputs and all(id(t) in values for t in node.outputs):
                continue  # a Dense already run, folded with the dropout before it
            target = self._fold_target(node, readers) if self.foldable else None
            if target is not None:  # the dropout's patched call runs both layers, the mask in the kernel
                (ref,) = node.inputs
                out = op.call(values[id(ref)], into=target.operation, untiled=not stoch[id(ref)])
                values[id(target.outputs[0])], stoch[id(target.outputs[0])] = out, True
                continue
            in_flags = [stoch[id(t)] for t in node.inputs]
            noisy_op = _contains_stochastic(op, self.stochastic_ids, self.memo)
            nested = functional_of(op) if isinstance(op, keras.Model) else None
            if nested is not None and noisy_op:
                args, _ = node.fill_in(values)
                inner_inputs = tree.flatten(args[0] if len(args) == 1 else list(args))
                inner_flags = [self._flag_of(v, node, stoch, values) for v in inner_inputs]
                outs, out_flags = self.run(nested, inner_inputs, inner_flags)
            else:
                make_stochastic = noisy_op or any(in_flags)
                local = dict(values)
                if make_stochastic:
                    for t, flag in zip(node.inputs, in_flags):
                        if not flag:
                            if id(t) not in tiles:  # once per tensor, however many nodes (or arguments
                                tiles[id(t)] = _tile(self.ctx, values[id(t)])  # of one, as MHA(x, x)) read it
                            local[id(t)] = tiles[id(t)]
                args, kwargs = node.fill_in(local)
                outs = tree.flatten(_call_op(op, args, kwargs))
                out_flags = [make_stochastic] * len(outs)
            for ref, value, flag in zip(node.outputs, outs, out_flags):
                values[id(ref)], stoch[id(ref)] = value, flag
        outputs = [values[id(ref)] for ref in functional.outputs]
        return outputs, [stoch[id(ref)] for ref in functional.outputs]

    @staticmethod
    def _flag_of(value, node, stoch, values):
        for t in node.inputs:
            if values.get(id(t)) is value:
                return stoch[id(t)]
        return False


def run_model(model, flat_inputs, structure, ctx, stochastic_ids, record=None, foldable=frozenset()):
    """Per-pass outputs of ``model`` on ``flat_inputs`` (each (n, ...)), as a flat list of
    (Tc * n, ...) tensors, pass-major, in the order of ``model.outputs``. ``structure`` is the
    nesting of the user's input (used to call models that have no graph). For those models the
    nesting of what ``call`` returned (a dict or list of outputs) is stored in ``record["outputs"]``
    (leaves replaced by None), since no graph declares it. ``foldable``: the ids of the dropout layers whose
    mask may be folded into a ``Dense`` layer that alone reads their output (consistent masks only)."""
    functional = functional_of(model)
    if functional is None:
        tiled = [_tile(ctx, x) for x in flat_inputs]
        arg = tree.pack_sequence_as(structure, tiled)
        result = model(arg, training=False)
        if record is not None:
            record["outputs"] = tree.map_structure(lambda _: None, result)
        return [tf.convert_to_tensor(o) for o in tree.flatten(result)]
    outputs, flags = _Runner(ctx, stochastic_ids, foldable).run(functional, list(flat_inputs), [False] * len(flat_inputs))
    return [o if flag else _tile(ctx, o) for o, flag in zip(outputs, flags)]

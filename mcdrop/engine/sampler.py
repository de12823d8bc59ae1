"""The compiled sampler: one traced function per model and input signature.

A call takes a chunk of rows and a range of absolute pass indices and returns the
per-pass outputs, shaped (T_chunk, n, ...). The batch dimension and the number of
passes are left unknown in the signature, so a new batch size or a shorter last
pass chunk does not retrace. ``run_eagerly`` runs the same Python step without
``tf.function``, for debugging.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from mcdrop.engine import _keras_compat
from mcdrop.engine.graph import functional_of, run_model
from mcdrop.engine.noise import PassContext
from mcdrop.engine.view import StochasticView, patched

__all__ = ["CompiledSampler", "ModelFailedError", "plan_chunks", "widest_activation", "pass_widths",
           "charged_width", "CPU_ROW_PASSES", "MIN_ROWS"]


# TensorFlow counts traces per code object: every MCDropout (one per model, as in an active-learning loop that
# trains a new model each round) traces the same `step` code once, which TF reports as "excessive retracing".
# Each of our functions traces once per input signature (the tests check), so those reports about our step
# are dropped; any other function's are kept.
_keras_compat.hide_retracing_reports("CompiledSampler")

#: Bytes of live activations budgeted per (row × pass × activation unit): the widest activation,
#: its input and a temporary, in float32.
_BYTES_PER_UNIT = 4 * 3


def widest_activation(model) -> int:
    """Largest number of values per row among the model's intermediate tensors (graph models),
    or a conservative guess from inputs and outputs (models without a graph)."""
    def width(tensors) -> int:  # values per row; an unknown dimension counts as 64
        return max((math.prod(d if d is not None else 64 for d in tuple(t.shape)[1:]) for t in tensors), default=1)

    functional = functional_of(model)
    if functional is not None:
        return width(t for node in _keras_compat.graph_nodes(functional) for t in node.outputs)
    known = list(getattr(model, "inputs", None) or []) + list(getattr(model, "outputs", None) or [])
    return max(width(known) * 8, 1024)


def pass_widths(model, stochastic_ids) -> tuple[int, int]:
    """(values per row and pass, values per row computed once), for the memory plan.

    For a Sequential model of plain layers, the layers before the first stochastic one run once per
    row (the trunk) and the rest once per row and pass, so a call of r rows and P passes holds about
    ``r * (trunk + P * tiled)`` values. Any other model is charged its widest activation per
    row-pass and no trunk (:func:`widest_activation`): that over-counts a trunk no noise reaches but
    never under-counts.
    """
    fallback = (widest_activation(model), 0)
    layers = model.layers if isinstance(model, keras.Sequential) else None
    if not layers or any(isinstance(layer, keras.Model) for layer in layers):
        return fallback
    try:
        previous = math.prod(d or 64 for d in tuple(model.inputs[0].shape)[1:])
        trunk, tiled, noisy = previous, 0, False
        for layer in layers:
            width = math.prod(d or 64 for d in tuple(layer.output.shape)[1:])
            if id(layer) in stochastic_ids and not noisy:
                noisy, tiled = True, previous  # the first stochastic layer's input is tiled too
            if noisy:
                tiled = max(tiled, width)
            else:
                trunk = max(trunk, width)
            previous = width
    except (AttributeError, ValueError, TypeError, IndexError):
        return fallback
    return (tiled, trunk) if noisy else fallback


def charged_width(widths: tuple[int, int], passes: int) -> int:
    """Values charged per row-pass for calls of ``passes`` passes: ``tiled + ceil(trunk / passes)``."""
    tiled, trunk = widths
    return tiled + -(-trunk // max(1, passes))


#: Row-passes per compiled call when no accelerator is present, at most (the memory budget may allow
#: fewer). Each call costs a fixed few milliseconds besides its work (dispatch, the reductions, the
#: host's merge), and on the 2-core Xeon of ``benchmarks/engine.py`` the MLP ran 31% slower in calls
#: of 8,192 row-passes than in one call of 50,000 (113 ms against 86 ms) and the CNN 55% slower; at
#: about 1 µs per row-pass for the MLP, 65,536 row-passes make a call of some 65 ms, so the fixed
#: cost stays near 5%. It is a number of row-passes, the same whatever T is, so memory does not grow
#: with the number of passes. On a GPU the whole memory budget is used instead.
CPU_ROW_PASSES = 65536

#: Fewest rows a call runs all T passes for before passes are split into chunks.
MIN_ROWS = 8


def plan_chunks(num_rows: int | None, num_samples: int, widest: int, memory_budget: int,
                batch_size: int | None = None, passes_per_chunk: int | None = None,
                row_passes: int | None = None) -> tuple[int, int]:
    """Rows per compiled call and passes per call.

    A call holds at most ``memory_budget`` bytes of activations (rows × passes × widest activation ×
    12 bytes) and, when ``row_passes`` is given, at most that many row-passes. All T passes go in one
    call whenever at least ``MIN_ROWS`` rows fit under all of them (then the layers no noise reaches
    run exactly once per row); otherwise passes are chunked. Explicit sizes win.

    Every call of one ``predict`` has the same number of rows (the last block is padded). When the
    number of rows ``num_rows`` is known, the blocks are balanced (``ceil(N / k)`` rows for the
    fewest blocks ``k`` under the cap), so padding wastes fewer than ``k`` rows.
    """
    units = max(1, memory_budget // (widest * _BYTES_PER_UNIT))  # row-passes that fit
    if row_passes is not None:
        units = max(1, min(units, row_passes))
    if passes_per_chunk is None:
        passes_per_chunk = num_samples if units // num_samples >= MIN_ROWS else max(1, units // MIN_ROWS)
    passes_per_chunk = min(passes_per_chunk, num_samples)
    if batch_size is None:
        cap = max(1, units // passes_per_chunk)
        if num_rows:
            blocks = -(-num_rows // cap)
            batch_size = -(-num_rows // blocks)
        else:
            batch_size = cap
    return int(batch_size), int(passes_per_chunk)


class ModelFailedError(Exception):
    """The model itself failed on a block of input (raised by :class:`CompiledSampler`, caught by the
    engine, which reports the input as one the model cannot take). ``cause`` is TensorFlow's error."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class CompiledSampler:
    """Per-pass outputs of a model under keyed noise, traced once per input signature."""

    def __init__(self, model, view: StochasticView, *, mask: str, run_eagerly: bool = False, strategy=None,
                 jit_compile: bool = False):
        self.model = model
        self.jit_compile = jit_compile
        self.view = view
        self.mask = mask
        self.run_eagerly = run_eagerly
        self.strategy = strategy
        self._stochastic_ids = view.stochastic_ids
        self._functions = {}
        self.traces = 0  # how many times a step was traced (tests watch for retracing)
        #: the nesting of a graphless model's outputs (a dict or list of None), once it has run
        self.output_structure = None
        #: the stochastic layers the last traced step never called (their noise is never sampled)
        self.silent = ()

    def _step(self, flat_inputs, structure, passes, seed, row_offset):
        self.traces += 1
        rows = tf.shape(flat_inputs[0])[0]
        ctx = PassContext(passes, rows, seed, row_offset, self.mask)
        with patched(self.view, ctx) as ran:
            record = {}
            foldable = self.view.foldable_ids if self.mask == "consistent" else frozenset()
            outputs = run_model(self.model, flat_inputs, structure, ctx, self._stochastic_ids, record, foldable)
            if "outputs" in record:
                self.output_structure = record["outputs"]
        self.silent = tuple(layer for layer in (*self.view.leaves, *self.view.rnns, *self.view.attentions,
                                                *self.view.custom) if id(layer) not in ran)
        return [ctx.unflatten(o) for o in outputs]

    def _signature(self, flat, spec_shapes):
        """The batch axis stays unknown (a new batch size does not retrace); every other axis takes the
        data's concrete size, also where the model declares None: some Keras layers are wrong over an
        unknown axis inside ``tf.function`` (``TimeDistributed`` over an unknown time axis slices by the
        batch size, and so raises or drops steps). A new length there is a new signature, traced once."""
        return [tf.TensorSpec((None, *(int(d) for d in a.shape[1:])), tf.as_dtype(a.dtype)) for a in flat]

    def function(self, flat, structure, spec_shapes=None, then=None):
        """The compiled step for inputs like ``flat``: ``fn(flat_inputs, passes, seed, row_offset)`` gives the
        per-pass outputs. With ``then`` (a hashable callable), ``fn`` takes the number of valid passes as a
        fifth argument and returns ``then(outputs, valid)`` instead, computed in the same function (the
        reductions: :class:`mcdrop.engine._reduce.Reductions`)."""
        specs = self._signature(flat, spec_shapes)
        key = (tuple((s.shape.as_list().__repr__(), s.dtype.name) for s in specs), repr(tf.nest.map_structure(
            lambda _: 0, structure)) if structure is not None else None, then)
        if key not in self._functions:
            def step(flat_inputs, passes, seed, row_offset, *valid):
                outputs = self._step(list(flat_inputs), structure, passes, seed, row_offset)
                return outputs if then is None else then(outputs, *valid)

            if self.run_eagerly:
                fn = step
            else:
                extra = [] if then is None else [tf.TensorSpec([], tf.int32)]
                fn = tf.function(step, input_signature=[
                    specs,
                    tf.TensorSpec([None], tf.int32),
                    tf.TensorSpec([2], tf.int64),
                    tf.TensorSpec([], tf.int64),
                    *extra,
                ], reduce_retracing=True, autograph=False, jit_compile=self.jit_compile)
            self._functions[key] = fn
        return self._functions[key]

    @property
    def replicas(self) -> int:
        return 1 if self.strategy is None else int(self.strategy.num_replicas_in_sync)

    def __call__(self, flats, structure, passes: np.ndarray, seed: np.ndarray, offsets, spec_shapes=None, *,
                 then=None, valid: int | None = None):
        """Per-pass outputs of one block per replica (one block without a strategy): a list, per model
        output, of tensors shaped (blocks, T_chunk, n, ...), left where they were computed (the device).
        All blocks have the same number of rows. With ``then`` (one block, no strategy), what
        ``then(outputs, valid)`` returns, computed in the same compiled call (see :meth:`function`).

        Raises
        ------
        ModelFailedError
            The model failed on the input (TensorFlow's own error is its ``cause``).
        tf.errors.ResourceExhaustedError
            Out of memory: the caller may retry with fewer rows.
        """
        if then is not None and self.strategy is not None:
            raise ValueError("Invalid value for argument `then`: expected None under a distribution strategy "
                             f"(the reductions run after the replicas' passes), received {then!r}.")
        try:
            fn = self.function(flats[0], structure, spec_shapes, then)
            passes = tf.constant(passes, tf.int32)
            seed = tf.constant(seed, tf.int64)
            if self.strategy is None:
                (flat,), (offset,) = flats, offsets
                args = ([tf.convert_to_tensor(a) for a in flat], passes, seed, tf.constant(offset, tf.int64))
                if then is not None:
                    return fn(*args, tf.constant(valid, tf.int32))
                return [o[None] for o in fn(*args)]
            return self._replicated(fn, flats, passes, seed, offsets)
        except tf.errors.ResourceExhaustedError:
            raise
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise ModelFailedError(err) from err

    def _replicated(self, fn, flats, passes, seed, offsets):
        """One block per replica (the last group padded with copies of its last block).

        Keyed noise does not depend on which device draws it, and each replica's block has the shape
        a single device would use, so the results are the single-device results.
        """
        used = len(flats)
        flats = list(flats) + [flats[-1]] * (self.replicas - used)
        offsets = list(offsets) + [offsets[-1]] * (self.replicas - used)

        def value_fn(ctx):
            i = ctx.replica_id_in_sync_group
            return [tf.convert_to_tensor(a) for a in flats[i]], tf.constant(offsets[i], tf.int64)

        per_replica = _keras_compat.distribute_values_from_function(self.strategy, value_fn)
        result = self.strategy.run(lambda inputs: fn(inputs[0], passes, seed, inputs[1]), args=(per_replica,))
        out = []
        for per_output in result:
            local = _keras_compat.local_results(self.strategy, per_output)
            out.append(tf.stack(list(local[:used])))
        return out

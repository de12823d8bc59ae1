"""``MCDropout``: the public engine.

The class holds the configuration and the public methods; the work is done by small parts, each in
its own module: the block planner (:mod:`mcdrop.engine._plan`), the retry runner that halves a block
on out-of-memory (:mod:`mcdrop.engine._runner`), the reductions over passes on the device
(:mod:`mcdrop.engine._reduce`), and the summariser with its sinks (:mod:`mcdrop.engine._summarise`).
"""

from __future__ import annotations

import sys
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from mcdrop._validation import MAX_SEED, check_choice, check_finite_rows, check_int, invalid
from mcdrop.accumulators import nonfinite_rows
from mcdrop.engine import _keras_compat
from mcdrop.engine import inputs as _inputs
from mcdrop.engine._heads import HeadRules
from mcdrop.engine._plan import count_rows as _count_rows
from mcdrop.engine._plan import pass_chunks, pieces
from mcdrop.engine._reduce import PassReducer
from mcdrop.engine._runner import RetryRunner
from mcdrop.engine._summarise import (Chunks, MemorySink, PieceSummary, RawStep, ReducedStep, StoreSink,
                                      nonfinite_error as _nonfinite_error)
from mcdrop.engine.adaptive import predict_adaptive
from mcdrop.engine.graph import functional_of
from mcdrop.engine.rates import resolve_rates
from mcdrop.engine.sampler import (CPU_ROW_PASSES, CompiledSampler, ModelFailedError, charged_width, pass_widths,
                                   plan_chunks)
from mcdrop.engine.view import build_view, output_activations
from mcdrop.predictive import MASK_MODES

__all__ = ["MCDropout"]

_DEFAULT_BUDGET = 512 * 2**20
_NONFINITE_ADVICE = "Pass allow_nonfinite_inputs=True if the model is built to take them."


class MCDropout:
    """Monte Carlo dropout predictions from a trained Keras model.

    Dropout (and the other stochastic regularisers) stays active; every other layer runs
    in inference mode. T passes run batched in one compiled function, and their outputs
    are accumulated chunk by chunk into a prediction object.

    Parameters
    ----------
    model : keras.Model
        Any Keras 3 model: Sequential, Functional (multi-input/output, nested) or subclassed.
        It is read, never modified.
    num_samples : int, default 50
        T, the number of stochastic passes.
    seed : int or None
        With a seed, an input's dropout masks are bit-identical whatever the batch size, chunk
        size, input order or number of calls, and its outputs are bit-identical for any batching of
        the input stream and any number of calls (under a reordering or another block size they agree
        to float32 rounding: TensorFlow's kernels vectorise by shape and position). Without a seed,
        each call draws a fresh one (recorded on the prediction as ``seed``).
    task : {"classification", "regression"}, optional
        Detected from the output activation when omitted (softmax/sigmoid: classification).
        A sequence or dict gives one per model output.
    outputs : {"probs", "logits"}, optional
        What a classifier returns; detected when omitted. With logits, softmax is applied per pass
        before averaging.
    heteroscedastic : {"log_variance", "variance", "std", "softplus_std"}, optional
        Declares a Gaussian regression head: the last axis holds a mean half and a
        variance-parameter half in this parameterisation (see :mod:`mcdrop.heads`).
    mask : {"consistent", "per_example"}, default "consistent"
        Consistent masks share pass t's noise across all inputs (one draw of the network per pass:
        BatchBALD and joint predictions need it). ``"per_example"`` draws independent noise per
        input, as Keras does in training.
    gaussian_noise : bool, default False
        Also make ``GaussianNoise`` layers stochastic.
    stochastic_layers : sequence of layer classes, layers or layer names, optional
        The user's own stochastic layers (a StochasticDepth, say) to run in training mode, seeded per
        pass like the built-in ones: each must take ``training`` and draw its noise with a
        ``keras.random.SeedGenerator`` it owns. See the engine docs for an example.
    rate : float or mapping, optional
        Sample at other dropout rates than the trained ones (the model is untouched): a float in
        [0, 1) for every stochastic layer, or a mapping from layer name or layer class to rate
        (an unknown name is an error). 0 turns a layer off. Inverted dropout keeps scaling kept units
        by 1/(1 - rate), so each unit's expectation holds but its variance, and after a nonlinearity
        the predictive mean, follow the new rate; see :mod:`mcdrop.engine.rates` for Gaussian,
        alpha, RNN and attention dropout, and :func:`mcdrop.tune_rate` to choose it on held-out data.
    allow_deterministic : bool, default False
        Accept a model with no stochastic layer (all passes then agree). Off by default, since it
        is usually a mistake that would silently report zero uncertainty.
    batch_size, passes_per_chunk : int, optional
        Rows and passes per compiled call. When omitted: all T passes per call and as many rows as
        ``memory_budget`` allows (the layers before the first stochastic layer charged once per row,
        the rest once per row and pass), and on a CPU at most ``CPU_ROW_PASSES`` row-passes per call
        (:mod:`mcdrop.engine.sampler`), a fixed amount of work, so memory does not grow with T.
    memory_budget : int, default 512 MiB
        Bytes of activations a compiled call may hold.
    run_eagerly : bool, default False
        Run the step without ``tf.function`` (debugging).
    verbose : {"auto", 0, 1}, default "auto"
        Progress bar (in rows; it moves as the passes run, and stays at 100% when done): 1 always,
        0 never, "auto" when stderr is a terminal and a prediction takes more than one compiled call.
    strategy : tf.distribute.Strategy, optional
        Split each chunk's rows across the strategy's replicas (e.g. ``MirroredStrategy`` over
        several GPUs). With a seed, results equal single-device results.
    jit_compile : bool or "auto", default False
        Compile the sampling step and the reductions with XLA. Off by default: on the CPUs measured
        (``benchmarks/engine.py``) it was not faster. ``"auto"``: XLA on a GPU, not on a CPU. With a
        seed, either setting gives reproducible results that are bit-identical for any batching of the
        input stream (under XLA also for another block size). XLA draws its masks with its own
        implementation of the stateless random streams, which gives other bits from the same key: a
        seeded XLA run and a seeded run without it are two different (equally valid) sets of draws,
        whose statistics agree within Monte Carlo error, not to float rounding; the reductions
        themselves agree to float rounding.
    allow_nonfinite_inputs : bool, default False
        Accept NaN or infinite values in floating inputs. Off by default: most models turn a NaN
        feature into a finite, confident-looking output (a ReLU may map NaN to 0), so ``predict``
        and ``sample`` refuse such rows before the model runs, naming how many and which. Set it for
        a model built to take NaN (one that masks or imputes missing values itself).

    Examples
    --------
    >>> mc = MCDropout(model, num_samples=50, seed=0)          # doctest: +SKIP
    >>> pred = mc.predict(x_test)                                # doctest: +SKIP
    >>> pred.mean.shape, pred.mutual_information.shape           # doctest: +SKIP
    ((360, 10), (360,))
    """

    def __init__(self, model, num_samples: int = 50, seed: int | None = None, *, task=None, outputs=None,
                 heteroscedastic=None, mask: str = "consistent", gaussian_noise: bool = False, stochastic_layers=(),
                 allow_deterministic: bool = False, rate=None, batch_size: int | None = None,
                 passes_per_chunk: int | None = None, memory_budget: int = _DEFAULT_BUDGET,
                 run_eagerly: bool = False, verbose="auto", strategy=None,
                 allow_nonfinite_inputs: bool = False, jit_compile=False):
        if not isinstance(model, keras.Model):
            raise invalid("model", "a keras.Model (Keras 3)", model, error=TypeError)
        self.model = model
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if seed is not None:  # masks are keyed by a 62-bit seed: a larger one would repeat a smaller one's
            seed = check_int(seed, "seed", minimum=0, maximum=MAX_SEED)
        self.seed = seed
        self.mask = check_choice(mask, "mask", MASK_MODES)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        self.passes_per_chunk = (None if passes_per_chunk is None
                                 else check_int(passes_per_chunk, "passes_per_chunk", minimum=1))
        self.memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
        self.verbose = check_choice(verbose, "verbose", ("auto", 0, 1, True, False))
        self.allow_nonfinite_inputs = check_choice(allow_nonfinite_inputs, "allow_nonfinite_inputs", (False, True))
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise invalid("strategy", "a tf.distribute.Strategy", strategy, error=TypeError)
        self.rate = rate
        rates = resolve_rates(model, rate)
        self.view = build_view(model, gaussian_noise=bool(gaussian_noise), stochastic_layers=stochastic_layers,
                               rates=rates)
        if not self.view.is_stochastic and not allow_deterministic and not rates:  # rates: asked for by name
            raise invalid(
                "model", "a model with at least one stochastic layer (Dropout, SpatialDropout*, "
                "GaussianDropout, AlphaDropout, RNN dropout/recurrent_dropout, MultiHeadAttention, Attention or "
                "AdditiveAttention dropout) with a rate > 0, or a layer opted in with stochastic_layers", model,
                detail="Every pass would be identical. Pass allow_deterministic=True to accept this.",
            )
        self._spec = _inputs.input_spec(model)
        self._activations = output_activations(model)
        self._on_accelerator = bool(tf.config.list_logical_devices("GPU"))
        self.jit_compile = check_choice(jit_compile, "jit_compile", (False, True, "auto"))
        jit = self._on_accelerator if jit_compile == "auto" else bool(jit_compile)
        self.sampler = CompiledSampler(model, self.view, mask=self.mask, run_eagerly=bool(run_eagerly),
                                       strategy=strategy, jit_compile=jit)
        self._reducer = PassReducer(run_eagerly=bool(run_eagerly), jit_compile=jit)
        self._rules = HeadRules(has_graph=functional_of(model) is not None, activations=self._activations,
                                given=(task, outputs, heteroscedastic), output_names=self._output_names)
        self._heads = None  # the heads of the last prediction, for `heads` (never read by a run)
        self._widths = pass_widths(model, self.view.stochastic_ids)  # (per row and pass, per row once)

    # -- outputs ---------------------------------------------------------------------------------------
    def _outputs_structure(self):
        """How the model's outputs nest: declared by its graph, or (a model without one) as its ``call``
        returned them on the first run (None before that)."""
        structure = _keras_compat.outputs_structure(self.model)
        if structure is None and functional_of(self.model) is None:
            structure = self.sampler.output_structure
        return structure

    def _output_names(self):
        structure = self._outputs_structure()
        if isinstance(structure, dict):
            return [path[0] for path, _ in tree.flatten_with_path(structure)]
        if functional_of(self.model) is None and structure is not None:
            return [str(i) for i in range(len(tree.flatten(structure)))]
        return [getattr(t, "name", str(i)) for i, t in enumerate(getattr(self.model, "outputs", []) or [])]

    def _graph_output_shapes(self):
        """Each output's (shape, dtype) as the graph declares them, in the order of the sampler's outputs;
        None for a model without a graph or where an axis after the first is left open."""
        functional = functional_of(self.model)
        try:
            found = [(tuple(t.shape), np.dtype(t.dtype)) for t in functional.outputs] if functional else None
        except (AttributeError, TypeError):
            return None
        if not found or any(len(s) < 2 or None in s[1:] for s, _ in found):
            return None
        return found

    def _output_labels(self, n):
        """Names for messages: dict keys, or the layers that make the outputs, or indices."""
        names = self._output_names()
        if isinstance(self._outputs_structure(), dict) and len(names) == n:
            return names
        outputs = list(getattr(self.model, "outputs", None) or []) if functional_of(self.model) is not None else []
        layers = [_keras_compat.keras_history_layer(t) for t in outputs]
        if len(layers) == n and all(layer is not None for layer in layers):
            return [layer.name for layer in layers]
        return [str(i) for i in range(n)]

    def _pack_outputs(self, flat):
        if len(flat) == 1:
            return flat[0]
        structure = self._outputs_structure()
        if isinstance(structure, dict):
            return dict(zip(self._output_names(), flat))
        return list(flat)

    # -- running ---------------------------------------------------------------------------------------
    def _seed_pair(self):
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % (2**62))
        return seed, np.array([seed % (2**62), 0x4D43_44524F50], dtype=np.int64)

    def plan(self, num_rows: int | None = None, *, batch_size: int | None = None) -> tuple[int, int]:
        """(rows, passes) of every compiled call for an input of ``num_rows`` rows (None: a stream).

        Every call of one ``predict`` has this shape; ``predict`` of the same rows split elsewhere
        (across processes, say) reproduces its bits when each part starts at a multiple of ``rows``
        and is given ``row_offset`` and ``batch_size=rows``.
        """
        passes = min(self.passes_per_chunk or self.num_samples, self.num_samples)
        for _ in range(8):  # the trunk's share per row-pass grows as the passes per call shrink
            rows, planned = plan_chunks(num_rows, self.num_samples, charged_width(self._widths, passes),
                                        self.memory_budget, batch_size or self.batch_size, self.passes_per_chunk,
                                        row_passes=None if self._on_accelerator else CPU_ROW_PASSES)
            if planned >= passes:
                break
            passes = planned
        return rows, planned

    def _progress(self, verbose, total, calls):
        """The progress bar, in rows (fractions of a row while its passes run), shown from the start.

        It stays on screen at 100% when done, until whatever prints next (a summary) follows it."""
        from tqdm.auto import tqdm

        verbose = self.verbose if verbose is None else verbose
        show = sys.stderr.isatty() and calls > 1 if verbose == "auto" else bool(verbose)
        return tqdm(total=total, disable=not show, desc="MC dropout, rows", unit="rows", leave=True)

    def _pass_chunks(self, passes):
        """Absolute pass indices per call (see :func:`mcdrop.engine._plan.pass_chunks`)."""
        return pass_chunks(self.num_samples, passes)

    def _run(self, x, *, batch_size, verbose, step, receiver, row_offset=0, chunks=None):
        """Run every pass chunk (or the given ``chunks``: (pass indices, valid passes) pairs) over ``x`` in
        blocks of rows through ``step`` (see :class:`~mcdrop.engine._runner.RetryRunner`); yield each
        piece's receiver, in row order, once its passes ran. The input's values are checked first (a
        stream: each block as it arrives, before any of its rows runs)."""
        streaming = _inputs.is_streaming(x)
        n = None if streaming else _count_rows(x)
        if not streaming and not self.allow_nonfinite_inputs:  # the whole input, before any pass runs
            check_finite_rows(_inputs.as_flat(x, self._spec)[0], "x", row_offset=row_offset, total=n,
                              advice=_NONFINITE_ADVICE)
        check = None if not streaming or self.allow_nonfinite_inputs else lambda flat, offset: check_finite_rows(
            flat, "x", row_offset=offset, advice="The stream was not read further. " + _NONFINITE_ADVICE)
        rows, passes = self.plan(n, batch_size=batch_size)
        chunk_list = (lambda: self._pass_chunks(passes)) if chunks is None else (lambda: iter(chunks))
        calls = -(-self.num_samples // passes) * (-(-n // rows) if n else 2)  # a stream: "more than one"
        with self._progress(verbose, n, calls) as bar:
            runner = RetryRunner(step, chunk_list, replicas=self.sampler.replicas, progress=bar,
                                 num_samples=self.num_samples)
            yield from runner.run(pieces(x, self._spec, rows, row_offset, check), receiver)

    def _call(self, group, indices, seed_pair, *, then=None, valid=None):
        """Per-pass outputs for one piece per replica: a list (per output) of tensors (replicas, Tc, n, ...);
        with ``then``, what it makes of them in the same compiled call (see :class:`CompiledSampler`)."""
        try:
            return self.sampler([p.flat for p in group], group[0].structure, indices, seed_pair,
                                [p.offset for p in group], self._spec.shapes if self._spec is not None else None,
                                then=then, valid=valid)
        except ModelFailedError as failure:
            flat = group[0].flat
            raise invalid("x", "input the model can take", flat[0] if len(flat) == 1 else f"{len(flat)} arrays",
                          detail=f"The model failed on it: {_root_cause(failure.cause)}") from failure.cause

    def _check_noise_reaches(self, constant, passes):
        """Warn, once per engine, naming the output, when every pass of the first chunk with two passes or
        more gave the same values (``constant``: per output) although the model has stochastic layers:
        their noise never reaches that output (a Dropout called only under ``if training:`` in a
        subclassed ``call``, say), and its variance would read exactly 0."""
        if getattr(self, "_noise_checked", False) or not self.view.is_stochastic:
            return
        silent = self.sampler.silent
        if silent and not getattr(self, "_silent_warned", False):
            self._silent_warned = True
            warnings.warn(
                f"These stochastic layers never ran in a pass, so their noise is never sampled: "
                f"{', '.join(f'{type(layer).__name__}({layer.name})' for layer in silent)}. A layer called only "
                "under `if training:` in a subclassed `call` is skipped at inference; call it unconditionally "
                "(mcdrop makes it stochastic).", UserWarning, stacklevel=7)
        if not constant or passes < 2:
            return
        self._noise_checked = True
        same = [name for name, flag in zip(self._output_labels(len(constant)), constant) if flag]
        if same:
            label = ", ".join(repr(n) for n in same) if len(constant) > 1 else "the model's output"
            why = ("a stochastic layer it depends on never ran (see the warning above)" if silent else
                   "the noise does not change it for these inputs (all-zero activations into the dropout, say)")
            warnings.warn(
                f"Every pass gave identical values for {label} (first {passes} passes) although the model has "
                f"stochastic layers ({self.view.describe()}): {why}. Its variance and mutual information are "
                "exactly 0.", UserWarning, stacklevel=7)

    def sample(self, x, *, batch_size: int | None = None, verbose=None, row_offset: int = 0):
        """The raw per-pass outputs, passes first: a numpy array (T, N, ...), or a list/dict of them for
        a multi-output model. Logits stay logits. ``row_offset`` as for :meth:`predict`."""
        collected = []  # per piece of rows: per output, (T, rows, ...)
        for piece in self._run(x, batch_size=batch_size, verbose=verbose, step=RawStep(self, self._seed_pair()[1]),
                               receiver=Chunks, row_offset=check_int(row_offset, "row_offset", minimum=0)):
            collected.append([np.concatenate(a, axis=0) for a in zip(*piece.chunks)])
        outputs = [np.concatenate(parts, axis=1) for parts in zip(*collected)]
        for out in outputs:
            bad = nonfinite_rows(out)
            if bad:
                raise _nonfinite_error(bad, out.shape[1])
        return self._pack_outputs(outputs)

    def predict(self, x, *, return_samples: bool | None = None, batch_size: int | None = None, verbose=None,
                out=None, overwrite: bool = False, row_offset: int = 0, num_samples=None,
                tolerance: float | None = None, max_samples: int | None = None):
        """Run T stochastic passes over ``x`` and summarise them.

        Parameters
        ----------
        x : array-like, tf.Tensor, list/dict of them, tf.data.Dataset or iterable of batches
        return_samples : bool, optional
            Keep the per-pass outputs on the prediction (``samples``, (T, N, ...)). By default kept
            for regression (the predictive mixture needs them) and not for classification, where
            memory stays O(N·C).
        batch_size : int, optional
            Rows per compiled call (overrides the memory-budget choice).
        out : str or Path, optional
            Write the per-row results block by block to this folder (see :mod:`mcdrop.store`) instead
            of holding them in memory, and return the prediction memory-mapped from it: a pool of any
            length is scored in memory independent of its size. A multi-output model gets one
            sub-folder per output.
        overwrite : bool, default False
            Replace an existing, non-empty ``out`` folder.
        row_offset : int, default 0
            Index of ``x``'s first row in a larger pool scored in parts (the per-example masks of a
            row are keyed by its index in the pool; see :meth:`plan`).
        num_samples : "auto", optional
            ``"auto"``: choose T by the error you accept — passes are added in chunks until the Monte
            Carlo standard error of every reported mean (every row and class or output dimension)
            is below ``tolerance``, or ``max_samples`` is reached (with a warning). See
            :func:`mcdrop.engine.adaptive.predict_adaptive`. None: the engine's ``num_samples``.
        tolerance : float, optional
            The largest standard error accepted (``num_samples="auto"`` only; required then).
        max_samples : int, default 1000
            The most passes ``num_samples="auto"`` runs.

        Returns
        -------
        ClassificationPrediction or RegressionPrediction (a list/dict of them for multi-output models).
        """
        if return_samples is not None and not isinstance(return_samples, bool):
            raise invalid("return_samples", "True, False or None", return_samples, error=TypeError)
        row_offset = check_int(row_offset, "row_offset", minimum=0)
        if num_samples is not None or tolerance is not None or max_samples is not None:
            return predict_adaptive(self, x, num_samples=num_samples, tolerance=tolerance,
                                    max_samples=max_samples, return_samples=return_samples,
                                    batch_size=batch_size, verbose=verbose, out=out, overwrite=overwrite,
                                    row_offset=row_offset)
        seed, seed_pair = self._seed_pair()
        step = ReducedStep(self, seed_pair, keep_samples=return_samples)
        with self._sink(x, out, overwrite) as sink:
            for piece in self._run(x, batch_size=batch_size, verbose=verbose, step=step, row_offset=row_offset,
                                   receiver=lambda: PieceSummary(step, return_samples, {"mask": self.mask,
                                                                                        "seed": seed})):
                sink.append(piece.result())
            results = sink.result()
        self._heads = step.heads
        return self._pack_outputs(results)

    def _sink(self, x, out, overwrite):
        """Where finished pieces go: memory, or the store folder ``out`` (context managers)."""
        return MemorySink(x) if out is None else StoreSink(x, out, overwrite, self._output_names)

    @property
    def heads(self):
        """How each output was read by the last prediction (None before the first one)."""
        return self._heads

    def __repr__(self) -> str:
        return (f"MCDropout(model={self.model.name!r}, num_samples={self.num_samples}, seed={self.seed}, "
                f"mask={self.mask!r}, stochastic=[{self.view.describe()}])")


def _root_cause(err: BaseException) -> str:
    """The line of a failed step that says what went wrong.

    A traced step's failure reads "Graph execution error:", then where the failing op was defined
    (``File ...`` lines), then the kernel's own message and the op's name in ``[[...]]``: the message is
    the last line that is none of these. Any other error's own first line is its cause.
    """
    text = str(getattr(err, "message", None) or err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if not lines[0].startswith("Graph execution error"):
        return lines[0]
    skip = ("Graph execution error", "Detected at node", "File \"", "[[", "Stack trace for op definition")
    causes = [line for line in lines if not line.startswith(skip) and not line.endswith("defined at (most recent "
                                                                                          "call last):")]
    return causes[-1].split(" [Op:")[0] if causes else lines[0]



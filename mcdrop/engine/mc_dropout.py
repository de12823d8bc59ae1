"""``MCDropout``: the public engine."""

from __future__ import annotations

import sys
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from mcdrop._validation import MAX_SEED, check_choice, check_finite_rows, check_int, invalid
from mcdrop.accumulators import nonfinite_rows
from mcdrop.engine import inputs as _inputs
from mcdrop.engine.graph import functional_of
from mcdrop.engine.rates import resolve_rates
from mcdrop.engine.sampler import CPU_ROW_PASSES, CompiledSampler, plan_chunks, widest_activation
from mcdrop.engine.view import build_view, output_activations
from mcdrop.heads import HETEROSCEDASTIC, OUTPUTS, TASKS, Head
from mcdrop.predictive import MASK_MODES, concatenate

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
        Rows and passes per compiled call; chosen under ``memory_budget`` when omitted.
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
                 allow_nonfinite_inputs: bool = False):
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
        self.sampler = CompiledSampler(model, self.view, mask=self.mask, run_eagerly=bool(run_eagerly),
                                       strategy=strategy)
        self._head_given = (task, outputs, heteroscedastic)
        self._head_args = self._check_head_args(task, outputs, heteroscedastic)
        self._heads = None  # decided on the first outputs when the graph cannot tell
        self._widest = widest_activation(model)
        self._on_accelerator = bool(tf.config.list_logical_devices("GPU"))

    # -- configuration -------------------------------------------------------------------------------
    def _per_output(self, value, name, n_outputs):
        if isinstance(value, dict):
            names = self._output_names()
            missing = [k for k in names if k not in value]
            unknown = [k for k in value if k not in names]
            if missing or unknown:
                raise invalid(name, f"a value for every model output {names}", value,
                              detail=f"Unknown output name(s): {unknown}." if unknown else None)
            return [value[k] for k in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n_outputs:
                raise invalid(name, f"one value per model output ({n_outputs})", value)
            return list(value)
        return [value] * n_outputs

    def _outputs_structure(self):
        """How the model's outputs nest: declared by its graph, or (a model without one) as its ``call``
        returned them on the first run (None before that)."""
        structure = getattr(self.model, "_outputs_struct", None)
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

    def _check_head_args(self, task, outputs, heteroscedastic, n=None):
        if n is None and functional_of(self.model) is None:
            # no graph: how many outputs (and their names) is known after the first run; check the
            # values now and match them to outputs then (_decide_heads)
            for value, name, choices in ((task, "task", TASKS), (outputs, "outputs", OUTPUTS),
                                         (heteroscedastic, "heteroscedastic", HETEROSCEDASTIC)):
                values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                    else [value]
                for v in values:
                    if v is not None:
                        check_choice(v, name, choices)
            return None
        n = len(self._activations) if n is None else n
        tasks = self._per_output(task, "task", n)
        outs = self._per_output(outputs, "outputs", n)
        hets = self._per_output(heteroscedastic, "heteroscedastic", n)
        for t, o, h in zip(tasks, outs, hets):
            if t is not None:
                check_choice(t, "task", TASKS)
            if o is not None:
                check_choice(o, "outputs", OUTPUTS)
            if h is not None:
                check_choice(h, "heteroscedastic", HETEROSCEDASTIC)
                if t == "classification":
                    raise invalid("heteroscedastic", "None for task='classification'", h)
            if o is not None and t == "regression":
                raise invalid("outputs", "None for task='regression' (it describes class scores)", o)
        if functional_of(self.model) is not None and len(self._activations) == n:
            names = self._output_names() if n > 1 else []
            for i, (t, o, h, act) in enumerate(zip(tasks, outs, hets, self._activations)):
                _check_declared_head(t, o, h, act, names[i] if len(names) == n else None)
        return tasks, outs, hets

    def _decide_heads(self, raw_outputs):
        """Pick each output's head from what was stated, the graph, or (last) the values."""
        if self._head_args is None:
            # a model without a graph: its outputs are known now; match the stated values to them
            n = len(raw_outputs)
            tasks, outs, hets = self._check_head_args(*self._head_given, n=n)
            activations = [None] * n
        else:
            tasks, outs, hets = self._head_args
            activations = self._activations
        heads = []
        for raw, task, out, het, act in zip(raw_outputs, tasks, outs, hets, activations):
            looks_like_probs = _looks_like_probs(raw)
            if looks_like_probs and act is None:
                _warn_probability_values(out, het)
            if task is None:
                if het is not None or out is None and act not in (None, "softmax", "sigmoid"):
                    task = "regression"
                elif act in ("softmax", "sigmoid") or out is not None:
                    task = "classification"
                else:
                    task = "classification" if looks_like_probs else "regression"
            if task == "classification" and out is None:
                if act in ("softmax", "sigmoid"):
                    out = "probs"
                elif act is None:
                    out = "probs" if looks_like_probs else "logits"
                else:
                    out = "logits"
            if task == "classification" and act == "sigmoid" and np.shape(raw)[-1] > 1 and out == "probs":
                raise invalid("task", "'regression' (or a softmax head) for a multi-unit sigmoid output: "
                              "independent multi-label probabilities are not a single class distribution",
                              task)
            heads.append(Head(task, out if task == "classification" else None, het))
        return heads

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
        return plan_chunks(num_rows, self.num_samples, self._widest, self.memory_budget,
                           batch_size or self.batch_size, self.passes_per_chunk,
                           row_passes=None if self._on_accelerator else CPU_ROW_PASSES)

    def _progress(self, verbose, total, calls):
        """The progress bar, in rows (fractions of a row while its passes run), shown from the start.

        It stays on screen at 100% when done, until whatever prints next (a summary) follows it."""
        from tqdm.auto import tqdm

        verbose = self.verbose if verbose is None else verbose
        if verbose == "auto":
            show = sys.stderr.isatty() and calls > 1
        else:
            show = bool(verbose)
        return tqdm(total=total, disable=not show, desc="MC dropout, rows", unit="rows", leave=True)

    def _pass_chunks(self, passes):
        """Absolute pass indices per call, generated one chunk at a time (memory independent of T);
        the last chunk is padded (its extra passes dropped) so every call has the same number of
        passes. Yields (indices of shape (passes,), number of valid passes)."""
        for start in range(0, self.num_samples, passes):
            valid = min(passes, self.num_samples - start)
            idx = np.arange(start, start + passes, dtype=np.int32)
            if valid < passes:
                idx[valid:] = start + valid - 1
            yield idx, valid

    def _run(self, x, *, batch_size, verbose, sink, seed=None, row_offset=0, pass_chunks=None):
        """Stream blocks of rows through all pass chunks. ``sink()`` makes one receiver per piece of
        rows; it gets ``feed(outputs)`` once per pass chunk, in pass order (a list per model output of
        arrays (valid passes, valid rows, ...)), then ``done()``; ``done`` is called in row order.
        ``pass_chunks``: a sequence of (pass indices, valid passes) to run instead of all T (adaptive T).
        Returns the seed used.

        A block's T outputs are never held together: each pass chunk is handed on as it leaves the
        device. Every compiled call gets exactly ``size`` rows. Under a distribution strategy each
        replica gets its own block of that size (so a replica computes what one device would). On a
        resource-exhausted error the block size halves, a warning is given once, and the same rows
        are run again with fresh receivers: nothing is lost or duplicated.
        """
        streaming = _inputs.is_streaming(x)
        n = None if streaming else _count_rows(x)
        if not streaming and not self.allow_nonfinite_inputs:  # the whole input, before any pass runs
            check_finite_rows(_inputs.as_flat(x, self._spec)[0], "x", row_offset=row_offset, total=n,
                              advice=_NONFINITE_ADVICE)
        rows, passes = self.plan(n, batch_size=batch_size)
        seed, seed_pair = seed if seed is not None else self._seed_pair()
        shapes = self._spec.shapes if self._spec is not None else None
        replicas = self.sampler.replicas
        state = {"size": rows, "warned": False, "done": 0}  # block size, OOM warning given, rows done
        calls = -(-self.num_samples // passes) * (-(-n // rows) if n else 2)  # a stream: "more than one"

        def pieces(block, offset, valid, size):
            return [(_inputs.pad([a[s:s + size] for a in block], size), offset + s, min(size, valid - s))
                    for s in range(0, valid, size)]

        def run_group(group, structure, bar):
            """Run up to `replicas` pieces of one size through every pass chunk; return their receivers
            in row order (more than given when the block size had to halve)."""
            sinks = [sink() for _ in group]
            try:
                for idx, k in (self._pass_chunks(passes) if pass_chunks is None else pass_chunks):
                    out = self._call([p for p, _, _ in group], structure, idx, seed_pair,
                                     [o for _, o, _ in group], shapes)
                    for i, (receiver, (_, _, used)) in enumerate(zip(sinks, group)):
                        receiver.feed([o[i][:k, :used] for o in out])
                        bar.update(used * k / self.num_samples)
            except tf.errors.ResourceExhaustedError:
                size = len(group[0][0][0])
                if size == 1:
                    raise
                bar.n = state["done"]  # these rows run again
                state["size"] = max(1, size // 2)
                if not state["warned"]:
                    warnings.warn(f"mcdrop ran out of memory; retrying with {state['size']} rows per call.",
                                  ResourceWarning, stacklevel=4)
                    state["warned"] = True
                smaller = [q for piece, offset, used in group
                           for q in pieces(piece, offset, used, state["size"])]
                return run_all(smaller, structure, bar)
            state["done"] += sum(used for _, _, used in group)
            bar.n = state["done"]  # whole rows again, free of the fractions' rounding
            bar.update(0)
            return sinks

        def run_all(items, structure, bar):
            done = []
            for g in range(0, len(items), replicas):
                done.extend(run_group(items[g:g + replicas], structure, bar))
            return done

        with self._progress(verbose, n, calls) as bar:
            pending, structure = [], None
            for block, structure, offset, valid in _inputs.iter_blocks(x, self._spec, rows):
                if streaming and not self.allow_nonfinite_inputs:  # each block as it arrives
                    check_finite_rows([a[:valid] for a in block], "x", row_offset=row_offset + offset,
                                      advice="The stream was not read further. " + _NONFINITE_ADVICE)
                pending.extend(pieces(block, row_offset + offset, valid, state["size"]))
                while len(pending) >= replicas:
                    group, pending = pending[:replicas], pending[replicas:]
                    for receiver in run_group(group, structure, bar):
                        receiver.done()
            for receiver in run_all(pending, structure, bar):
                receiver.done()
        return seed

    def _call(self, flats, structure, passes, seed_pair, offsets, shapes):
        """Per-pass outputs for one piece per replica: a list (per output) of (replicas, Tc, n, ...)."""
        try:
            outputs = self.sampler(flats, structure, passes, seed_pair, offsets, shapes)
        except tf.errors.ResourceExhaustedError:
            raise
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            if isinstance(err, ValueError) and str(err).startswith("Invalid value for argument"):
                raise
            first = _root_cause(err)
            flat = flats[0]
            raise invalid("x", "input the model can take", flat[0] if len(flat) == 1 else
                          f"{len(flat)} arrays", detail=f"The model failed on it: {first}") from err
        self._check_noise_reaches(outputs)
        return outputs

    def _check_noise_reaches(self, outputs):
        """Warn, once per engine, naming the output, when every pass of the first chunk with two passes or
        more gave the same values although the model has stochastic layers: their noise never reaches
        that output (a Dropout called only under ``if training:`` in a subclassed ``call``, say), and its
        variance would read exactly 0."""
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
        if not outputs or np.shape(outputs[0])[1] < 2:
            return
        self._noise_checked = True
        labels = self._output_labels(len(outputs))
        constant = [name for name, o in zip(labels, outputs) if np.array_equal(o, np.broadcast_to(o[:, :1], o.shape))]
        if constant:
            label = ", ".join(repr(n) for n in constant) if len(outputs) > 1 else "the model's output"
            why = ("a stochastic layer it depends on never ran (see the warning above)" if silent else
                   "the noise does not change it for these inputs (all-zero activations into the dropout, say)")
            warnings.warn(
                f"Every pass gave identical values for {label} (first {np.shape(outputs[0])[1]} passes) although "
                f"the model has stochastic layers ({self.view.describe()}): {why}. Its variance and mutual "
                "information are exactly 0.", UserWarning, stacklevel=7)

    def _output_labels(self, n):
        """Names for messages: dict keys, or the layers that make the outputs, or indices."""
        names = self._output_names()
        if isinstance(self._outputs_structure(), dict) and len(names) == n:
            return names
        outputs = list(getattr(self.model, "outputs", None) or []) if functional_of(self.model) is not None else []
        layers = [getattr(getattr(t, "_keras_history", None), "operation", None) for t in outputs]
        if len(layers) == n and all(layer is not None for layer in layers):
            return [layer.name for layer in layers]
        return [str(i) for i in range(n)]

    def sample(self, x, *, batch_size: int | None = None, verbose=None, row_offset: int = 0):
        """The raw per-pass outputs, passes first: a numpy array (T, N, ...), or a list/dict of them for
        a multi-output model. Logits stay logits. ``row_offset`` as for :meth:`predict`."""
        collected = []  # per piece of rows: per output, (T, rows, ...)
        keep = pieces_to(lambda chunks: collected.append([np.concatenate(a, axis=0) for a in zip(*chunks)]))
        self._run(x, batch_size=batch_size, verbose=verbose, sink=keep,
                  row_offset=check_int(row_offset, "row_offset", minimum=0))
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
        if num_samples is not None or tolerance is not None or max_samples is not None:
            from mcdrop.engine.adaptive import predict_adaptive

            return predict_adaptive(self, x, num_samples=num_samples, tolerance=tolerance,
                                    max_samples=max_samples, return_samples=return_samples,
                                    batch_size=batch_size, verbose=verbose, out=out, overwrite=overwrite,
                                    row_offset=row_offset)
        seed, seed_pair = self._seed_pair()
        collected, writers = [], None
        engine = self

        class Summarise:
            """One piece of rows: its accumulators, fed pass chunk by pass chunk."""

            def __init__(self):
                self.accs = None

            def feed(self, outputs):
                if engine._heads is None:
                    engine._heads = engine._decide_heads(outputs)
                if self.accs is None:
                    self.accs = make_accumulators(engine._heads, return_samples, {"mask": engine.mask, "seed": seed})
                feed(engine._heads, self.accs, [outputs])

            def done(self):
                nonlocal writers
                results = [acc.result() for acc in self.accs]
                self.accs = None  # the sums are no longer needed while the next piece runs
                if out is None:
                    collected.append(results)
                    return
                if writers is None:
                    writers = engine._writers(out, len(results), overwrite)
                for writer, result in zip(writers, results):
                    writer.append(result)

        self._run(x, batch_size=batch_size, verbose=verbose, sink=Summarise, seed=(seed, seed_pair),
                  row_offset=check_int(row_offset, "row_offset", minimum=0))
        if out is not None:
            if writers is None:
                raise invalid("x", "at least one row", x)
            return self._pack_outputs([writer.close() for writer in writers])
        return self._pack_outputs([concatenate(parts) for parts in zip(*collected)])

    def _writers(self, out, n_outputs, overwrite):
        from pathlib import Path

        from mcdrop.store import PredictionWriter

        if n_outputs == 1:
            return [PredictionWriter(out, overwrite=overwrite)]
        names = self._output_names() if len(self._output_names()) == n_outputs else range(n_outputs)
        return [PredictionWriter(Path(out) / str(name), overwrite=overwrite) for name in names]

    def _pack_outputs(self, flat):
        if len(flat) == 1:
            return flat[0]
        structure = self._outputs_structure()
        if isinstance(structure, dict):
            return dict(zip(self._output_names(), flat))
        return list(flat)

    @property
    def heads(self):
        """How each output is read (decided on the first prediction when the graph cannot tell)."""
        return self._heads

    def __repr__(self) -> str:
        return (f"MCDropout(model={self.model.name!r}, num_samples={self.num_samples}, seed={self.seed}, "
                f"mask={self.mask!r}, stochastic=[{self.view.describe()}])")


def pieces_to(on_piece):
    """A ``sink`` for :meth:`MCDropout._run` that hands each finished piece of rows to ``on_piece`` as the
    list of its pass chunks' outputs (each a list, per model output, of arrays (Tc, rows, ...))."""

    class Piece:
        def __init__(self):
            self.chunks = []

        def feed(self, outputs):
            self.chunks.append(outputs)

        def done(self):
            on_piece(self.chunks)

    return Piece


def make_accumulators(heads, return_samples, provenance) -> list:
    """One accumulator per output. Samples are kept when asked (``return_samples``), and by default for
    regression, whose predictive mixture needs them."""
    return [head.accumulator(keep_samples=head.task == "regression" if return_samples is None else return_samples,
                             provenance=provenance) for head in heads]


def feed(heads, accumulators, per_pass_chunks) -> None:
    """Feed chunks of raw per-pass outputs (each a list, per output, of (Tc, n, ...)) to one accumulator
    per output, in pass order; a NaN or infinite output is an error naming how many rows gave one."""
    for outputs in per_pass_chunks:
        for head, acc, raw in zip(heads, accumulators, outputs):
            bad = nonfinite_rows(raw)
            if bad:
                raise _nonfinite_error(bad, raw.shape[1])
            head.update(acc, raw)


def _nonfinite_error(rows: int, total: int) -> ValueError:
    return ValueError(
        f"Invalid model output: {rows} of {total} row(s) of `x` gave NaN or infinite values in at least one "
        "pass. Check the input values and the model's numerical stability."
    )


def _check_declared_head(task, outputs, heteroscedastic, activation, name) -> None:
    """Refuse a declaration the output's final activation contradicts.

    These are errors, not warnings: each makes every number wrong (a softmax output read as a mean half
    and a variance half, probabilities softmaxed a second time, a regressor's value read as a logit), and
    the activation says so before any pass runs.
    """
    where = f"Output {name!r} has a {activation} activation." if name else None
    if activation in ("softmax", "sigmoid"):
        if heteroscedastic is not None:
            raise invalid("heteroscedastic", f"None for an output with a {activation} activation (its values are "
                          "class probabilities, not a mean half and a variance half)", heteroscedastic, detail=where)
        if outputs == "logits":
            raise invalid("outputs", f"'probs' (or None) for an output with a {activation} activation (its values "
                          "are already probabilities; reading them as logits applies a second softmax)", outputs,
                          detail=where)
    elif activation is not None and task == "classification" and outputs is None:
        raise invalid("task", f"'regression' for an output with a {activation} activation, or outputs='logits' "
                      "stated with it if the output holds class scores", task,
                      detail=where or "A linear output is what a regressor has; mcdrop does not guess that it "
                      "holds logits.")


def _warn_probability_values(outputs, heteroscedastic) -> None:
    """Where no activation can be read (a subclassed model), warn when a declaration meets values that are
    rows of probabilities: possible by chance, so a warning, but most likely a misread head."""
    if outputs == "logits":
        warnings.warn("outputs='logits' was stated, but every pass gave rows of probabilities (in [0, 1], summing "
                      "to one): reading them as logits applies a second softmax and flattens the confidence. "
                      "State outputs='probs' if the model ends in a softmax.", UserWarning, stacklevel=7)
    if heteroscedastic is not None:
        warnings.warn(f"heteroscedastic={heteroscedastic!r} was stated, but every pass gave rows of probabilities "
                      "(in [0, 1], summing to one), as a classifier does, not a mean half and a variance half.",
                      UserWarning, stacklevel=7)


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


def _looks_like_probs(raw: np.ndarray) -> bool:
    raw = np.asarray(raw)
    if raw.ndim < 3 or raw.shape[-1] < 2 or not np.all(np.isfinite(raw)):
        return False
    return bool(np.all(raw >= -1e-6) and np.all(raw <= 1 + 1e-6)
                and np.allclose(raw.sum(axis=-1), 1.0, atol=1e-4))


def _count_rows(x) -> int | None:
    leaves = tree.flatten(x) if isinstance(x, (dict, list, tuple)) else [x]
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape):
            return int(shape[0])
    return None

"""``MCDropout``: the public engine."""

from __future__ import annotations

import sys
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from mcdrop._validation import check_choice, check_int, invalid
from mcdrop.accumulators import nonfinite_rows
from mcdrop.engine import inputs as _inputs
from mcdrop.engine.rates import resolve_rates
from mcdrop.engine.sampler import CPU_ROW_PASSES, CompiledSampler, plan_chunks, widest_activation
from mcdrop.engine.view import build_view, output_activations
from mcdrop.heads import HETEROSCEDASTIC, OUTPUTS, TASKS, Head
from mcdrop.predictive import MASK_MODES, concatenate

__all__ = ["MCDropout"]

_DEFAULT_BUDGET = 512 * 2**20


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
        Progress bar: 1 always, 0 never, "auto" when stderr is a terminal and there is more than
        one chunk.
    strategy : tf.distribute.Strategy, optional
        Split each chunk's rows across the strategy's replicas (e.g. ``MirroredStrategy`` over
        several GPUs). With a seed, results equal single-device results.

    Examples
    --------
    >>> mc = MCDropout(model, num_samples=50, seed=0)          # doctest: +SKIP
    >>> pred = mc.predict(x_test)                                # doctest: +SKIP
    >>> pred.mean.shape, pred.mutual_information.shape           # doctest: +SKIP
    ((360, 10), (360,))
    """

    def __init__(self, model, num_samples: int = 50, seed: int | None = None, *, task=None, outputs=None,
                 heteroscedastic=None, mask: str = "consistent", gaussian_noise: bool = False,
                 allow_deterministic: bool = False, rate=None, batch_size: int | None = None,
                 passes_per_chunk: int | None = None, memory_budget: int = _DEFAULT_BUDGET,
                 run_eagerly: bool = False, verbose="auto", strategy=None):
        if not isinstance(model, keras.Model):
            raise invalid("model", "a keras.Model (Keras 3)", model, error=TypeError)
        self.model = model
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if seed is not None:
            seed = check_int(seed, "seed", minimum=0)
        self.seed = seed
        self.mask = check_choice(mask, "mask", MASK_MODES)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        self.passes_per_chunk = (None if passes_per_chunk is None
                                 else check_int(passes_per_chunk, "passes_per_chunk", minimum=1))
        self.memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
        self.verbose = check_choice(verbose, "verbose", ("auto", 0, 1, True, False))
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise invalid("strategy", "a tf.distribute.Strategy", strategy, error=TypeError)
        self.rate = rate
        rates = resolve_rates(model, rate)
        self.view = build_view(model, gaussian_noise=bool(gaussian_noise), rates=rates)
        if not self.view.is_stochastic and not allow_deterministic and not rates:  # rates: asked for by name
            raise invalid(
                "model", "a model with at least one stochastic layer (Dropout, SpatialDropout*, "
                "GaussianDropout, AlphaDropout, RNN dropout/recurrent_dropout, MultiHeadAttention dropout) "
                "with a rate > 0", model,
                detail="Every pass would be identical. Pass allow_deterministic=True to accept this.",
            )
        self._spec = _inputs.input_spec(model)
        self._activations = output_activations(model)
        self._head_args = self._check_head_args(task, outputs, heteroscedastic)
        self._heads = None  # decided on the first outputs when the graph cannot tell
        self.sampler = CompiledSampler(model, self.view, mask=self.mask, run_eagerly=bool(run_eagerly),
                                       strategy=strategy)
        self._widest = widest_activation(model)
        self._on_accelerator = bool(tf.config.list_logical_devices("GPU"))

    # -- configuration -------------------------------------------------------------------------------
    def _per_output(self, value, name, n_outputs):
        if isinstance(value, dict):
            names = self._output_names()
            missing = [k for k in names if k not in value]
            if missing:
                raise invalid(name, f"a value for every model output {names}", value)
            return [value[k] for k in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n_outputs:
                raise invalid(name, f"one value per model output ({n_outputs})", value)
            return list(value)
        return [value] * n_outputs

    def _output_names(self):
        structure = getattr(self.model, "_outputs_struct", None)
        if isinstance(structure, dict):
            return [path[0] for path, _ in tree.flatten_with_path(structure)]
        return [getattr(t, "name", str(i)) for i, t in enumerate(getattr(self.model, "outputs", []) or [])]

    def _check_head_args(self, task, outputs, heteroscedastic):
        n = len(self._activations)
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
        return tasks, outs, hets

    def _decide_heads(self, raw_outputs):
        """Pick each output's head from what was stated, the graph, or (last) the values."""
        tasks, outs, hets = self._head_args
        if len(raw_outputs) != len(tasks):
            # a model without a readable graph: the stated values were read for one output; apply them
            # to every output it turned out to have
            n = len(raw_outputs)
            tasks, outs, hets = [tasks[0]] * n, [outs[0]] * n, [hets[0]] * n
            activations = [None] * n
        else:
            activations = self._activations
        heads = []
        for raw, task, out, het, act in zip(raw_outputs, tasks, outs, hets, activations):
            looks_like_probs = _looks_like_probs(raw)
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

    def _progress(self, verbose, total):
        from tqdm.auto import tqdm

        verbose = self.verbose if verbose is None else verbose
        if verbose == "auto":
            show = sys.stderr.isatty() and (total is None or total > 1)
        else:
            show = bool(verbose)
        return tqdm(total=total, disable=not show, desc="MC passes", unit="rows", leave=False)

    def _pass_chunks(self, passes):
        """Absolute pass indices per call; the last chunk is padded (its extra passes dropped) so
        every call has the same number of passes."""
        chunks = []
        for start in range(0, self.num_samples, passes):
            idx = np.arange(start, min(start + passes, self.num_samples))
            valid = len(idx)
            if valid < passes:
                idx = np.concatenate([idx, np.full(passes - valid, idx[-1])])
            chunks.append((idx, valid))
        return chunks

    def _run(self, x, *, batch_size, verbose, on_chunk, seed=None, row_offset=0, pass_chunks=None):
        """Stream blocks of rows through all pass chunks; call ``on_chunk(list of per-pass-chunk
        outputs)`` once per block, in row order, with the valid rows only. Returns the seed used.

        Every compiled call gets exactly ``size`` rows. Under a distribution strategy each replica
        gets its own block of that size (so a replica computes what one device would). On a
        resource-exhausted error the block size halves, a warning is given once, and the same
        rows are run again: nothing is lost or duplicated.
        """
        n = None if _inputs.is_streaming(x) else _count_rows(x)
        rows, passes = self.plan(n, batch_size=batch_size)
        seed, seed_pair = seed if seed is not None else self._seed_pair()
        pass_chunks = self._pass_chunks(passes) if pass_chunks is None else pass_chunks  # given: adaptive T
        shapes = self._spec.shapes if self._spec is not None else None
        replicas = self.sampler.replicas
        state = {"size": rows, "warned": False}

        def pieces(block, offset, valid, size):
            return [(_inputs.pad([a[s:s + size] for a in block], size), offset + s, min(size, valid - s))
                    for s in range(0, valid, size)]

        def run_group(group, structure):
            """Run up to `replicas` pieces of one size; return (outputs, valid rows) per piece, in row
            order (more pieces than given when the block size had to halve)."""
            try:
                per_pass = [self._call([p for p, _, _ in group], structure, idx, seed_pair,
                                       [o for _, o, _ in group], shapes) for idx, _ in pass_chunks]
            except tf.errors.ResourceExhaustedError:
                size = len(group[0][0][0])
                if size == 1:
                    raise
                state["size"] = max(1, size // 2)
                if not state["warned"]:
                    warnings.warn(f"mcdrop ran out of memory; retrying with {state['size']} rows per call.",
                                  ResourceWarning, stacklevel=4)
                    state["warned"] = True
                smaller = [q for piece, offset, used in group
                           for q in pieces(piece, offset, used, state["size"])]
                return run_all(smaller, structure)
            return [([[o[i][:k, :used] for o in out] for out, (_, k) in zip(per_pass, pass_chunks)], used)
                    for i, (_, _, used) in enumerate(group)]

        def run_all(items, structure):
            results = []
            for g in range(0, len(items), replicas):
                results.extend(run_group(items[g:g + replicas], structure))
            return results

        with self._progress(verbose, n) as bar:
            pending, structure = [], None
            for block, structure, offset, valid in _inputs.iter_blocks(x, self._spec, rows):
                pending.extend(pieces(block, row_offset + offset, valid, state["size"]))
                while len(pending) >= replicas:
                    group, pending = pending[:replicas], pending[replicas:]
                    for result, used in run_group(group, structure):
                        on_chunk(result)
                        bar.update(used)
            for result, used in run_all(pending, structure):
                on_chunk(result)
                bar.update(used)
        return seed

    def _call(self, flats, structure, passes, seed_pair, offsets, shapes):
        """Per-pass outputs for one piece per replica: a list (per output) of (replicas, Tc, n, ...)."""
        try:
            return self.sampler(flats, structure, passes, seed_pair, offsets, shapes)
        except tf.errors.ResourceExhaustedError:
            raise
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            if isinstance(err, ValueError) and str(err).startswith("Invalid value for argument"):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            flat = flats[0]
            raise invalid("x", "input the model can take", flat[0] if len(flat) == 1 else
                          f"{len(flat)} arrays", detail=f"The model failed on it: {first}") from err

    def sample(self, x, *, batch_size: int | None = None, verbose=None, row_offset: int = 0):
        """The raw per-pass outputs, passes first: a numpy array (T, N, ...), or a list/dict of them for
        a multi-output model. Logits stay logits. ``row_offset`` as for :meth:`predict`."""
        collected = []

        def keep(per_pass_chunks):
            collected.append([np.concatenate(arrays, axis=0) for arrays in zip(*per_pass_chunks)])

        self._run(x, batch_size=batch_size, verbose=verbose, on_chunk=keep,
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

        def summarise(per_pass_chunks):
            nonlocal writers
            if self._heads is None:
                self._heads = self._decide_heads(per_pass_chunks[0])
            accs = []
            for head in self._heads:
                keep = return_samples if return_samples is not None else head.task == "regression"
                accs.append(head.accumulator(keep_samples=keep, provenance={"mask": self.mask, "seed": seed}))
            for outputs in per_pass_chunks:
                for head, acc, raw in zip(self._heads, accs, outputs):
                    bad = nonfinite_rows(raw)
                    if bad:
                        raise _nonfinite_error(bad, raw.shape[1])
                    head.update(acc, raw)
            results = [acc.result() for acc in accs]
            if out is None:
                collected.append(results)
                return
            if writers is None:
                writers = self._writers(out, len(results), overwrite)
            for writer, result in zip(writers, results):
                writer.append(result)

        self._run(x, batch_size=batch_size, verbose=verbose, on_chunk=summarise, seed=(seed, seed_pair),
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
        structure = getattr(self.model, "_outputs_struct", None)
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

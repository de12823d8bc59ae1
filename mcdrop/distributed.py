"""Score a pool on a Ray cluster, bit-identical to single-process scoring.

:func:`score_pool` loads the model once per Ray actor (from its file, in Keras safe mode), sends
the pool through :class:`mcdrop.MCDropout` in row groups, and returns the per-row statistics in
the pool's original row order::

    stats = mcdrop.distributed.score_pool("model.keras", "pool.npy", num_samples=50, seed=0)
    stats["mutual_information"]          # (N,), equal to the single-process engine's

:func:`predict_pool` returns the prediction object instead, and :func:`top_k` picks the global top
rows by any per-row score.

Why the results are bit-identical whatever the number of workers and blocks
    The single-process engine cuts an in-memory input of N rows into blocks of ``B`` rows
    (``B`` planned from N, T and the model's widest activation; see :func:`plan_chunks
    <mcdrop.engine.sampler.plan_chunks>`), starting at row 0, and pads the last block. The
    driver plans the same ``B`` from N and hands each actor whole *groups* of consecutive blocks
    that start at a multiple of ``B``; the actor runs the engine with ``batch_size=B`` and the
    group's global row offset. Every row therefore sits at the same position in a block of the
    same rows and the same shape as in the single-process run, with the same masks (consistent
    masks are keyed by seed, pass and layer; per-example masks also by the block's global first
    row), so TensorFlow computes the same bits. Results carry their global row index through Ray;
    the driver checks that the indices are a permutation of ``0..N-1`` and scatters by them, never
    relying on the order Ray returns them in.

Faults
    Ray Data restarts an actor that dies and retries its unfinished batches; a group's result is
    produced only when the whole group was scored, so a retried group is never half-counted, and
    the row-index check refuses a result with a row missing or repeated. A model file that cannot
    be loaded is reported once, as a ``ValueError`` naming ``model_path``, before any output is
    written.

Ray is an optional dependency (``pip install "mcdrop[ray]"``): this module imports without it
and raises an ``ImportError`` saying so when a function needs it.
"""

from __future__ import annotations

import dataclasses
import errno
import numbers
import os
import warnings
from pathlib import Path

import numpy as np

from mcdrop._validation import check_int, invalid

__all__ = ["score_pool", "predict_pool", "top_k"]

_INSTALL = 'pip install "mcdrop[ray]"'
_ROW = "_mcdrop_row"      # global row index, carried through Ray
_GROUP = "_mcdrop_group"  # index of a group of consecutive engine blocks
_X = "_mcdrop_x"          # the model input (Ray Dataset input)
_HEAD = "_mcdrop_head"    # how the output was read (see _HEAD_CODES)
_ROWS_SECOND = ("samples", "sample_variances")  # (T, N, ...) in a prediction, (N, T, ...) in Ray
#: (task, outputs or heteroscedastic) <-> one small integer per row, so the driver can rebuild the
#: prediction type the engine chose (it may be decided from the outputs of subclassed models).
_HEAD_CODES = {("classification", "probs"): 0, ("classification", "logits"): 1,
               ("regression", False): 2, ("regression", True): 3}
#: Rows per group when the caller does not say: large enough that a group amortises a Ray
#: task, small enough that a retried group costs little and W workers share the pool evenly.
_GROUP_ROWS_CAP = 8192
_ENGINE_OPTIONS = ("mask", "task", "outputs", "heteroscedastic", "gaussian_noise", "allow_deterministic",
                   "passes_per_chunk", "memory_budget")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"mcdrop.distributed needs Ray Data, which is not installed. Install it with: {_INSTALL}"
        ) from err
    return ray


class ModelLoadError(ValueError):
    """A Ray worker could not load the model file (raised on the driver, naming ``model_path``)."""


# --------------------------------------------------------------------------- the worker side


def _head_code(prediction) -> int:
    if prediction.task == "classification":
        return _HEAD_CODES[("classification", prediction.outputs)]
    return _HEAD_CODES[("regression", bool(prediction.heteroscedastic))]


class _Scorer:
    """The Ray Data actor: loads the model once, then scores whole groups of engine blocks.

    A batch is either group indices (``_GROUP``; the rows are read from ``source``, an array in
    the object store or a ``.npy`` file each worker memory-maps) or rows with their global index
    (``_ROW`` and ``_X``, from a Ray Dataset grouped by group index).
    """

    def __init__(self, *, model_path, unsafe, num_samples, seed, batch_size, group_rows, num_rows,
                 engine_options, source, return_samples, on_group=None):
        self.load_error = None
        self.group_rows, self.num_rows, self.batch_size = group_rows, num_rows, batch_size
        self.return_samples, self.on_group = return_samples, on_group
        try:
            from mcdrop.io import load_model

            model = load_model(model_path, unsafe=unsafe, name="model_path")
            from mcdrop.engine import MCDropout

            self.engine = MCDropout(model, num_samples, seed, batch_size=batch_size, verbose=0, **engine_options)
        except Exception as err:  # reported from __call__, once, as a task error (not an actor death)
            self.load_error = f"{type(err).__name__}: {err}"
        self.source = None
        if source is not None:
            kind, value = source
            if kind == "npy":
                self.source = np.load(value, mmap_mode="r", allow_pickle=False)
            else:
                import ray

                self.source = ray.get(value[0])

    def __call__(self, batch):
        if self.load_error is not None:
            raise ModelLoadError(self.load_error)
        if self.source is not None:
            parts = [self._score_group(int(g)) for g in np.asarray(batch[_GROUP]).ravel()]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        rows = np.asarray(batch[_ROW], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        start = int(rows[0])
        stop = min(start + self.group_rows, self.num_rows)
        if start % self.group_rows or not np.array_equal(rows, np.arange(start, stop)):
            raise RuntimeError(f"mcdrop: a group of rows starting at {start} is incomplete or repeated "
                               f"({len(rows)} rows received, {stop - start} expected).")
        return self._score(np.asarray(batch[_X])[order], rows, start // self.group_rows)

    def _score_group(self, group):
        start = group * self.group_rows
        stop = min(start + self.group_rows, self.num_rows)
        return self._score(np.asarray(self.source[start:stop]), np.arange(start, stop, dtype=np.int64), group)

    def _score(self, x, rows, group):
        if self.on_group is not None:
            self.on_group(group)
        # per-example masks are keyed by a row's index in the whole pool
        prediction = self.engine.predict(x, return_samples=self.return_samples, row_offset=int(rows[0]))
        if isinstance(prediction, (list, dict)):
            raise ValueError("mcdrop.distributed.score_pool scores models with one output; this model has "
                             f"{len(prediction)}.")
        out = {_ROW: rows, _HEAD: np.full(len(rows), _head_code(prediction), dtype=np.int8)}
        for field in dataclasses.fields(prediction):
            value = getattr(prediction, field.name)
            if isinstance(value, np.ndarray):
                out[field.name] = np.moveaxis(value, 1, 0) if field.name in _ROWS_SECOND else value
        return out


# --------------------------------------------------------------------------- the driver side


def _resolve_data(data, ray, column, key):
    """(kind, value, num_rows): an in-memory array, a .npy file to memory-map, or a Ray Dataset."""
    from mcdrop import io

    if isinstance(data, ray.data.Dataset):
        columns = data.columns()
        if column is None:
            if not columns or len(columns) != 1:
                raise invalid("column", f"the name of the input column among {columns}", column,
                              detail="The dataset has several columns; say which one holds the model input.")
            column = columns[0]
        elif column not in (columns or []):
            raise invalid("column", f"one of the dataset's columns {columns}", column)
        return "dataset", (data, column), None
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix.lower() == ".npy" and path.is_file():
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception:
                array = None
            if isinstance(array, np.ndarray) and array.dtype.kind in "biuf":
                return "npy", (str(path.resolve()), array), len(array)
        array = io.load_array(path, key=key, name="data")  # the clear error for a bad file, or the array
        return "array", array, len(array)
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        array = np.asarray(data)
        if array.dtype.kind not in "biuf":
            raise invalid("data", "a numeric array", array, error=TypeError)
        if array.ndim == 0 or len(array) == 0:
            raise invalid("data", "an array with at least one row", array)
        return "array", array, len(array)
    raise invalid("data", "a ray.data.Dataset, a numpy array or a .npy/.npz/.csv path", data, error=TypeError)


def _group_rows(num_rows, block, workers, blocks_per_task):
    blocks = -(-num_rows // block)
    if blocks_per_task is None:
        per_worker = -(-blocks // (4 * workers))  # about four groups per worker, to balance them
        blocks_per_task = max(1, min(per_worker, _GROUP_ROWS_CAP // block))
    return block * blocks_per_task


def _short_of_resources(cluster, workers, num_cpus, num_gpus) -> str | None:
    """Why a fixed pool of ``workers`` actors cannot all start on ``cluster`` now (Ray would wait,
    which looks like a hang unless the cluster autoscales), or None."""
    for name, each in (("CPU", num_cpus), ("GPU", num_gpus)):
        have = cluster.get(name, 0)
        if each and workers * each > have:
            return (f"mcdrop: {workers} Ray workers x {each} {name} need {workers * each:g} {name}s but the "
                    f"cluster has {have:g}; Ray waits until that many are free (or the cluster scales up). "
                    f"Lower num_workers or num_{name.lower()}s to start now.")
    return None


def _check_model_error(err, model_path):
    """Turn a worker's model-loading failure (wrapped by Ray) into one clear ValueError."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModelLoadError) or "ModelLoadError" in type(current).__name__:
            break
        current = current.__cause__ or current.__context__
    text = str(current if current is not None else err)
    if current is None and "ModelLoadError" not in str(err):
        return None
    detail = text.split("ModelLoadError:")[-1].strip().splitlines()[0] if text else ""
    return invalid("model_path", "a model file every Ray worker can load", str(model_path),
                   detail=f"A worker failed to load it: {detail}", error=ModelLoadError)


def _run(ray, plan, groups):
    """Run the scorer over ``groups`` (group indices, or None for all); return the result columns."""
    kind, value = plan["kind"], plan["value"]
    kwargs = dict(plan["scorer"])
    if kind == "dataset":
        dataset, column = value
        group_rows = kwargs["group_rows"]
        xs = dataset.select_columns([column]).rename_columns({column: _X})
        rows = ray.data.range(plan["num_rows"]).rename_columns({"id": _ROW})

        def label(batch):
            batch[_GROUP] = np.asarray(batch[_ROW], dtype=np.int64) // group_rows
            return batch

        ds = xs.zip(rows).map_batches(label, batch_format="numpy")
        if groups is not None:
            wanted = np.asarray(groups, dtype=np.int64)

            def keep(batch):
                chosen = np.isin(batch[_GROUP], wanted)
                return {k: np.asarray(v)[chosen] for k, v in batch.items()}

            ds = ds.map_batches(keep, batch_format="numpy")
    else:
        ids = np.arange(plan["num_groups"], dtype=np.int64) if groups is None else np.asarray(groups, np.int64)
        ds = ray.data.from_items([{_GROUP: int(g)} for g in ids], override_num_blocks=len(ids))
    # Ray Data restarts dead actors and retries their tasks by default (max_restarts=-1,
    # max_task_retries=-1 in its actor pool); stating it keeps that true on any Ray version.
    actors = dict(compute=ray.data.ActorPoolStrategy(size=plan["workers"]), batch_format="numpy",
                  fn_constructor_kwargs=kwargs, num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                  max_restarts=plan["max_restarts"], max_task_retries=plan["max_restarts"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
        if kind == "dataset":
            out = ds.groupby(_GROUP).map_groups(_Scorer, **actors)
        else:
            out = ds.map_batches(_Scorer, batch_size=1, **actors)
    columns = {}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for name, array in batch.items():
            columns.setdefault(name, []).append(np.asarray(array))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def _assemble(columns, num_rows, rows_expected, plan):
    """Scatter the columns into pool order after checking every expected row came exactly once."""
    from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

    rows = columns.pop(_ROW, np.zeros(0, np.int64)).astype(np.int64)
    counts = np.bincount(rows, minlength=num_rows) if len(rows) else np.zeros(num_rows, np.int64)
    expected = np.zeros(num_rows, np.int64)
    expected[rows_expected] = 1
    if len(counts) != num_rows or not np.array_equal(counts, expected):
        missing = int(np.sum(counts[:num_rows] < expected))
        repeated = int(np.sum(counts[:num_rows] > expected)) + int(np.sum(counts[num_rows:]))
        raise RuntimeError(f"mcdrop.distributed: the Ray job returned {len(rows)} row results for "
                           f"{len(rows_expected)} rows ({missing} missing, {repeated} repeated or unknown); "
                           "refusing a result that does not hold every row exactly once.")
    position = np.empty(num_rows, np.int64)
    position[rows_expected] = np.arange(len(rows_expected))
    order = np.empty(len(rows), np.int64)
    order[position[rows]] = np.arange(len(rows))  # result row i of the output comes from order[i]
    codes = np.unique(columns.pop(_HEAD))
    if len(codes) != 1:
        raise RuntimeError("mcdrop.distributed: workers read the model's output differently "
                           f"(codes {codes.tolist()}); state task= and outputs= explicitly.")
    (task, how), = [k for k, v in _HEAD_CODES.items() if v == codes[0]]
    values = {}
    for name, array in columns.items():
        array = array[order]
        values[name] = np.moveaxis(array, 0, 1) if name in _ROWS_SECOND else array
    meta = {"num_samples": plan["num_samples"], "mask": plan["mask"], "seed": plan["seed"]}
    if task == "classification":
        return ClassificationPrediction(**values, **meta, outputs=how)
    return RegressionPrediction(**values, **meta, heteroscedastic=how)


def score_pool(model_path, data, *, num_samples: int = 50, seed: int | None = 0, num_workers: int | None = None,
               batch_size: int | None = None, blocks_per_task: int | None = None, column: str | None = None,
               key: str | None = None, candidates: int | None = None, return_samples: bool | None = None,
               out=None, overwrite: bool = False, unsafe: bool = False, address: str | None = None,
               num_cpus: float = 1, num_gpus: float = 0, max_restarts: int = -1, verbose: bool = False,
               _on_group=None, **engine_options) -> dict:
    """Score a pool with Monte Carlo dropout on a Ray cluster, in the pool's row order.

    The result equals ``MCDropout(load_model(model_path), num_samples, seed=seed,
    batch_size=batch_size).predict(data).to_dict()`` bit for bit, whatever ``num_workers`` and
    ``blocks_per_task``.

    Parameters
    ----------
    model_path : str or Path
        A ``.keras``/``.h5`` file every worker can read (a shared file system on a real cluster).
        Loaded in Keras safe mode, once by the driver (to plan and to fail early) and once per actor.
    data : ray.data.Dataset, array-like of shape (N, ...), or path
        A ``.npy`` file is memory-mapped by each worker (``allow_pickle=False``); ``.npz`` and
        ``.csv`` files are read with :func:`mcdrop.io.load_array`. The pool order of a Dataset is its
        row order.
    num_samples : int, default 50
        T, the number of passes.
    seed : int or None, default 0
        The seed of the masks. None draws one on the driver (recorded as ``seed`` on the result's
        prediction), shared by all workers.
    num_workers : int, optional
        Ray actors, each holding one copy of the model; default: the cluster's CPUs / ``num_cpus``.
    batch_size : int, optional
        Rows per compiled call, as for :class:`~mcdrop.MCDropout`; by default planned from N exactly as
        the single-process engine plans it.
    blocks_per_task : int, optional
        Engine blocks per Ray task (a group). Default: about four groups per worker, at most
        8192 rows a group. Does not change the results.
    column : str, optional
        The input column of a Ray Dataset with several columns.
    key : str, optional
        The array of a ``.npz`` file holding several.
    candidates : int, optional
        Also return, for the ``candidates`` rows of highest mutual information (BALD), their row
        indices (``"candidates"``, highest first) and per-pass probabilities (``"candidate_samples"``,
        shape (T, M, C)), the input of :func:`mcdrop.acquisition.batch_bald`. Classification only.
        Those rows' blocks are re-run with samples kept (bit-identical to the first run).
    return_samples : bool, optional
        As for :meth:`MCDropout.predict` (per-pass outputs for every row: T times the memory).
    out : str or Path, optional
        Also write the prediction to this folder as a :mod:`mcdrop.store` (plus ``candidates.npy``
        and ``candidate_samples.npy``), all or nothing, and return arrays memory-mapped from it.
    overwrite : bool, default False
        Replace a non-empty ``out``.
    unsafe : bool, default False
        Load models holding Python code (``Lambda`` layers); only for trusted files.
    address : str, optional
        Connect to this Ray cluster (``"auto"``, ``"ray://host:10001"``) when Ray is not initialised
        yet; without it Ray starts or joins as ``ray.init()`` does.
    num_cpus, num_gpus : float
        Resources of each actor.
    max_restarts : int, default -1
        How often a dead actor is restarted and its unfinished groups retried (-1: without limit).
    verbose : bool, default False
        Show Ray Data's progress bars.
    **engine_options
        ``mask``, ``task``, ``outputs``, ``heteroscedastic``, ``gaussian_noise``,
        ``allow_deterministic``, ``passes_per_chunk``, ``memory_budget``: as for ``MCDropout``.

    Returns
    -------
    dict of str to ndarray
        ``prediction.to_dict()`` of the pooled prediction: for classification ``mean`` (N, C),
        ``variance`` (N, C), ``entropy``, ``expected_entropy``, ``mutual_information``,
        ``variation_ratio``, ``predicted_class``, ``confidence`` (N,), ``standard_error`` and ``votes``
        (N, C); for regression ``mean``, ``variance``, ``std``, ``epistemic_variance``,
        ``aleatoric_variance``, ``standard_error`` (N, D); ``samples`` (T, N, ...) when kept; plus
        ``candidates`` and ``candidate_samples`` when asked.

    Raises
    ------
    ImportError
        Ray Data is not installed.
    ValueError
        ``model_path`` cannot be loaded (by the driver or any worker): nothing is written. Any
        other argument out of its domain, named with the value received.
    RuntimeError
        The cluster returned a result without every row exactly once (checked, never assumed).

    Examples
    --------
    >>> stats = score_pool("model.keras", "pool.npy", num_samples=50, seed=0, candidates=200)  # doctest: +SKIP
    >>> picked = stats["candidates"][mcdrop.acquisition.batch_bald(stats["candidate_samples"], 10)]  # doctest: +SKIP
    """
    prediction, extra = _pool(model_path, data, num_samples=num_samples, seed=seed, num_workers=num_workers,
                              batch_size=batch_size, blocks_per_task=blocks_per_task, column=column, key=key,
                              candidates=candidates, return_samples=return_samples, out=out,
                              overwrite=overwrite, unsafe=unsafe, address=address, num_cpus=num_cpus,
                              num_gpus=num_gpus, max_restarts=max_restarts, verbose=verbose,
                              _on_group=_on_group, **engine_options)
    return {**prediction.to_dict(), **extra}


def predict_pool(model_path, data, **options):
    """:func:`score_pool`, returning the prediction object instead of its ``to_dict()``.

    Takes the same arguments except ``candidates``. Returns a
    :class:`~mcdrop.ClassificationPrediction` or :class:`~mcdrop.RegressionPrediction` equal, field by
    field, to ``MCDropout(load_model(model_path), ...).predict(data)`` (memory-mapped from ``out``
    when given), for code that wants the prediction API: metrics, ``subset``, ``distribution``.
    """
    if "candidates" in options:
        raise invalid("candidates", "no value here (use score_pool for candidates)", options["candidates"],
                      error=TypeError)
    prediction, _ = _pool(model_path, data, **options)
    return prediction


def _pool(model_path, data, *, num_samples=50, seed=0, num_workers=None, batch_size=None, blocks_per_task=None,
          column=None, key=None, candidates=None, return_samples=None, out=None, overwrite=False, unsafe=False,
          address=None, num_cpus=1, num_gpus=0, max_restarts=-1, verbose=False, _on_group=None,
          **engine_options):
    """The work of :func:`score_pool`: (prediction, extra arrays)."""
    ray = _ray()
    from mcdrop.engine.mc_dropout import MCDropout
    from mcdrop.io import load_model

    unknown = sorted(set(engine_options) - set(_ENGINE_OPTIONS))
    if unknown:
        raise invalid("engine_options", f"keywords among {list(_ENGINE_OPTIONS)}", unknown[0], error=TypeError)
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**62))
    seed = check_int(seed, "seed", minimum=0)
    if num_workers is not None:
        num_workers = check_int(num_workers, "num_workers", minimum=1)
    if blocks_per_task is not None:
        blocks_per_task = check_int(blocks_per_task, "blocks_per_task", minimum=1)
    if candidates is not None:
        candidates = check_int(candidates, "candidates", minimum=1)
    max_restarts = check_int(max_restarts, "max_restarts", minimum=-1)
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise invalid(name, "a number >= 0", value)
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise invalid("out", "a new or empty folder (pass overwrite=True to replace it)", str(out),
                          error=FileExistsError)

    # The driver loads the model too: a bad file fails here, before any Ray work, and the plan
    # (rows per block) comes from the same engine code the single-process run uses.
    model = load_model(model_path, unsafe=unsafe, name="model_path")
    engine = MCDropout(model, num_samples, seed, batch_size=batch_size, verbose=0, **engine_options)
    kind, value, num_rows = _resolve_data(data, ray, column, key)

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=bool(verbose))
    if kind == "dataset":
        num_rows = value[0].count()
        if num_rows == 0:
            raise invalid("data", "a dataset with at least one row", "an empty ray.data.Dataset")
    else:
        from mcdrop.engine import inputs

        array = value[1] if kind == "npy" else value
        inputs.as_flat(np.asarray(array[:1]), engine._spec, "data")  # the model takes it, or a clear error
    block, _ = engine.plan(num_rows)
    if num_workers is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        num_workers = max(1, int(cpus // num_cpus) if num_cpus else int(cpus))
    short = _short_of_resources(ray.cluster_resources(), num_workers, num_cpus, num_gpus)
    if short:
        warnings.warn(short, ResourceWarning, stacklevel=3)
    group_rows = _group_rows(num_rows, block, num_workers, blocks_per_task)
    num_groups = -(-num_rows // group_rows)
    if kind == "npy":
        source = ("npy", value[0])
    elif kind == "array":
        source = ("ref", [ray.put(np.ascontiguousarray(value))])
    else:
        source = None
    options = {k: v for k, v in engine_options.items()}
    plan = {
        "kind": "dataset" if kind == "dataset" else "groups", "value": value, "num_rows": num_rows,
        "num_groups": num_groups, "workers": min(num_workers, num_groups), "num_cpus": num_cpus,
        "num_gpus": num_gpus, "max_restarts": max_restarts, "num_samples": num_samples,
        "mask": engine.mask, "seed": seed,
        "scorer": dict(model_path=str(model_path), unsafe=unsafe, num_samples=num_samples, seed=seed,
                       batch_size=block, group_rows=group_rows, num_rows=num_rows, engine_options=options,
                       source=source, return_samples=return_samples, on_group=_on_group),
    }

    from ray.data import DataContext

    context = DataContext.get_current()
    bars, shuffle = context.enable_progress_bars, getattr(context, "shuffle_strategy", None)
    context.enable_progress_bars = bool(verbose)
    # Grouping a Dataset's rows by group is a shuffle: the pull-based sort shuffle runs as plain
    # tasks, where the hash shuffle would hold aggregator actors whose CPUs the scorers then wait for.
    # (Ray versions without ``shuffle_strategy`` have only the sort shuffle.)
    if shuffle is not None:
        context.shuffle_strategy = type(shuffle)("sort_shuffle_pull_based")
    try:
        prediction = _assemble(_run(ray, plan, None), num_rows, np.arange(num_rows), plan)
        extra = {}
        if candidates is not None:
            extra = _candidates(ray, plan, prediction, candidates, block)
    except Exception as err:
        load_error = _check_model_error(err, model_path)
        if load_error is not None:
            raise load_error from None
        raise
    finally:
        context.enable_progress_bars = bars
        if shuffle is not None:
            context.shuffle_strategy = shuffle
    if out is not None:
        return _write(out, prediction, extra)
    return prediction, extra


def _candidates(ray, plan, prediction, m, block):
    """Per-pass probabilities of the ``m`` rows of highest BALD: their blocks run again, one block
    per group, with samples kept (the same blocks, offsets and masks, so the same bits)."""
    from mcdrop.acquisition import top_k as _top_k

    if prediction.task != "classification":
        raise invalid("candidates", "None for a regression model (BatchBALD needs class probabilities)", m)
    m = min(m, len(prediction))
    index = _top_k(prediction.mutual_information, m)
    blocks = np.unique(index // block)
    rows = np.concatenate([np.arange(b * block, min((b + 1) * block, plan["num_rows"])) for b in blocks])
    again = dict(plan, scorer=dict(plan["scorer"], group_rows=block, return_samples=True),
                 num_groups=-(-plan["num_rows"] // block))
    again["workers"] = min(plan["workers"], len(blocks))
    sub = _assemble(_run(ray, again, blocks), plan["num_rows"], rows, again)
    position = np.searchsorted(rows, index)
    return {"candidates": index, "candidate_samples": np.ascontiguousarray(sub.samples[:, position])}


def _write(out, prediction, extra):
    """Write the store all or nothing (a staging folder moved in at the end); return it memory-mapped."""
    from mcdrop import store
    from mcdrop.io import staged_directory

    try:
        with staged_directory(out) as stage:
            writer = store.PredictionWriter(stage, overwrite=True)
            writer.append(prediction)
            writer.close()
            for name, array in extra.items():
                np.save(stage / f"{name}.npy", array, allow_pickle=False)
            written = {item.name for item in stage.iterdir()}
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise store.StoreFullError(
            err.errno, f"The disk is full while writing the pool's predictions to {out}; nothing was "
            "written there (a store already in that folder is unchanged and stays readable).") from err
    for item in out.iterdir():  # files of a store this one replaced (overwrite=True was checked)
        if item.is_file() and item.name not in written:
            item.unlink()
    return store.load(out), {name: np.load(out / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                             for name in extra}


def top_k(stats, k: int, *, by: str = "mutual_information") -> np.ndarray:
    """Global top-k over a scored pool: the row indices of the ``k`` highest ``stats[by]``, highest
    first (ties to the lower row).

    Parameters
    ----------
    stats : dict of str to ndarray
        The result of :func:`score_pool` (or any prediction's ``to_dict()``).
    k : int
    by : str, default "mutual_information"
        A per-row score in ``stats`` (higher means label first): ``"entropy"``,
        ``"variation_ratio"``, ...

    Returns
    -------
    ndarray of shape (k,) and dtype int64

    Examples
    --------
    >>> import numpy as np
    >>> top_k({"mutual_information": np.array([0.1, 0.7, 0.3])}, 2)
    array([1, 2])
    """
    from mcdrop.acquisition import top_k as _top_k

    if not hasattr(stats, "keys") or by not in stats:
        keys = sorted(stats) if hasattr(stats, "keys") else stats
        raise invalid("by", f"a per-row score among {keys}", by)
    scores = np.asarray(stats[by])
    if scores.ndim != 1:
        raise invalid("by", "a score with one value per row (shape (N,))", by)
    return _top_k(scores, k)

"""Score a pool on a Ray cluster, bit-identical to single-process scoring.

:func:`score_pool` loads the model once per Ray actor (from its file, in Keras safe mode), sends
the pool through :class:`mcdrop.MCDropout` in row groups, and returns the per-row statistics in
the pool's original row order::

    stats = mcdrop.distributed.score_pool("model.keras", "pool.npy", num_samples=50, seed=0)
    stats["mutual_information"]          # (N,), equal to the single-process engine's

:func:`predict_pool` returns the prediction object instead, and :func:`top_k` picks the global top
rows by any per-row score. Both gather every row on the driver. For pools of any size,
:func:`stream_pool` has the workers write their rows straight into a job folder (a
:mod:`mcdrop.store`, optionally also a Parquet dataset) and keeps on the driver only per-group
records and the global selections, merged from each group's top-k (O(k) memory); an interrupted
job resumes where it stopped::

    job = mcdrop.distributed.stream_pool("model.keras", "pool/", "results/", columns="x",
                                         select={"bald": 100}, candidates=500, parquet=True)
    job.top["bald"]                      # (100,), the global top-100 by BALD
    mcdrop.store.load("results/")        # the whole prediction, memory-mapped

Why the results are bit-identical whatever the number of workers and blocks
    The single-process engine cuts an in-memory input of N rows into blocks of ``B`` rows
    (``B`` planned from N, T and the model's widest activation; see :func:`plan_chunks
    <mcdrop.engine.sampler.plan_chunks>`), starting at row 0, and pads the last block. The
    driver plans the same ``B`` from N and hands each actor whole *groups* of consecutive blocks
    that start at a multiple of ``B``; the actor runs the engine with ``batch_size=B`` and the
    group's global row offset. Every row therefore sits at the same position in a block of the
    same rows and the same shape as in the single-process run, with the same masks (consistent
    masks are keyed by seed, pass and layer; per-example masks also by each row's absolute index in
    the pool), so TensorFlow computes the same bits. Results carry their global row index through Ray;
    the driver checks that the indices are a permutation of ``0..N-1`` and scatters by them, never
    relying on the order Ray returns them in.

Faults
    Ray Data restarts an actor that dies and retries its unfinished batches; a group's result is
    produced only when the whole group was scored, so a retried group is never half-counted, and
    the row-index check refuses a result with a row missing or repeated. In a streaming job a group
    is written in place (a retry rewrites the same bytes) and counts only once its record is renamed
    into ``done/``; the driver checks that every group is recorded exactly once. A model file that cannot
    be loaded is reported once, as a ``ValueError`` naming ``model_path``, before any output is
    written.

Ray is an optional dependency (``pip install "mcdrop[ray]"``): this module imports without it
and raises an ``ImportError`` saying so when a function needs it.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import numbers
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from mcdrop._validation import check_int, invalid
from mcdrop.predictive import ClassificationPrediction, keeps_samples

__all__ = ["score_pool", "predict_pool", "stream_pool", "PoolResult", "SELECTABLE", "top_k"]

_INSTALL = 'pip install "mcdrop[ray]"'
_ROW = "_mcdrop_row"      # global row index, carried through Ray
_GROUP = "_mcdrop_group"  # index of a group of consecutive engine blocks
_X = "_mcdrop_x"          # the model inputs _mcdrop_x0, _mcdrop_x1, ... (Ray Dataset input)
_PAYLOAD = "_mcdrop_payload"  # a group's selections (an .npz's bytes), from a streaming task
_PARQUET = "rows"         # the Parquet dataset's folder inside a job folder
#: Output i's codec metadata (``to_arrays``), JSON in the first row of each group and empty after, so
#: the driver rebuilds the prediction type the engine chose (it may be decided from the outputs of
#: subclassed models) at the cost of one pointer per row; output i's arrays are ``"i:<name>"``.
_META = "_mcdrop_meta"
#: Rows per group when the caller does not say: large enough that a group amortises a Ray
#: task, small enough that a retried group costs little and W workers share the pool evenly.
_GROUP_ROWS_CAP = 8192
_ENGINE_OPTIONS = ("mask", "task", "outputs", "heteroscedastic", "gaussian_noise", "allow_deterministic",
                   "passes_per_chunk", "memory_budget", "allow_nonfinite_inputs")


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


# --------------------------------------------------------------------------- model inputs


def _pack(structure, arrays):
    """The model input from its flat arrays: one array, a list, or a dict (``structure`` is None,
    ``"list"`` or the tuple of dict keys)."""
    if structure is None:
        return arrays[0]
    if structure == "list":
        return list(arrays)
    return dict(zip(structure, arrays))


def _flat_inputs(data):
    """(structure, flat list) of an in-memory input: an array, or a list/tuple/dict of arrays."""
    if isinstance(data, dict):
        return tuple(data), list(data.values())
    if isinstance(data, (list, tuple)) and data and all(hasattr(v, "__array__") for v in data):
        return "list", list(data)
    return None, [data]


def _arrow_numpy(column, name):
    """A numeric Arrow column as a numpy array; fixed-size lists (nested for more axes) and Ray's
    tensor columns become arrays of shape (rows, ...)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    if column.null_count:
        raise invalid("columns", f"column {name!r} without missing values", f"{column.null_count} null(s)")
    if pa.types.is_fixed_size_list(kind):
        inner = _arrow_numpy(column.flatten(), name)
        return inner.reshape(len(column), kind.list_size, *inner.shape[1:])
    if isinstance(kind, pa.ExtensionType) and hasattr(column, "to_numpy"):  # Ray's tensor columns
        return np.asarray(column.to_numpy())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_numpy(zero_copy_only=False)
    raise invalid("columns", f"column {name!r} of numbers or fixed-size lists of numbers", str(kind),
                  error=TypeError)


def _filesystem(path):
    """(pyarrow file system, path in it) for a local path or a URI (s3://, gs://, hdfs://, ...)."""
    from pyarrow import fs

    text = str(path)
    if "://" in text:
        return fs.FileSystem.from_uri(text)
    return fs.LocalFileSystem(), str(Path(text).resolve())


def _parquet_source(path, columns):
    """The files of a Parquet file or folder (sorted by path: the pool's row order) and their row
    counts, read from the footers only; ``columns`` checked against the schema."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    try:
        filesystem, root = _filesystem(path)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
            files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                           and not any(part.startswith((".", "_")) for part in f.path[len(root):].split("/")))
        elif info.type == pafs.FileType.File:
            files = [root]
        else:
            files = []
        counts, schema = [], None
        stamps = [[info.size, info.mtime_ns] for info in filesystem.get_file_info(files)]
        for file in files:
            with filesystem.open_input_file(file) as handle:
                meta = pq.ParquetFile(handle).metadata
                counts.append(meta.num_rows)
                schema = schema or meta.schema.to_arrow_schema()
    except (OSError, ValueError) as err:
        raise invalid("data", "a readable Parquet file or folder", str(path),
                      detail=f"{type(err).__name__}: {err}".splitlines()[0]) from None
    if not files:
        raise invalid("data", "a Parquet file or a folder of .parquet files", str(path),
                      detail="No Parquet file found there.", error=FileNotFoundError)
    names = list(schema.names)
    structure, wanted = _columns(columns, names)
    return {"path": str(path), "files": files, "counts": counts, "stamps": stamps, "columns": wanted,
            "structure": structure}, sum(counts)


def _columns(columns, names):
    """(structure, column names) of ``columns`` (a name, a list of names, or a dict of model input
    key to name), checked against the source's ``names``."""
    if columns is None:
        if len(names) != 1:
            raise invalid("columns", f"the input column(s) among {names}", columns,
                          detail="The source has several columns; say which hold the model's inputs.")
        columns = names[0]
    if isinstance(columns, str):
        structure, wanted = None, [columns]
    elif isinstance(columns, dict):
        structure, wanted = tuple(columns), list(columns.values())
    elif isinstance(columns, (list, tuple)) and columns and all(isinstance(c, str) for c in columns):
        structure, wanted = "list", list(columns)
    else:
        raise invalid("columns", "a column name, a list of names, or a dict of model input to name", columns,
                      error=TypeError)
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise invalid("columns", f"column names among {names}", unknown[0])
    return structure, wanted


def _read_parquet(source, start, stop):
    """Rows ``start:stop`` of a Parquet source: only the row groups that hold them are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, _ = _filesystem(source["path"])
    bounds = np.concatenate([[0], np.cumsum(source["counts"])])
    tables = []
    for i, file in enumerate(source["files"]):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if hi <= start or lo >= stop:
            continue
        with filesystem.open_input_file(file) as handle:
            reader = pq.ParquetFile(handle)
            sizes = [reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)]
            edges = lo + np.concatenate([[0], np.cumsum(sizes)])
            picked = [g for g in range(len(sizes)) if edges[g + 1] > start and edges[g] < stop]
            table = reader.read_row_groups(picked, columns=source["columns"])
            first = int(edges[picked[0]])
            tables.append(table.slice(max(start - first, 0), min(stop, hi) - max(start, first)))
    table = pa.concat_tables(tables)
    return _pack(source["structure"], [_arrow_numpy(table.column(c), c) for c in source["columns"]])


# --------------------------------------------------------------------------- the worker side


def _columns_of(predictions, rows) -> dict[str, np.ndarray]:
    """The Ray columns of one group's predictions (one per model output): the codec's arrays rows
    first, and its metadata once (see ``_META``)."""
    out = {_ROW: rows}
    for i, pred in enumerate(predictions):
        arrays, metadata = pred.to_arrays(rows_first=True)
        out.update({f"{i}:{name}": value for name, value in arrays.items()})
        meta = np.full(len(rows), b"", dtype=object)
        meta[0] = json.dumps(metadata, sort_keys=True).encode()
        out[f"{_META}{i}"] = meta
    return out


def _predictions_of(columns, order, plan) -> list:
    """The predictions of the columns :func:`_columns_of` made (rows taken in ``order``), through the codec."""
    from mcdrop.predictive import from_arrays

    outputs = []
    for i in range(sum(name.startswith(_META) for name in columns)):
        texts = {bytes(t) for t in columns[f"{_META}{i}"] if len(t)}
        metadata = [json.loads(t) for t in texts]
        if len(texts) != 1 or any(metadata[0].get(k) != plan[k] for k in ("num_samples", "mask", "seed")):
            raise RuntimeError("mcdrop.distributed: workers read the model's output differently "
                               f"({sorted(t.decode() for t in texts)}); state task= and outputs= explicitly.")
        prefix = f"{i}:"
        arrays = {name[len(prefix):]: array[order] for name, array in columns.items() if name.startswith(prefix)}
        outputs.append(from_arrays(arrays, metadata[0], rows_first=True, name="columns"))
    return outputs


def _as_list(prediction):
    return list(prediction.values()) if isinstance(prediction, dict) else (
        list(prediction) if isinstance(prediction, list) else [prediction])


def _without_unasked_samples(prediction, return_samples):
    return prediction if keeps_samples(prediction, return_samples) else prediction.without_samples()


class _Scorer:
    """The Ray Data actor: loads the model once, then scores whole groups of engine blocks.

    A batch is either group indices (``_GROUP``; the rows are read from ``source``: an input in the
    object store, a ``.npy`` file each worker memory-maps, or a Parquet source) or rows with their
    global index (``_ROW`` and the input columns ``_X0, _X1, ...``, from a Ray Dataset grouped by
    group index). With ``stream`` the actor writes each group to the job folder and returns only
    the group's small selections (see :func:`stream_pool`); without it, the group's statistics.
    """

    def __init__(self, *, model_path, unsafe, num_samples, seed, batch_size, group_rows, num_rows,
                 engine_options, source, return_samples, on_group=None, structure=None, stream=None):
        self.load_error = None
        self.group_rows, self.num_rows, self.batch_size = group_rows, num_rows, batch_size
        self.return_samples, self.on_group = return_samples, on_group
        self.structure, self.stream = structure, stream
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
                self.source = ("array", np.load(value, mmap_mode="r", allow_pickle=False))
            elif kind == "parquet":
                self.source = ("parquet", value)
            else:
                import ray

                self.source = ("array", ray.get(value[0]))

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
        flat = [np.asarray(batch[f"{_X}{i}"])[order] for i in range(len([k for k in batch if k.startswith(_X)]))]
        return self._score(_pack(self.structure, flat), rows, start // self.group_rows)

    def _score_group(self, group):
        start = group * self.group_rows
        stop = min(start + self.group_rows, self.num_rows)
        kind, value = self.source
        if kind == "parquet":
            x = _read_parquet(value, start, stop)
        else:
            structure, flat = _flat_inputs(value)
            x = _pack(structure, [np.asarray(v[start:stop]) for v in flat])
        return self._score(x, np.arange(start, stop, dtype=np.int64), group)

    def _score(self, x, rows, group):
        if self.on_group is not None:
            self.on_group(group)
        keep = self.return_samples
        if self.stream is not None and self.stream["candidates"]:
            keep = True  # the candidates' per-pass probabilities (the statistics' bits do not change)
        # per-example masks are keyed by a row's index in the whole pool
        prediction = self.engine.predict(x, return_samples=keep, row_offset=int(rows[0]))
        predictions = [_without_unasked_samples(p, self.return_samples) for p in _as_list(prediction)]
        if self.stream is not None:
            return _write_group(self.stream, group, int(rows[0]), int(rows[-1]) + 1, _as_list(prediction),
                                predictions)
        return _columns_of(predictions, rows)


# --------------------------------------------------------------------------- selection


#: Acquisition scores a job can select by globally (higher means label first).
SELECTABLE = ("bald", "max_entropy", "variation_ratio", "margin", "least_confidence", "mean_std",
              "predictive_variance", "epistemic_variance")


def _group_selection(stream, start, prediction) -> dict[str, np.ndarray]:
    """A group's top-k rows by each asked score and its top-m BALD candidates with their per-pass
    probabilities: the only per-row results a task hands back (O(k) per group)."""
    from mcdrop import acquisition

    chosen = {}
    for name, k in stream["select"].items():
        scores = np.asarray(acquisition.SCORES[name](prediction), dtype=np.float64)
        index = acquisition.top_k(scores, min(k, len(scores)))
        chosen[f"top.{name}.rows"], chosen[f"top.{name}.scores"] = start + index, scores[index]
    if stream["candidates"]:
        scores = np.asarray(prediction.mutual_information, dtype=np.float64)
        index = acquisition.top_k(scores, min(stream["candidates"], len(scores)))
        chosen["candidates.rows"], chosen["candidates.scores"] = start + index, scores[index]
        chosen["candidates.samples"] = np.ascontiguousarray(prediction.samples[:, index])
    return chosen


class _Merged:
    """The global top-k kept while groups come in: O(k) memory whatever the pool's size. Ties go
    to the lower row and NaN scores last, exactly as :func:`mcdrop.acquisition.top_k` over all rows."""

    def __init__(self, select, candidates):
        self.k = dict(select, **({"candidates": candidates} if candidates else {}))
        self.best = {}

    def add(self, chosen):
        for name, k in self.k.items():
            prefix = "candidates" if name == "candidates" else f"top.{name}"
            if f"{prefix}.rows" not in chosen:
                raise RuntimeError(f"mcdrop.distributed: a finished group lacks its {name} selection.")
            new = {"rows": chosen[f"{prefix}.rows"], "scores": chosen[f"{prefix}.scores"]}
            if name == "candidates":
                new["samples"] = chosen[f"{prefix}.samples"]
            old = self.best.get(name)
            if old is not None:
                new = {key: np.concatenate([old[key], new[key]], axis=1 if key == "samples" else 0)
                       for key in new}
            order = np.lexsort((new["rows"], -new["scores"]))[:k]
            self.best[name] = {key: (v[:, order] if key == "samples" else v[order]) for key, v in new.items()}


def _write_group(stream, group, start, stop, raw, predictions):
    """Write one group to the job folder and record it done; return the group's selections."""
    from mcdrop import store

    chosen = {}
    if stream["select"] or stream["candidates"]:
        chosen = _group_selection(stream, start, raw[stream["output"]])
    out = stream["out"]
    if out is not None:
        folders = [Path(out) / str(n) for n in stream["names"]] if stream["names"] else [Path(out)]
        try:
            for folder, pred in zip(folders, predictions):
                store.write_rows(folder, pred, start)
            if stream.get("on_write") is not None:  # tests: a fault between the rows and the record
                stream["on_write"](group)
            if stream["parquet"]:
                _write_parquet_part(Path(out), group, start, predictions, stream["names"])
            store.mark_done(out, group, start, stop, chosen)
        except OSError as err:
            raise store.full_disk_error(err, out) from err
    buffer = io.BytesIO()
    np.savez(buffer, **chosen)
    return {_GROUP: np.array([group], np.int64), _PAYLOAD: np.array([buffer.getvalue()], dtype=object)}


def _arrow_column(array):
    """(rows, ...) numbers as an Arrow column: scalars, or fixed-size lists nested once per axis."""
    import pyarrow as pa

    array = np.ascontiguousarray(array)
    column = pa.array(array.reshape(-1))
    for size in reversed(array.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def _write_parquet_part(out, group, start, predictions, names):
    """One Parquet file per group, written through :func:`mcdrop.io.atomic_write`: ``row`` and every
    per-row statistic (``to_dict()`` and the codec's arrays, rows first) as a column; each output's
    codec metadata in the schema's metadata (``mcdrop.prediction``, ``mcdrop.prediction.<output>``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mcdrop import io as mcio

    n = len(predictions[0])
    columns, schema_meta = {"row": pa.array(np.arange(start, start + n, dtype=np.int64))}, {}
    for i, pred in enumerate(predictions):
        prefix = f"{names[i]}." if names else ""
        arrays, metadata = pred.to_arrays(rows_first=True)
        for name, value in {**pred.to_dict(), **arrays}.items():
            if np.ndim(value) and len(value) == n and name != "sample_member":  # per row only
                columns[prefix + name] = _arrow_column(value)
        schema_meta["mcdrop.prediction" + (f".{names[i]}" if names else "")] = json.dumps(metadata)
    folder = out / _PARQUET
    folder.mkdir(exist_ok=True)
    with mcio.atomic_write(folder / f"part-{group:08d}.parquet") as handle:
        pq.write_table(pa.table(columns).replace_schema_metadata(schema_meta), handle)


# --------------------------------------------------------------------------- the driver side


def _group_rows_for(num_rows, block, workers, blocks_per_task):
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


def _resolve_data(data, ray, columns, key):
    """(kind, value, num_rows, structure): an in-memory input (one array or a list/dict of them), a
    .npy file to memory-map, a Parquet source, or a Ray Dataset (num_rows None: counted later)."""
    from mcdrop import io as mcio

    if isinstance(data, ray.data.Dataset):
        structure, wanted = _columns(columns, data.columns() or [])
        return "dataset", (data, wanted), None, structure
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        is_parquet = path.suffix.lower() == ".parquet" or path.is_dir() or "://" in str(data)
        if is_parquet:
            source, num_rows = _parquet_source(data, columns)
            return "parquet", source, num_rows, source["structure"]
        if path.suffix.lower() == ".npy" and path.is_file():
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception:
                array = None
            if isinstance(array, np.ndarray) and array.dtype.kind in "biuf":
                return "npy", (str(path.resolve()), array), len(array), None
        array = mcio.load_array(path, key=key, name="data")  # the clear error for a bad file, or the array
        return "array", array, len(array), None
    if isinstance(data, (dict, list, tuple)) or isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        structure, flat = _flat_inputs(data)
        if isinstance(data, (list, tuple)) and structure is None:
            flat = [data]
        arrays = []
        for i, value in enumerate(flat):
            label = "data" if structure is None else f"data[{list(structure)[i] if structure != 'list' else i!r}]"
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise invalid(label, "a numeric array", array, error=TypeError)
            if array.ndim == 0 or len(array) == 0:
                raise invalid(label, "an array with at least one row", array)
            arrays.append(array)
        if len({len(a) for a in arrays}) != 1:
            raise invalid("data", "inputs with the same number of rows", f"row counts {[len(a) for a in arrays]}")
        return "array", _pack(structure, arrays), len(arrays[0]), structure
    raise invalid("data", "a ray.data.Dataset, a numpy array (or a list/dict of them), a .npy/.npz/.csv path "
                          "or a Parquet file or folder", data, error=TypeError)


def _scored(ray, plan, groups):
    """The Ray Dataset of scored ``groups`` (group indices, or None for all)."""
    kind, value = plan["kind"], plan["value"]
    kwargs = dict(plan["scorer"])
    if kind == "dataset":
        dataset, wanted = value
        group_rows = kwargs["group_rows"]
        xs = dataset.select_columns(list(dict.fromkeys(wanted)))

        def inputs(batch):
            return {f"{_X}{i}": batch[c] for i, c in enumerate(wanted)}

        xs = xs.map_batches(inputs, batch_format="numpy")
        rows = ray.data.range(plan["num_rows"]).rename_columns({"id": _ROW})

        def label(batch):
            batch[_GROUP] = np.asarray(batch[_ROW], dtype=np.int64) // group_rows
            return batch

        ds = xs.zip(rows).map_batches(label, batch_format="numpy")
        if groups is not None:
            wanted_groups = np.asarray(groups, dtype=np.int64)

            def keep(batch):
                chosen = np.isin(batch[_GROUP], wanted_groups)
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
            return ds.groupby(_GROUP).map_groups(_Scorer, **actors)
        return ds.map_batches(_Scorer, batch_size=1, **actors)


def _run(ray, plan, groups):
    """Run the scorer over ``groups`` (group indices, or None for all); return the result columns."""
    columns = {}
    for batch in _scored(ray, plan, groups).iter_batches(batch_size=None, batch_format="numpy"):
        for name, array in batch.items():
            columns.setdefault(name, []).append(np.asarray(array))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def _assemble(columns, num_rows, rows_expected, plan):
    """Scatter the columns into pool order after checking every expected row came exactly once;
    one prediction per model output (a list, in the engine's output order)."""
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
    return _predictions_of(columns, order, plan)


def score_pool(model_path, data, *, num_samples: int = 50, seed: int | None = 0, num_workers: int | None = None,
               batch_size: int | None = None, blocks_per_task: int | None = None, column: str | None = None,
               key: str | None = None, candidates: int | None = None, return_samples: bool | None = None,
               out=None, overwrite: bool = False, resume: bool = False, columns=None, unsafe: bool = False,
               address: str | None = None,
               num_cpus: float = 1, num_gpus: float = 0, max_restarts: int = -1, verbose: bool = False,
               **engine_options) -> dict:
    """Score a pool with Monte Carlo dropout on a Ray cluster, in the pool's row order.

    The result equals ``MCDropout(load_model(model_path), num_samples, seed=seed,
    batch_size=batch_size).predict(data).to_dict()`` bit for bit, whatever ``num_workers`` and
    ``blocks_per_task``.

    Parameters
    ----------
    model_path : str or Path
        A ``.keras``/``.h5`` file every worker can read (a shared file system on a real cluster).
        Loaded in Keras safe mode, once by the driver (to plan and to fail early) and once per actor.
    data : ray.data.Dataset, array-like of shape (N, ...), list/dict of arrays, or path
        A ``.npy`` file is memory-mapped by each worker (``allow_pickle=False``); ``.npz`` and
        ``.csv`` files are read with :func:`mcdrop.io.load_array`; a ``.parquet`` file or a folder
        of them is read by each worker, only the row groups of its rows (files in sorted path
        order). The pool order of a Dataset is its row order. A list or dict of arrays feeds a
        multi-input model.
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
        The input column of a Ray Dataset with several columns (``columns`` says more).
    columns : str, list of str, or dict of str to str, optional
        The model inputs among a Ray Dataset's or a Parquet source's columns: one name, a list (a
        multi-input model's inputs in order) or a dict of model input key to column. Columns of
        fixed-size lists (nested for more axes) or Ray tensors become arrays of shape (N, ...).
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
        Have the workers write the rows to this job folder (:func:`stream_pool`; the driver gathers
        nothing) and return arrays memory-mapped from the finished :mod:`mcdrop.store`.
    overwrite : bool, default False
        Replace the store or job in a non-empty ``out``.
    resume : bool, default False
        Continue the job in ``out`` (see :func:`stream_pool`).
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
        other argument out of its domain, named with the value received; a model with several
        outputs (use :func:`predict_pool` or :func:`stream_pool`).
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
                              overwrite=overwrite, resume=resume, columns=columns, unsafe=unsafe, address=address,
                              num_cpus=num_cpus,
                              num_gpus=num_gpus, max_restarts=max_restarts, verbose=verbose, **engine_options)
    if isinstance(prediction, (list, dict)):
        raise invalid("model_path", "a model with one output (use predict_pool or stream_pool for several)",
                      str(model_path))
    return {**prediction.to_dict(), **extra}


def predict_pool(model_path, data, **options):
    """:func:`score_pool`, returning the prediction object instead of its ``to_dict()``.

    Takes the same arguments except ``candidates``. Returns a
    :class:`~mcdrop.ClassificationPrediction` or :class:`~mcdrop.RegressionPrediction` equal, field by
    field, to ``MCDropout(load_model(model_path), ...).predict(data)`` (memory-mapped from ``out``
    when given), for code that wants the prediction API: metrics, ``subset``, ``distribution``.
    For a multi-output model, a list or dict of them, as the engine returns.
    """
    if "candidates" in options:
        raise invalid("candidates", "no value here (use score_pool for candidates)", options["candidates"],
                      error=TypeError)
    prediction, _ = _pool(model_path, data, **options)
    return prediction


def _pool(model_path, data, *, candidates=None, out=None, overwrite=False, resume=False, column=None,
          columns=None, **options):
    """The work of :func:`score_pool`: (prediction, or a list/dict of them; extra arrays)."""
    if column is not None:
        columns = column if columns is None else columns
    if resume and out is None:
        raise invalid("out", "a job folder to resume (resume=True needs out=)", None)
    if out is not None:  # the workers write; the driver reads the finished store memory-mapped
        result = stream_pool(model_path, data, out, candidates=candidates, overwrite=overwrite, resume=resume,
                             columns=columns, **options)
        extra = {}
        if candidates is not None:
            extra = {"candidates": result.candidates, "candidate_samples": result.candidate_samples}
        return result.load(), extra
    ray, engine, plan, context = _prepare(model_path, data, columns=columns, **options)
    with context:
        outputs = _assemble(_run(ray, plan, None), plan["num_rows"], np.arange(plan["num_rows"]), plan)
        extra = {}
        if candidates is not None:
            extra = _candidates(ray, plan, outputs[0], candidates, plan["scorer"]["batch_size"])
    return engine._pack_outputs(outputs), extra


class _RayContext:
    """Ray Data settings for one job, restored afterwards; a worker's model-loading failure becomes
    one clear ``ValueError`` naming ``model_path``."""

    def __init__(self, model_path, verbose):
        self.model_path, self.verbose = model_path, verbose

    def __enter__(self):
        from ray.data import DataContext

        self.context = context = DataContext.get_current()
        self.bars, self.shuffle = context.enable_progress_bars, getattr(context, "shuffle_strategy", None)
        context.enable_progress_bars = bool(self.verbose)
        # Grouping a Dataset's rows by group is a shuffle: the pull-based sort shuffle runs as plain
        # tasks, where the hash shuffle would hold aggregator actors whose CPUs the scorers then wait for.
        # (Ray versions without ``shuffle_strategy`` have only the sort shuffle.)
        if self.shuffle is not None:
            context.shuffle_strategy = type(self.shuffle)("sort_shuffle_pull_based")
        return self

    def __exit__(self, kind, err, traceback):
        self.context.enable_progress_bars = self.bars
        if self.shuffle is not None:
            self.context.shuffle_strategy = self.shuffle
        if isinstance(err, Exception) and not str(err).startswith("Invalid value"):
            clear = _check_model_error(err, self.model_path) or _store_full_error(err)
            if clear is not None:
                raise clear from None
        return False


def _store_full_error(err):
    """A worker's full disk (wrapped by Ray) as one StoreFullError on the driver, or None."""
    import re

    from mcdrop import store

    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, store.StoreFullError) or "StoreFullError" in type(current).__name__:
            break
        current = current.__cause__ or current.__context__
    text = str(current if current is not None else err)
    if "StoreFullError" not in text and current is None:
        return None
    lines = [line for line in text.splitlines() if "disk is full" in line] or [text.strip().splitlines()[-1]]
    message = re.sub(r"^.*?StoreFullError:\s*", "", lines[-1].strip())
    return store.StoreFullError(errno.ENOSPC, re.sub(r"^\[Errno \d+\]\s*", "", message))


#: Test-only fault injection, kept out of every signature: ``on_group(group)`` runs in a worker before
#: it scores a group, ``on_write(group)`` after it wrote a group's rows and before it records the group
#: as done. Tests set them on the driver (monkeypatch); the driver sends them to the workers with the
#: scorer's options. None in normal use.
_TEST_HOOKS: dict = {"on_group": None, "on_write": None}


def _check_options(engine_options, *, num_samples, seed, num_workers, blocks_per_task, max_restarts,
                   num_cpus, num_gpus):
    """The checked (num_samples, seed, num_workers, blocks_per_task, max_restarts); a seed drawn for None."""
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
    max_restarts = check_int(max_restarts, "max_restarts", minimum=-1)
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise invalid(name, "a number >= 0", value)
    return num_samples, seed, num_workers, blocks_per_task, max_restarts


def _workers(ray, num_workers, num_cpus, num_gpus) -> int:
    """The actors to start (default: the cluster's CPUs / ``num_cpus``), with a warning when the cluster
    cannot hold them all now."""
    if num_workers is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        num_workers = max(1, int(cpus // num_cpus) if num_cpus else int(cpus))
    short = _short_of_resources(ray.cluster_resources(), num_workers, num_cpus, num_gpus)
    if short:
        warnings.warn(short, ResourceWarning, stacklevel=5)
    return num_workers


def _worker_source(ray, kind, value):
    """How the workers read their rows: a .npy path to memory-map, an input in the object store, a
    Parquet source, or None (a Ray Dataset's rows come with the batches)."""
    if kind == "npy":
        return ("npy", value[0])
    if kind == "array":
        structure, flat = _flat_inputs(value)
        return ("ref", [ray.put(_pack(structure, [np.ascontiguousarray(v) for v in flat]))])
    return ("parquet", value) if kind == "parquet" else None


def _prepare(model_path, data, *, num_samples=50, seed=0, num_workers=None, batch_size=None,
             blocks_per_task=None, columns=None, key=None, return_samples=None, unsafe=False, address=None,
             num_cpus=1, num_gpus=0, max_restarts=-1, verbose=False, group_rows=None, **engine_options):
    """Check the arguments, load the model on the driver, resolve the data and plan the groups:
    (ray, engine, plan, context). ``group_rows``: a resumed job's group size."""
    ray = _ray()
    from mcdrop.engine import inputs
    from mcdrop.engine.mc_dropout import MCDropout
    from mcdrop.io import load_model

    num_samples, seed, num_workers, blocks_per_task, max_restarts = _check_options(
        engine_options, num_samples=num_samples, seed=seed, num_workers=num_workers,
        blocks_per_task=blocks_per_task, max_restarts=max_restarts, num_cpus=num_cpus, num_gpus=num_gpus)
    # The driver loads the model too: a bad file fails here, before any Ray work, and the plan
    # (rows per block) comes from the same engine code the single-process run uses.
    model = load_model(model_path, unsafe=unsafe, name="model_path")
    engine = MCDropout(model, num_samples, seed, batch_size=batch_size, verbose=0, **engine_options)
    kind, value, num_rows, structure = _resolve_data(data, ray, columns, key)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=bool(verbose))
    if kind == "dataset":
        num_rows = value[0].count()
        if num_rows == 0:
            raise invalid("data", "a dataset with at least one row", "an empty ray.data.Dataset")
    first = _first_rows(kind, value, structure)
    inputs.as_flat(first, engine._spec, "data")  # the model takes it, or a clear error
    block, _ = engine.plan(num_rows)
    num_workers = _workers(ray, num_workers, num_cpus, num_gpus)
    group_rows = group_rows or _group_rows_for(num_rows, block, num_workers, blocks_per_task)
    num_groups = -(-num_rows // group_rows)
    plan = {
        "kind": "dataset" if kind == "dataset" else "groups", "value": value, "num_rows": num_rows,
        "num_groups": num_groups, "workers": min(num_workers, num_groups), "num_cpus": num_cpus,
        "num_gpus": num_gpus, "max_restarts": max_restarts, "num_samples": num_samples,
        "mask": engine.mask, "seed": seed, "first": first, "source_kind": kind,
        "scorer": dict(model_path=str(model_path), unsafe=unsafe, num_samples=num_samples, seed=seed,
                       batch_size=block, group_rows=group_rows, num_rows=num_rows,
                       engine_options=dict(engine_options), source=_worker_source(ray, kind, value),
                       return_samples=return_samples, on_group=_TEST_HOOKS["on_group"], structure=structure),
    }
    return ray, engine, plan, _RayContext(model_path, verbose)


def _first_rows(kind, value, structure):
    """The pool's first row, as the model input (to check the input and to probe output shapes)."""
    if kind == "dataset":
        dataset, wanted = value
        batch = dataset.take_batch(1, batch_format="numpy")
        return _pack(structure, [np.asarray(batch[c]) for c in wanted])
    if kind == "parquet":
        return _read_parquet(value, 0, 1)
    array = value[1] if kind == "npy" else value
    structure_, flat = _flat_inputs(array)
    return _pack(structure_, [np.asarray(v[:1]) for v in flat])


def _candidates(ray, plan, prediction, m, block):
    """Per-pass probabilities of the ``m`` rows of highest BALD: their blocks run again, one block
    per group, with samples kept (the same blocks, offsets and masks, so the same bits)."""
    from mcdrop.acquisition import top_k as _top_k

    if not isinstance(prediction, ClassificationPrediction):
        raise invalid("candidates", "None for a regression model (BatchBALD needs class probabilities)", m)
    m = min(m, len(prediction))
    index = _top_k(prediction.mutual_information, m)
    blocks = np.unique(index // block)
    rows = np.concatenate([np.arange(b * block, min((b + 1) * block, plan["num_rows"])) for b in blocks])
    again = dict(plan, scorer=dict(plan["scorer"], group_rows=block, return_samples=True),
                 num_groups=-(-plan["num_rows"] // block))
    again["workers"] = min(plan["workers"], len(blocks))
    sub = _assemble(_run(ray, again, blocks), plan["num_rows"], rows, again)[0]
    position = np.searchsorted(rows, index)
    return {"candidates": index, "candidate_samples": np.ascontiguousarray(sub.samples[:, position])}


# --------------------------------------------------------------------------- streaming jobs


@dataclasses.dataclass(frozen=True)
class PoolResult:
    """What the driver of :func:`stream_pool` keeps: where the rows went and the global selections.

    Attributes
    ----------
    out : Path or None
        The job folder (None when only selections were asked).
    num_rows : int
        N, the pool's rows.
    top : dict of str to ndarray of shape (k,)
        Per asked score, the pool indices of its ``k`` highest rows, highest first (ties to the
        lower row), equal to ``acquisition.top_k(score(prediction), k)`` over the whole pool.
    top_scores : dict of str to ndarray of shape (k,)
        Their scores.
    candidates : ndarray of shape (M,) or None
        The ``M`` rows of highest BALD, highest first.
    candidate_samples : ndarray of shape (T, M, C) or None
        Their per-pass probabilities: the input of :func:`mcdrop.acquisition.batch_bald`.
    groups_run, groups_skipped : int
        Groups scored by this call, and groups a resumed job found done.
    """

    out: Path | None
    num_rows: int
    top: dict
    top_scores: dict
    candidates: np.ndarray | None
    candidate_samples: np.ndarray | None
    groups_run: int
    groups_skipped: int

    def load(self, *, mmap: bool = True):
        """The pooled prediction, memory-mapped from ``out`` (see :func:`mcdrop.store.load`)."""
        from mcdrop import store

        if self.out is None:
            raise invalid("out", "a job folder (this job wrote no rows: it was run with out=None)", None)
        return store.load(self.out, mmap=mmap)


def _sha256(path) -> str:
    """The model file's (or SavedModel folder's) bytes, hashed: what a resume must find again."""
    digest, path = hashlib.sha256(), Path(path)
    if not path.exists():  # not on the driver's file system (its workers' loading decides)
        return f"not on the driver: {path}"
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _source_id(kind, value, num_rows) -> str:
    """What identifies the pool for a resume: a file's path, size and modification time; a Parquet
    source's files, row counts, sizes and modification times; an in-memory input's bytes; a
    Dataset's schema and rows."""
    if kind == "npy":
        stat = os.stat(value[0])
        return f"npy {value[0]} {stat.st_size} {stat.st_mtime_ns}"
    if kind == "parquet":
        listing = [value["files"], value["counts"], value["stamps"]]
        return "parquet " + hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    if kind == "dataset":
        return f"ray.data.Dataset {value[0].schema()} {num_rows} rows"
    digest = hashlib.sha256()
    for array in _flat_inputs(value)[1]:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype} {array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return "array " + digest.hexdigest()


def _check_resume(recorded, wanted):
    differs = [f"{name} (job: {recorded.get(name)!r}, now: {value!r})"
               for name, value in wanted.items() if recorded.get(name) != value]
    if differs:
        raise invalid("resume", "the options the job in `out` was started with", "different " + ", ".join(differs),
                      detail="Start a new job (another `out`, or overwrite=True) to change them.")


def stream_pool(model_path, data, out=None, *, select: dict | None = None, candidates: int | None = None,
                output=None, parquet: bool = False, resume: bool = False, overwrite: bool = False,
                num_samples: int = 50, seed: int | None = 0, num_workers: int | None = None,
                batch_size: int | None = None, blocks_per_task: int | None = None, columns=None,
                key: str | None = None, return_samples: bool | None = None, unsafe: bool = False,
                address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, max_restarts: int = -1,
                verbose: bool = False, **engine_options) -> PoolResult:
    """Score a pool of any size on a Ray cluster: the workers write, the driver keeps O(k).

    Each Ray task scores a group of consecutive engine blocks (the same blocks, offsets and masks
    as :func:`score_pool`, so the same bits as one process), writes the group's rows in place into
    the job folder ``out`` (a :mod:`mcdrop.store` of N rows, and optionally one Parquet file per
    group), records the group as done with an atomic rename, and hands back only its own top-k rows
    per asked score (and its top BALD candidates with their per-pass probabilities). The driver
    merges those into the global selections and never holds a per-row array.

    Parameters
    ----------
    model_path : str or Path
        As for :func:`score_pool`.
    data : array-like, list/dict of arrays, path, or ray.data.Dataset
        As for :func:`score_pool`, plus multi-input models (a list or dict of arrays, or several
        Dataset/Parquet columns) and Parquet: a ``.parquet`` file or a folder of them (local, or any
        URI pyarrow reads such as ``s3://bucket/pool/``), in sorted path order, rows in file order.
        Each task reads only the row groups that hold its rows.
    out : str or Path, optional
        The job folder (on a file system every worker writes to): ``mcdrop.store.load(out)`` opens
        the finished job memory-mapped (a list/dict of predictions for a multi-output model: one
        store folder per output). None: nothing is written, only the selections are returned.
    select : dict of str to int, optional
        Global top-k per acquisition score, e.g. ``{"bald": 100, "margin": 50}``; the names of
        :data:`SELECTABLE` (:data:`mcdrop.acquisition.SCORES`).
    candidates : int, optional
        The M rows of highest BALD with their per-pass probabilities (BatchBALD's input).
    output : int or str, optional
        Which output of a multi-output model the selections score (required for such a model when
        selecting).
    parquet : bool, default False
        Also write ``out/rows/part-*.parquet``: one row per pool row, the ``row`` index and every
        statistic of ``prediction.to_dict()`` as a column (arrays as fixed-size lists; a multi-output
        model's columns prefixed ``"<output>."``), for pandas, pyarrow, Spark or Ray.
    resume : bool, default False
        Continue the job in ``out``: the groups recorded as done are skipped and the result equals an
        uninterrupted run bit for bit. The model file (its bytes), the pool, ``num_samples``, ``seed``
        (None: the job's), the block layout and every option must be those of the job; a difference is
        refused, naming it. With nothing in ``out`` yet, a new job starts.
    overwrite : bool, default False
        Replace the job or store in ``out``.
    num_samples, seed, num_workers, batch_size, blocks_per_task, key, return_samples, unsafe, address, \
num_cpus, num_gpus, max_restarts, verbose, **engine_options
        As for :func:`score_pool`. ``columns`` (a name, a list or a dict of model input to column) names
        the model inputs of a Dataset or Parquet source.

    Returns
    -------
    PoolResult

    Raises
    ------
    ValueError
        A bad argument, a model file the driver or a worker cannot load, an unreadable source, or
        ``resume`` with different options (nothing written in each case).
    mcdrop.store.StoreFullError
        The disk filled up: the groups recorded before stay readable (:func:`mcdrop.store.load_written`)
        and the job resumes once there is room.
    FileExistsError
        ``out`` is not empty and neither ``resume`` nor ``overwrite`` was given (``overwrite``
        replaces only a store or a job folder).
    RuntimeError
        The cluster did not record every group exactly once (checked, never assumed).

    Examples
    --------
    >>> job = stream_pool("model.keras", "pool/", "results/", select={"bald": 100}, columns="x")  # doctest: +SKIP
    >>> job.top["bald"][:3], mcdrop.store.load("results/").mean.shape  # doctest: +SKIP
    """
    from mcdrop import store

    select, candidates = _check_selection(select, candidates, parquet, out, resume)
    out = None if out is None else Path(out)
    recorded = store.read_job(out) if out is not None and resume and out.is_dir() else None
    if out is not None and recorded is None:
        store.check_new_folder(out, overwrite, what="a prediction store or job")
    if recorded is not None and seed is None:
        seed = recorded.get("seed")  # a resumed job keeps the seed it drew
    group_rows = recorded.get("group_rows") if recorded is not None and blocks_per_task is None else None
    ray, engine, plan, context = _prepare(model_path, data, num_samples=num_samples, seed=seed,
                                          num_workers=num_workers, batch_size=batch_size,
                                          blocks_per_task=blocks_per_task, columns=columns, key=key,
                                          return_samples=return_samples, unsafe=unsafe, address=address,
                                          num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                                          verbose=verbose, group_rows=group_rows, **engine_options)
    for name, k in select.items():
        if k > plan["num_rows"]:
            raise invalid(f"select[{name!r}]", f"an integer <= {plan['num_rows']} (the pool size)", k)
    probe, names, index = _probe(engine, plan, select, candidates, output, return_samples)
    fingerprint = _fingerprint(model_path, plan, return_samples=return_samples, parquet=parquet, select=select,
                               candidates=candidates, output=index)
    job = _Job(out, recorded, names, plan)
    job.open(fingerprint, probe, [_without_unasked_samples(p, return_samples) for p in _as_list(probe)],
             overwrite=overwrite, model_path=model_path)
    todo = [g for g in range(plan["num_groups"]) if g not in job.done]
    merged = _Merged(select, candidates)
    plan["scorer"] = dict(plan["scorer"], stream={
        "out": None if out is None else str(out), "select": select, "candidates": candidates, "output": index,
        "names": names, "parquet": parquet, "on_write": _TEST_HOOKS["on_write"]})
    plan["workers"] = max(1, min(plan["workers"], len(todo)))
    job.run(ray, plan, context, todo, merged)
    job.finish(merged)
    best = merged.best
    cand = best.get("candidates")
    return PoolResult(
        out=out, num_rows=plan["num_rows"], top={n: best[n]["rows"].astype(np.int64) for n in select},
        top_scores={n: best[n]["scores"] for n in select},
        candidates=None if cand is None else cand["rows"].astype(np.int64),
        candidate_samples=None if cand is None else cand["samples"],
        groups_run=len(todo), groups_skipped=len(job.done))


def _check_selection(select, candidates, parquet, out, resume):
    """The checked ``select`` (a new dict) and ``candidates`` of :func:`stream_pool`."""
    select = dict(select or {})
    for name, k in select.items():
        if name not in SELECTABLE:
            raise invalid("select", f"scores among {list(SELECTABLE)}", name)
        select[name] = check_int(k, f"select[{name!r}]", minimum=1)
    if candidates is not None:
        candidates = check_int(candidates, "candidates", minimum=1)
    if not isinstance(parquet, bool):
        raise invalid("parquet", "True or False", parquet, error=TypeError)
    if out is None and (resume or parquet):
        raise invalid("out", "a job folder (resume and parquet need one)", None)
    if out is None and not (select or candidates):
        raise invalid("out", "a job folder, or select=/candidates= (otherwise the job keeps nothing)", None)
    return select, candidates


def _probe(engine, plan, select, candidates, output, return_samples):
    """One row on the driver: the outputs' types and shapes (to create the files), their names, and the
    index of the output the selections score, checked to take every asked score.

    Returns (probe, names or None for one output, index)."""
    from mcdrop import acquisition

    probe = engine.predict(plan["first"], return_samples=True if candidates else return_samples)
    probes = _as_list(probe)
    names = None
    if len(probes) > 1:
        names = list(probe) if isinstance(probe, dict) else [str(n) for n in engine._output_names()]
        if len(set(names)) != len(names):
            names = [str(i) for i in range(len(probes))]
    index = 0
    if not (select or candidates):
        return probe, names, index
    if output is not None:
        keys = names or ["0"]
        if str(output) in keys:
            index = keys.index(str(output))
        elif isinstance(output, int) and not isinstance(output, bool) and 0 <= output < len(probes):
            index = output
        else:
            raise invalid("output", f"one of the model's outputs {keys}", output)
    elif len(probes) > 1:
        raise invalid("output", f"the output to select by, one of {names}", None)
    for name in select:
        try:
            acquisition.SCORES[name](probes[index])
        except (TypeError, ValueError):
            raise invalid("select", f"scores for a {probes[index].task} model", name) from None
    if candidates and not isinstance(probes[index], ClassificationPrediction):
        raise invalid("candidates", "None for a regression model (BatchBALD needs class probabilities)", candidates)
    return probe, names, index


def _fingerprint(model_path, plan, **options) -> dict:
    """What a resumed job must find again: the model's bytes, the pool, the layout and every option."""
    scorer = plan["scorer"]
    return {
        "model_sha256": _sha256(model_path), "data": _source_id(plan["source_kind"], plan["value"], plan["num_rows"]),
        "num_rows": plan["num_rows"], "num_samples": plan["num_samples"], "seed": plan["seed"],
        "batch_size": scorer["batch_size"], "group_rows": scorer["group_rows"],
        "engine_options": json.dumps(scorer["engine_options"], sort_keys=True, default=repr),
        "return_samples": options["return_samples"], "parquet": options["parquet"], "select": options["select"],
        "candidates": options["candidates"], "output": options["output"],
    }


class _Job:
    """A streaming job's folder on the driver: started or resumed, run, checked and finished."""

    def __init__(self, out, recorded, names, plan):
        self.out, self.recorded, self.names, self.plan = out, recorded, names, plan
        self.done, self.created = {}, False
        self.folders = [] if out is None else ([out / n for n in names] if names else [out])

    def open(self, fingerprint, probe, kept, *, overwrite, model_path):
        """Check a resumed job against ``fingerprint``, or start one; create every store not created yet."""
        from mcdrop import io as mcio
        from mcdrop import store

        out = self.out
        if out is None:
            return
        if self.recorded is not None:
            _check_resume(self.recorded, fingerprint)
            self.done = store.done_groups(out)
        else:
            if out.exists() and overwrite:
                shutil.rmtree(out)
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            layout = None if self.names is None else {
                "names": self.names, "structure": "dict" if isinstance(probe, dict) else "list"}
            mcio.save_json(out / store.JOB_FILE, {**fingerprint, "outputs": layout, "model_path": str(model_path),
                                                  "complete": False})
        for folder, pred in zip(self.folders, kept):
            if not (folder / store.META_FILE).is_file():
                store.create(folder, pred, self.plan["num_rows"])
        group_rows = self.plan["scorer"]["group_rows"]
        for group, (start, stop) in self.done.items():
            if group >= self.plan["num_groups"] or (start, stop) != (
                    group * group_rows, min((group + 1) * group_rows, self.plan["num_rows"])):
                raise RuntimeError(f"mcdrop.distributed: the job in {out} records group {group} as rows "
                                   f"{start}:{stop}, which is not this job's layout; refusing to resume it.")

    def run(self, ray, plan, context, todo, merged):
        """Score the groups ``todo``, merging their selections; a new job that wrote no group leaves nothing."""
        from mcdrop import store

        seen = []
        try:
            if todo:
                with context:
                    stream = _scored(ray, plan, None if len(todo) == plan["num_groups"] else todo)
                    for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
                        for group, payload in zip(batch[_GROUP], batch[_PAYLOAD]):
                            seen.append(int(group))
                            with np.load(io.BytesIO(payload), allow_pickle=False) as chosen:
                                merged.add({k: chosen[k] for k in chosen.files})
        except BaseException:
            if self.out is not None and self.created and not store.done_groups(self.out):
                shutil.rmtree(self.out, ignore_errors=True)
            raise
        if sorted(seen) != todo:
            raise RuntimeError(f"mcdrop.distributed: the Ray job finished {len(seen)} groups for {len(todo)} "
                               f"({len(set(todo) - set(seen))} missing, {len(seen) - len(set(seen))} repeated); "
                               "refusing a result that does not hold every row exactly once.")

    def finish(self, merged):
        """Merge the selections of the groups an earlier run finished, check every group is recorded,
        and mark the stores and the job finished."""
        from mcdrop import io as mcio
        from mcdrop import store

        out = self.out
        if out is None:
            return
        for group in self.done:
            merged.add(store.read_done(out, group))
        if set(store.done_groups(out)) != set(range(self.plan["num_groups"])):
            raise RuntimeError(f"mcdrop.distributed: not every group of the job in {out} is recorded as done.")
        for folder in self.folders:
            store.finish(folder)
        mcio.save_json(out / store.JOB_FILE, dict(store.read_job(out), complete=True))


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

"""Predictions on disk: per-row arrays written block by block as ``.npy`` files (numpy only).

A pool of ten million rows does not fit in memory as a list of chunk results, but each block's
statistics can be appended to files as they come. A store is a folder::

    meta.json          task, number of passes, mask, seed, rows written
    mean.npy           (N, C) or (N, D)
    variance.npy ...   one file per field of the prediction type
    samples.npy        kept samples, stored rows first: (N, T, ...)

Files are written with plain appends (never through a memory map, where a full disk kills the
process with SIGBUS instead of raising), and after every block each file's header is rewritten to
the rows written so far: at any moment, even after a failure, every file is a valid ``.npy`` of the
rows that were completely written. :func:`load` opens a store with memory maps.

A Ray job (:func:`mcdrop.distributed.stream_pool`) writes the same layout from many processes at
once: the driver creates every file at its final shape (:func:`create`, sparse until written),
each task writes its rows in place at their offset (:func:`write_rows`, plain writes again) and
then records its group as done with an atomic rename (:func:`mark_done`); ``meta.json`` says
``"complete": false`` until the driver has seen every group (:func:`finish`). A job folder holds::

    job.json           the options the job was started with (what a resume must repeat)
    done/g00000012.npz one file per finished group: its rows and its per-group selections
    meta.json, *.npy   the store (single-output model), or one store folder per output
    rows/*.parquet     optionally, one Parquet file per group: one row per pool row

:func:`load` refuses a store whose job has not finished; :func:`load_written` reads the rows that
were written completely.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
from pathlib import Path

import numpy as np

from mcdrop._validation import invalid
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["PredictionWriter", "load", "load_written", "StoreFullError", "create", "write_rows", "mark_done",
           "done_groups", "finish"]

_TYPES = {"classification": ClassificationPrediction, "regression": RegressionPrediction}
_ROWS_SECOND = ("samples", "sample_variances")  # stored (N, T, ...) so that rows append
_HEADER_BYTES = 256  # room for any shape's header, padded (the format allows trailing spaces)


class StoreFullError(OSError):
    """The disk filled up while a store was written; the rows written so far stay readable."""


def _header(dtype: np.dtype, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    raw = buffer.getvalue()
    # keep every header the same length so it can be rewritten in place: pad the dict with spaces
    magic_and_len = 10
    text = raw[magic_and_len:].rstrip(b"\n").rstrip()
    body = text + b" " * (_HEADER_BYTES - magic_and_len - len(text) - 1) + b"\n"
    return raw[:8] + len(body).to_bytes(2, "little") + body


class _Appender:
    """A ``.npy`` file that grows along its first axis."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple):
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
        self.file = open(path, "wb")
        self.file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise invalid("prediction", f"rows of shape {self.row_shape}", block)
        self.file.seek(0, os.SEEK_END)
        self.file.write(block.tobytes())
        self.file.flush()
        self.rows += block.shape[0]

    def commit(self) -> None:
        """Make the header declare every row appended so far."""
        self.file.seek(0)
        self.file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.flush()
        self.file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self.file.close()


class PredictionWriter:
    """Append the predictions of consecutive row blocks to a store folder.

    Parameters
    ----------
    path : str or Path
        The folder (created; an existing store there is replaced only when ``overwrite``).
    overwrite : bool, default False
    """

    def __init__(self, path, *, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise invalid("out", "a new or empty folder (pass overwrite=True to replace it)", str(self.path),
                          error=FileExistsError)
        self.path.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, _Appender] = {}
        self._meta = None

    def append(self, prediction) -> None:
        """Write one block's prediction (rows after those already written)."""
        try:
            self._append(prediction)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                self._close_files()
                raise StoreFullError(
                    err.errno, f"The disk is full while writing predictions to {self.path}; the "
                    f"{self.rows} row(s) written before stay readable with mcdrop.store.load") from err
            raise

    def _append(self, prediction) -> None:
        fields = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
        arrays = {k: v for k, v in fields.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in fields.items() if not isinstance(v, np.ndarray) and v is not None}
        if self._meta is None:
            self._meta = {"task": prediction.task, "fields": sorted(arrays), "rows": 0, **scalars}
            for name, value in arrays.items():
                rows_first = np.moveaxis(value, 1, 0) if name in _ROWS_SECOND else value
                self._files[name] = _Appender(self.path / f"{name}.npy", value.dtype, rows_first.shape[1:])
        elif sorted(arrays) != self._meta["fields"] or prediction.task != self._meta["task"]:
            raise invalid("prediction", f"a {self._meta['task']} prediction with fields {self._meta['fields']}",
                          prediction)
        for name, value in arrays.items():
            self._files[name].append(np.moveaxis(value, 1, 0) if name in _ROWS_SECOND else value)
        for appender in self._files.values():
            appender.commit()
        self._meta["rows"] = self.rows
        self._write_meta()

    @property
    def rows(self) -> int:
        return min((a.rows for a in self._files.values()), default=0)

    def _write_meta(self) -> None:
        tmp = self.path / "meta.json.tmp"
        tmp.write_text(json.dumps(self._meta, indent=1))
        os.replace(tmp, self.path / "meta.json")

    def _close_files(self) -> None:
        for appender in self._files.values():
            appender.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On success, close the files. On an error, remove what this writer wrote (its ``.npy`` files,
        ``meta.json`` and its temporary file, and the folder when that leaves it empty), so nothing
        half-written stays, and let the error propagate. A :class:`StoreFullError` is the exception:
        its message promises the rows written before stay readable, and they do."""
        self._close_files()
        if exc_type is None or issubclass(exc_type, StoreFullError):
            return
        for path in [appender.path for appender in self._files.values()] + [self.path / "meta.json",
                                                                               self.path / "meta.json.tmp"]:
            path.unlink(missing_ok=True)
        self._files, self._meta = {}, None
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def close(self):
        """Finish the store and open it (memory-mapped)."""
        self._close_files()
        if self._meta is None:
            raise invalid("prediction", "at least one block written before close", None)
        return load(self.path)


def load(path, *, mmap: bool = True):
    """Open a store written by :class:`PredictionWriter`, ``MCDropout.predict(x, out=path)`` or a
    finished Ray job (for a job of a multi-output model: a list or dict of predictions).

    Raises
    ------
    ValueError
        The folder is a job that has not finished (see :func:`load_written`).
    """
    path = Path(path)
    job = _job(path)
    if job is not None and job.get("outputs") is not None:
        names = job["outputs"]["names"]
        loaded = [load(path / str(name), mmap=mmap) for name in names]
        return dict(zip(names, loaded)) if job["outputs"]["structure"] == "dict" else loaded
    meta = _meta(path)
    if not meta.get("complete", True):
        written = sum(stop - start for start, stop in done_groups(_job_root(path)).values())
        raise invalid("path", "a finished prediction store", str(path),
                      detail=f"Its job stopped with {written} of {meta['rows']} rows written; resume it "
                             "(resume=True, or mcdrop predict --resume) or read the rows written so far "
                             "with mcdrop.store.load_written.")
    return _open(path, meta, mmap)


def _meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise invalid("path", "a prediction store folder with a meta.json", str(path), error=FileNotFoundError)
    return json.loads(meta_path.read_text())


def _open(path: Path, meta: dict, mmap: bool):
    cls = _TYPES.get(meta.get("task"))
    if cls is None:
        raise invalid("path", "a store of a classification or regression prediction", meta.get("task"))
    values = {}
    for field in dataclasses.fields(cls):
        file = path / f"{field.name}.npy"
        if field.name in meta["fields"]:
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
            values[field.name] = np.moveaxis(array, 0, 1) if field.name in _ROWS_SECOND else array
        elif field.name in meta:
            value = meta[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value  # JSON has no tuples
    return cls(**values)


# --------------------------------------------------------------------------- jobs written in place

_JOB, _DONE = "job.json", "done"


def _job(path: Path) -> dict | None:
    file = path / _JOB
    return json.loads(file.read_text()) if file.is_file() else None


def _job_root(path: Path) -> Path:
    """The job folder of a store: the folder itself, or its parent for one output of several."""
    return path if (path / _JOB).is_file() else path.parent


def _full_disk(err: OSError, path) -> OSError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(err.errno, f"The disk is full while writing predictions to {path}; the groups "
                                         "recorded as done before stay readable with mcdrop.store.load_written, "
                                         "and the job resumes (resume=True) once there is room")
    return err


def _row_files(prediction) -> dict[str, np.ndarray]:
    """The prediction's per-row arrays, rows first."""
    arrays = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    return {k: (np.moveaxis(v, 1, 0) if k in _ROWS_SECOND else v)
            for k, v in arrays.items() if isinstance(v, np.ndarray)}


def create(path, prediction, num_rows: int) -> None:
    """Create a store of ``num_rows`` rows shaped like ``prediction`` (any number of rows), every
    file at its final size but not written (sparse where the file system allows), marked unfinished.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fields = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
    scalars = {k: v for k, v in fields.items() if not isinstance(v, np.ndarray) and v is not None}
    rows_first = _row_files(prediction)
    try:
        for name, value in rows_first.items():
            shape = (num_rows, *value.shape[1:])
            with open(path / f"{name}.npy", "wb") as file:
                file.write(_header(value.dtype, shape))
                file.truncate(_HEADER_BYTES + int(np.prod(shape)) * value.dtype.itemsize)
        meta = {"task": prediction.task, "fields": sorted(rows_first), "rows": num_rows, "complete": False,
                **scalars}
        _replace_text(path / "meta.json", json.dumps(meta, indent=1))
    except OSError as err:
        raise _full_disk(err, path) from err


def write_rows(path, prediction, start: int) -> None:
    """Write ``prediction``'s rows in place at rows ``start, start + 1, ...`` of the store
    :func:`create` made, and flush them to the disk."""
    path = Path(path)
    try:
        for name, value in _row_files(prediction).items():
            value = np.ascontiguousarray(value)
            with open(path / f"{name}.npy", "r+b") as file:
                file.seek(_HEADER_BYTES + start * (value.nbytes // max(len(value), 1)))
                file.write(value.tobytes())
                file.flush()
                os.fsync(file.fileno())
    except OSError as err:
        raise _full_disk(err, path) from err


def _replace_text(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def mark_done(job, group: int, start: int, stop: int, arrays: dict | None = None) -> None:
    """Record group ``group`` (rows ``start:stop``) as written, with its small per-group results,
    atomically: the marker appears whole or not at all."""
    folder = Path(job) / _DONE
    try:
        folder.mkdir(exist_ok=True)
        target = folder / f"g{group:08d}.npz"
        tmp = folder / f".g{group:08d}.{os.getpid()}.tmp"
        with open(tmp, "wb") as file:
            np.savez(file, _start=np.int64(start), _stop=np.int64(stop), **(arrays or {}))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise _full_disk(err, job) from err


def done_groups(job) -> dict[int, tuple[int, int]]:
    """{group: (start, stop)} of the groups recorded as done."""
    folder = Path(job) / _DONE
    done = {}
    for file in sorted(folder.glob("g*.npz")) if folder.is_dir() else ():
        with np.load(file, allow_pickle=False) as marker:
            done[int(file.stem[1:])] = (int(marker["_start"]), int(marker["_stop"]))
    return done


def read_done(job, group: int) -> dict[str, np.ndarray]:
    """The small per-group results recorded with group ``group``."""
    with np.load(Path(job) / _DONE / f"g{group:08d}.npz", allow_pickle=False) as marker:
        return {k: marker[k] for k in marker.files if not k.startswith("_")}


def finish(path) -> None:
    """Mark the store at ``path`` finished (every row written)."""
    path = Path(path)
    meta = _meta(path)
    meta["complete"] = True
    _replace_text(path / "meta.json", json.dumps(meta, indent=1))


def load_written(path, *, mmap: bool = True):
    """The rows a job wrote completely so far, whether or not it finished.

    Returns
    -------
    rows : ndarray of shape (M,) and dtype int64
        Pool indices of the rows written, ascending.
    prediction : ClassificationPrediction or RegressionPrediction (a list/dict for several outputs)
        Those rows only (``prediction.subset(rows)`` of the whole store), in memory.
    """
    path = Path(path)
    root = _job_root(path)
    spans = sorted(done_groups(root).values())
    rows = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, np.int64)
    job = _job(path)
    if job is not None and job.get("outputs") is not None:
        names = job["outputs"]["names"]
        parts = [_open(path / str(n), _meta(path / str(n)), mmap).subset(rows) for n in names]
        return rows, (dict(zip(names, parts)) if job["outputs"]["structure"] == "dict" else parts)
    return rows, _open(path, _meta(path), mmap).subset(rows)

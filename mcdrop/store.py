"""Predictions on disk: per-row arrays written block by block as ``.npy`` files (numpy only).

A pool of ten million rows does not fit in memory as a list of chunk results, but each block's
statistics can be appended to files as they come. A store is a folder::

    meta.json          the prediction's codec metadata (format, task, num_samples, mask, seed, ...),
                       the array files it holds ("fields") and the rows written
    mean.npy           (N, C) or (N, D)
    variance.npy ...   one file per array of the prediction's codec (``to_arrays``)
    samples.npy        kept samples, stored rows first: (N, T, ...)

The store is the prediction's codec on disk: ``prediction.to_arrays(rows_first=True)`` gives the files
and ``meta.json``, :func:`mcdrop.predictive.from_arrays` reads them back and checks every field. Files
are written through :mod:`mcdrop.io`: the arrays with plain appends (:class:`mcdrop.io.NpyAppender`,
never through a memory map, where a full disk kills the process with SIGBUS instead of raising), each
file's header rewritten after every block to the rows appended so far, so that every file is a valid
``.npy`` at any moment. At most every second (``PredictionWriter.SYNC_SECONDS``), after a full disk,
and at the end, the rows are flushed to the disk (``fsync``) and only then recorded in ``meta.json``,
replaced atomically: :func:`load` opens (memory-mapped) the rows ``meta.json`` records, so neither a
crash nor a power loss ever hands it a row that was not completely written.

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

import contextlib
import errno
import json
import time
from pathlib import Path

import numpy as np

from mcdrop import io
from mcdrop._validation import invalid
from mcdrop.predictive import from_arrays

__all__ = ["PredictionWriter", "load", "load_written", "StoreFullError", "create", "write_rows", "mark_done",
           "done_groups", "finish", "check_new_folder", "read_job", "full_disk_error", "JOB_FILE", "META_FILE"]


class StoreFullError(OSError):
    """The disk filled up while a store was written; the rows written so far stay readable."""


def check_new_folder(path: Path, overwrite: bool, *, what: str = "a prediction store") -> None:
    """Refuse a non-empty ``path`` unless ``overwrite`` (and then only a store or job folder)."""
    if not (path.exists() and (not path.is_dir() or any(path.iterdir()))):
        return
    if not overwrite:
        raise invalid("out", "a new or empty folder (pass overwrite=True to replace it)", str(path),
                      error=FileExistsError)
    if not path.is_dir() or not ((path / JOB_FILE).is_file() or (path / META_FILE).is_file()):
        raise invalid("out", f"a folder holding {what} (overwrite=True replaces only those)", str(path),
                      error=FileExistsError)


class PredictionWriter:
    """Append the predictions of consecutive row blocks to a store folder.

    Parameters
    ----------
    path : str or Path
        The folder (created; an existing store there is replaced only when ``overwrite``).
    overwrite : bool, default False
    """

    #: At most this often (seconds) the rows appended are flushed to the disk and recorded in ``meta.json``
    #: (and at :meth:`close`): durability without an ``fsync`` per block.
    SYNC_SECONDS = 1.0

    def __init__(self, path, *, overwrite: bool = False):
        self.path = Path(path)
        check_new_folder(self.path, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, io.NpyAppender] = {}
        self._meta = None
        self._synced = time.monotonic()

    def append(self, prediction) -> None:
        """Write one block's prediction (rows after those already written)."""
        try:
            self._append(prediction)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                with contextlib.suppress(OSError):  # record the rows appended whole, if the disk still lets us
                    self._sync()
                self._close_files(sync=False)
                raise StoreFullError(
                    err.errno, f"The disk is full while writing predictions to {self.path}; the "
                    f"{self.rows} row(s) written before stay readable with mcdrop.store.load") from err
            raise

    def _append(self, prediction) -> None:
        arrays, metadata = prediction.to_arrays(rows_first=True)
        if self._meta is None:
            self._meta = {**metadata, "fields": sorted(arrays), "rows": 0}
            for name, value in arrays.items():
                self._files[name] = io.NpyAppender(self.path / f"{name}.npy", value.dtype, value.shape[1:])
        elif sorted(arrays) != self._meta["fields"] or any(self._meta[k] != v for k, v in metadata.items()):
            raise invalid("prediction", f"a {self._meta['task']} prediction with the arrays {self._meta['fields']} "
                          "and the metadata of the blocks before", prediction,
                          detail=f"They had {({k: self._meta[k] for k in metadata})}.")
        for name, value in arrays.items():
            self._files[name].append(value)
        for appender in self._files.values():
            appender.commit()
        if self._meta["rows"] == 0 or time.monotonic() - self._synced >= self.SYNC_SECONDS:
            self._sync()

    def _sync(self) -> None:
        """Flush every file's rows to the disk, then record them in ``meta.json`` (atomically): the rows
        :func:`load` reads, so a crash or a power loss never leaves it a row that is not there."""
        for appender in self._files.values():
            appender.sync()
        self._meta["rows"] = self.rows
        io.save_json(self.path / META_FILE, self._meta)
        self._synced = time.monotonic()

    @property
    def rows(self) -> int:
        return min((a.rows for a in self._files.values()), default=0)

    def _close_files(self, *, sync: bool = True) -> None:
        for appender in self._files.values():
            appender.close(sync=sync)

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On success, close the files. On an error, remove what this writer wrote (its ``.npy`` files,
        ``meta.json`` and its temporary file, and the folder when that leaves it empty), so nothing
        half-written stays, and let the error propagate. A :class:`StoreFullError` is the exception:
        its message promises the rows written before stay readable, and they do (as far as the full disk
        lets ``meta.json`` record them)."""
        if exc_type is None or issubclass(exc_type, StoreFullError):
            if self._meta is not None and any(not a.file.closed for a in self._files.values()):
                with contextlib.suppress(OSError):  # the rows' last record (close() may have made it)
                    self._sync()
            self._close_files(sync=exc_type is None)
            return
        self._close_files(sync=False)
        for path in [appender.path for appender in self._files.values()] + [self.path / "meta.json",
                                                                               self.path / "meta.json.tmp"]:
            path.unlink(missing_ok=True)
        self._files, self._meta = {}, None
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def close(self):
        """Finish the store and open it (memory-mapped)."""
        if self._meta is None:
            self._close_files()
            raise invalid("prediction", "at least one block written before close", None)
        self._sync()
        self._close_files()
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
    job = read_job(path)
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
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise invalid("path", "a prediction store folder with a meta.json", str(path), error=FileNotFoundError)
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid("path", "a prediction store whose meta.json is JSON", str(path),
                      detail=f"{type(err).__name__}: {err}".splitlines()[0]) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("fields"), list):
        raise invalid("path", "a prediction store whose meta.json lists its `fields`", str(path))
    return meta


def _open(path: Path, meta: dict, mmap: bool):
    """The store's prediction, its ``.npy`` files memory-mapped (``mmap``) and decoded by the codec."""
    arrays = {}
    for name in meta["fields"]:
        file = path / f"{name}.npy"
        if not file.is_file():
            raise invalid("path", f"a prediction store with the {name}.npy its meta.json lists", str(path),
                          error=FileNotFoundError)
        # the rows meta.json records: a file may hold more, appended after the last record
        arrays[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)[:meta.get("rows")]
    return from_arrays(arrays, meta, rows_first=True, name="path", source=path)


# --------------------------------------------------------------------------- jobs written in place

#: A job folder's options file, its done-markers' folder and a store's metadata file (see the module docs).
JOB_FILE, _DONE, META_FILE = "job.json", "done", "meta.json"


def read_job(path: Path) -> dict | None:
    """The options a job folder was started with (its ``job.json``), or None for a folder that holds no job."""
    file = path / JOB_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def _job_root(path: Path) -> Path:
    """The job folder of a store: the folder itself, or its parent for one output of several."""
    return path if (path / JOB_FILE).is_file() else path.parent


def full_disk_error(err: OSError, path) -> OSError:
    """``err`` as a :class:`StoreFullError` naming ``path`` when the disk (or quota) is full, else ``err``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(err.errno, f"The disk is full while writing predictions to {path}; the groups "
                                         "recorded as done before stay readable with mcdrop.store.load_written, "
                                         "and the job resumes (resume=True) once there is room")
    return err


def create(path, prediction, num_rows: int) -> None:
    """Create a store of ``num_rows`` rows shaped like ``prediction`` (any number of rows), every
    file at its final size but not written (sparse where the file system allows), marked unfinished.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays, metadata = prediction.to_arrays(rows_first=True)
    try:
        for name, value in arrays.items():
            io.create_npy(path / f"{name}.npy", value.dtype, (num_rows, *value.shape[1:]))
        io.save_json(path / META_FILE, {**metadata, "fields": sorted(arrays), "rows": num_rows, "complete": False})
    except OSError as err:
        raise full_disk_error(err, path) from err


def write_rows(path, prediction, start: int) -> None:
    """Write ``prediction``'s rows in place at rows ``start, start + 1, ...`` of the store
    :func:`create` made, and flush them to the disk."""
    path = Path(path)
    try:
        for name, value in prediction.to_arrays(rows_first=True)[0].items():
            io.write_npy_rows(path / f"{name}.npy", value, start)
    except OSError as err:
        raise full_disk_error(err, path) from err


def mark_done(job, group: int, start: int, stop: int, arrays: dict | None = None) -> None:
    """Record group ``group`` (rows ``start:stop``) as written, with its small per-group results,
    atomically: the marker appears whole or not at all."""
    folder = Path(job) / _DONE
    try:
        folder.mkdir(exist_ok=True)
        io.save_npz(folder / f"g{group:08d}.npz", {"_start": np.int64(start), "_stop": np.int64(stop),
                                                     **(arrays or {})}, compressed=False)
    except OSError as err:
        raise full_disk_error(err, job) from err


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
    io.save_json(path / META_FILE, meta)


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
    job = read_job(path)
    if job is not None and job.get("outputs") is not None:
        names = job["outputs"]["names"]
        parts = [_open(path / str(n), _meta(path / str(n)), mmap).subset(rows) for n in names]
        return rows, (dict(zip(names, parts)) if job["outputs"]["structure"] == "dict" else parts)
    return rows, _open(path, _meta(path), mmap).subset(rows)

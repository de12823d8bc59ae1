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

__all__ = ["PredictionWriter", "load", "StoreFullError"]

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

    def close(self):
        """Finish the store and open it (memory-mapped)."""
        self._close_files()
        if self._meta is None:
            raise invalid("prediction", "at least one block written before close", None)
        return load(self.path)


def load(path, *, mmap: bool = True):
    """Open a store written by :class:`PredictionWriter` (or ``MCDropout.predict(x, out=path)``)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise invalid("path", "a prediction store folder with a meta.json", str(path), error=FileNotFoundError)
    meta = json.loads(meta_path.read_text())
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

"""Safe loading of models and arrays, and atomic writing of results.

Used by the command line, and reusable by any code that reads files it did not
write or must never leave a half-written output behind.

Loading
    * :func:`load_model` opens a Keras model in Keras' *safe mode* (no deserialised
      Python code, such as a ``Lambda`` layer's bytecode, is run) unless
      ``unsafe=True``. It reads ``.keras`` files, legacy ``.h5`` files and
      TensorFlow SavedModel folders (as an inference-only ``keras.layers.TFSMLayer``).
      Only local paths are accepted: nothing is fetched from the network.
    * :func:`load_array` / :func:`load_arrays` read ``.npy`` and ``.npz`` files with
      ``allow_pickle=False`` (an object array is refused, never unpickled) and
      ``.csv`` files with numpy's text reader.

Writing
    * :func:`atomic_write` yields a temporary file in the destination's folder and
      renames it over the destination with :func:`os.replace` only when the block
      finished without an exception; on failure the temporary file is removed and an
      existing destination is left as it was.
    * :func:`staged_directory` does the same for a set of files written into one
      output folder: they are written to a hidden staging folder beside it and moved
      in, each with :func:`os.replace`, only when all of them were written.
    * :func:`save_npz`, :func:`save_json`, :func:`save_text`, :func:`save_bytes`,
      :func:`save_csv` and :func:`save_prediction` write through :func:`atomic_write`
      (flushed to the disk with ``fsync`` before the rename).
    * :class:`NpyAppender`, :func:`create_npy` and :func:`write_npy_rows` write ``.npy``
      files that grow, or are filled in place, block by block (:mod:`mcdrop.store`):
      every byte is flushed to the disk before the header that declares it.

Predictions
    :func:`save_prediction` / :func:`load_prediction` write and read the ``.npz`` of
    ``mcdrop predict``: the prediction's codec arrays and metadata
    (:meth:`~mcdrop.ClassificationPrediction.to_arrays`), its per-row statistics
    (``to_dict()``) and any provenance, in one archive any numpy reads.

Every failure raises :class:`InputError` (a ``ValueError``) whose message names the
argument and the value received, in the package's one message shape.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from mcdrop._validation import invalid

__all__ = [
    "InputError",
    "MODEL_SUFFIXES",
    "ARRAY_SUFFIXES",
    "load_model",
    "check_model_path",
    "load_array",
    "load_arrays",
    "atomic_write",
    "check_out_file",
    "check_out_folder",
    "check_writable",
    "staged_directory",
    "remove_leftovers",
    "save_npz",
    "save_json",
    "to_json",
    "save_text",
    "save_csv",
    "save_bytes",
    "save_prediction",
    "load_prediction",
    "prediction_from_npz",
    "NpyAppender",
    "create_npy",
    "write_npy_rows",
]

#: File suffixes :func:`load_model` reads (a SavedModel is a folder, named freely).
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
#: File suffixes :func:`load_array` reads.
ARRAY_SUFFIXES = (".npy", ".npz", ".csv")


class InputError(ValueError):
    """A file could not be read as asked: missing, of an unknown format, unreadable or unsafe."""


def _error(name: str, expected: str, value: Any, detail: str | None = None) -> InputError:
    return invalid(name, expected, str(value), detail=detail, error=InputError)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for quoting inside our own message."""
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def _existing(path: Any, name: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise invalid(name, "a path", path, error=TypeError)
    path = Path(path)
    if not path.exists():
        raise _error(name, "an existing file or folder", path, "No such file or folder.")
    return path


# --------------------------------------------------------------------------- models


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and (
        (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    )


def load_model(path, *, unsafe: bool = False, name: str = "model"):
    """Load a Keras model from a local file or folder, in safe mode by default.

    Parameters
    ----------
    path : str or path-like
        A Keras 3 ``.keras`` file (or an unzipped ``.keras`` folder holding
        ``config.json``), a legacy ``.h5``/``.hdf5`` file, or a TensorFlow SavedModel
        folder (``saved_model.pb`` inside).
    unsafe : bool, default False
        Allow deserialising Python code (``Lambda`` layers) and loading SavedModel folders,
        whose graphs may hold file-system operations. Only for files you trust: loading
        such a file can run arbitrary code.
    name : str, default "model"
        The argument name used in error messages.

    Returns
    -------
    keras.Model
        Uncompiled. A SavedModel (only with ``unsafe=True``) comes back as a one-layer functional model around a
        ``keras.layers.TFSMLayer``: it predicts, but its dropout layers are baked into
        a traced graph in inference mode, so Monte Carlo dropout cannot switch them on
        (the engine then reports that the model has no stochastic layer). Re-save
        such a model as ``.keras`` to use it with :class:`mcdrop.MCDropout`.

    Raises
    ------
    InputError
        The path is missing, of an unknown format, unreadable, or needs ``unsafe``.
    """
    path = check_model_path(path, unsafe=unsafe, name=name)
    if path.is_dir() and not (path / "config.json").is_file():
        return _load_saved_model(path, name=name)
    return _load_keras(path, unsafe=unsafe, name=name)


def check_model_path(path, *, unsafe: bool = False, name: str = "model") -> Path:
    """Every check of :func:`load_model` that needs no Keras: the path exists, has a model
    format, a ``.keras`` file is a zip archive, and a SavedModel folder comes with ``unsafe``.

    Cheap (no TensorFlow import), so a command line can refuse a bad path at once.
    Returns the path; raises :class:`InputError` like :func:`load_model`.
    """
    path = _existing(path, name)
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if _is_saved_model(path):
            if not unsafe:
                raise _error(
                    name, "a model that loads in safe mode", path,
                    "It is a TensorFlow SavedModel: a graph whose operations can read and write files when "
                    "run, which safe mode does not load; pass unsafe=True (--unsafe on the command line) only "
                    "if you trust it.",
                )
            return path
        raise _error(name, "a .keras or .h5 file or a SavedModel folder", path,
                     "The folder holds neither saved_model.pb nor a Keras config.json.")
    if suffix not in MODEL_SUFFIXES:
        raise _error(name, "a .keras or .h5 file or a SavedModel folder", path,
                     f"Unknown model format {suffix or '(no suffix)'!r}.")
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise _error(name, "a readable Keras model", path, "It is not a .keras (zip) archive.")
    return path


def _load_keras(path: Path, *, unsafe: bool, name: str):
    import keras

    if path.suffix.lower() == ".keras" and path.is_file() and not zipfile.is_zipfile(path):
        raise _error(name, "a readable Keras model", path, "It is not a .keras (zip) archive.")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises many types for a bad file; all mean "unreadable"
        text = _one_line(exc)
        if "safe_mode" in str(exc):
            raise _error(
                name, "a model that loads in safe mode", path,
                "It holds Python code (e.g. a Lambda layer), which safe mode does not run; "
                "pass unsafe=True (--unsafe on the command line) only if you trust the file.",
            ) from None
        raise _error(name, "a readable Keras model", path, f"Keras could not load it: {text}") from None
    if not isinstance(model, keras.Model):
        raise _error(name, "a Keras model", path, f"The file holds a {type(model).__name__}.")
    return model


def _load_saved_model(path: Path, *, name: str):
    import keras

    from mcdrop.engine._keras_compat import saved_model_endpoint

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
            specs = _saved_model_input_specs(saved_model_endpoint(layer))
            if len(specs) != 1:
                raise ValueError(f"the serving signature takes {len(specs)} inputs; one is supported")
            (spec,) = specs
            inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name)
            outputs = layer(inputs)
            if isinstance(outputs, Mapping):
                if len(outputs) != 1:
                    raise ValueError(f"the serving signature returns {len(outputs)} outputs; one is supported")
                outputs = next(iter(outputs.values()))
            return keras.Model(inputs, outputs, name=path.name or "saved_model")
    except Exception as exc:
        raise _error(name, "a loadable SavedModel folder", path,
                     f"TensorFlow could not load it: {_one_line(exc)}") from None


def _saved_model_input_specs(fn):
    """The TensorSpecs of a serving endpoint's inputs."""
    args, kwargs = fn.structured_input_signature
    return [*args, *kwargs.values()]


# --------------------------------------------------------------------------- arrays


def load_arrays(path, *, name: str = "data", header: bool | None = None) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file by key; a ``.npy`` or ``.csv`` file as ``{"arr_0": ...}``.

    Nothing is unpickled: an object array raises :class:`InputError`. ``header`` is for a
    ``.csv`` file only (see :func:`load_array`).
    """
    path = _existing(path, name)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise _error(name, "a .npy, .npz or .csv file", path, "It is a folder.")
    if suffix not in ARRAY_SUFFIXES:
        raise _error(name, "a .npy, .npz or .csv file", path,
                     f"Unknown array format {suffix or '(no suffix)'!r}.")
    if suffix == ".csv":
        return {"arr_0": _load_csv(path, name, header)}
    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}[suffix]
    with open(path, "rb") as handle:
        if handle.read(len(magic)) != magic:
            kind = "a NumPy .npy file" if suffix == ".npy" else "a NumPy .npz (zip) archive"
            raise _error(name, f"a readable {suffix} file", path, f"It is not {kind}.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"arr_0": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _error(name, "numeric arrays", path,
                         "It holds Python objects, which are not loaded (no pickle).") from None
        raise _error(name, f"a readable {suffix} file", path, _one_line(exc)) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ...
        raise _error(name, f"a readable {suffix} file", path, _one_line(exc)) from None


def load_array(path, *, key: str | None = None, name: str = "data", header: bool | None = None) -> np.ndarray:
    """One numeric array from a ``.npy``, ``.npz`` or ``.csv`` file.

    For a ``.npz`` holding several arrays, ``key`` chooses one; without it the file
    must hold exactly one array, or one named ``x``.

    A ``.csv`` file is comma separated, one row per input; a single column comes back
    with shape (N,), and integer-valued data as int64. Its first line is a header
    (skipped) when ``header=True``, data when ``header=False``, and by default a header
    only when *none* of its fields parses as a number, so a first data row with a typo
    or an empty cell is never dropped as a header. Any other cell that is not a number
    (an empty one included) raises :class:`InputError` naming its row and column,
    counted from 1 as lines in the file.
    """
    arrays = load_arrays(path, name=name, header=header)
    if key is not None:
        if key not in arrays:
            raise invalid("key", f"one of the arrays in {Path(path).name} ({', '.join(sorted(arrays))})",
                          key, error=InputError)
        array = arrays[key]
    elif len(arrays) == 1:
        (array,) = arrays.values()
    elif "x" in arrays:
        array = arrays["x"]
    else:
        raise _error(name, "a file with one array, or an array named 'x'", path,
                     f"It holds {len(arrays)} arrays ({', '.join(sorted(arrays))}); choose one with a key.")
    if array.dtype.kind not in "biuf":
        raise _error(name, "a numeric array", path, f"Its dtype is {array.dtype.str}.")
    return array


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(path: Path, name: str, header: bool | None = None) -> np.ndarray:
    """A numeric CSV file as an array; see :func:`load_array` for the header rule.

    Rows and columns in error messages count from 1, as a person counts lines in the
    file (a header line and blank lines included).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(name, "a readable .csv file", path, _one_line(exc)) from None
    rows = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise _error(name, "a numeric .csv file", path, "It is empty.")
    guessed = header is None
    if guessed:  # a header only when none of its fields could be a number
        header = not any(_is_number(cell) for cell in rows[0][1].split(","))
    body = rows[1:] if header else rows
    if not body:
        raise _error(name, "a .csv file with at least one data row", path, "It holds only a header line.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data = np.loadtxt([line for _, line in body], delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise _csv_error(path, name, rows, body, first_row_guessed=guessed and not header,
                         fallback=_one_line(exc)) from None
    if data.shape[1] == 1:
        data = data[:, 0]
    if np.all(data == np.round(data)) and np.all(np.abs(data) < 2**53):
        return data.astype(np.int64)
    return data


_COUNTING = "(rows and columns count from 1, as lines in the file, a header line included)"


def _csv_error(path: Path, name: str, rows, body, *, first_row_guessed: bool, fallback: str) -> InputError:
    """The first cell (or row) of a CSV body that is not a number, by row and column."""
    width = len(rows[0][1].split(","))
    for number, line in body:
        cells = line.split(",")
        if len(cells) != width:
            return _error(name, "a numeric .csv file with the same number of columns on every row", path,
                          f"Row {number} has {len(cells)} columns where row {rows[0][0]} has {width} "
                          f"{_COUNTING}.")
        for column, cell in enumerate(cells, start=1):
            if _is_number(cell):
                continue
            what = "is empty" if not cell.strip() else f"holds {cell.strip()[:40]!r}, which is not a number"
            detail = f"Row {number}, column {column} {what} {_COUNTING}."
            if first_row_guessed and number == rows[0][0]:
                detail += (" The first row was read as data because some of its fields are numbers; "
                           "if it is a header, pass header=True (--header on the command line).")
            return _error(name, "a numeric .csv file", path, detail)
    return _error(name, "a numeric .csv file", path, fallback)


# --------------------------------------------------------------------------- writing


#: Marks the hidden temporary files and staging folders of this module, so that leftovers
#: of a killed write can be told from a user's own hidden files.
_TMP_TAG = ".mcdrop-"
_TMP_SUFFIX = ".tmp"
_LOCK_NAME = ".lock"


def _lock(handle) -> None:
    """Hold an exclusive lock on an open file for as long as it stays open (POSIX ``flock``).

    The kernel drops the lock when the writing process dies, even by SIGKILL, which is how
    :func:`remove_leftovers` tells a dead write's file from a live one.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: leftovers are then kept
        return
    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _abandoned(lock_path: Path) -> bool:
    """Whether no live process holds the lock on ``lock_path`` (never True off POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        with open(lock_path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a live write holds it
            return True
    except OSError:
        return False


def remove_leftovers(folder) -> list[Path]:
    """Remove the hidden temporary files and staging folders that killed writes left in ``folder``.

    A write by :func:`atomic_write` or :func:`staged_directory` holds a lock on its temporary
    file for as long as it runs; a process killed mid-write (SIGKILL, power loss) cannot remove
    its temporary file, but its lock is gone. This removes exactly those unlocked leftovers of
    this module (named ``.<name>.mcdrop-<random>.tmp``), never a write still running in another
    process, nor any other file. Called by every write; returns the paths removed.
    """
    removed = []
    folder = Path(folder)
    try:
        candidates = [p for p in folder.iterdir()
                      if p.name.startswith(".") and _TMP_TAG in p.name and p.name.endswith(_TMP_SUFFIX)]
    except OSError:
        return removed
    for item in candidates:
        with contextlib.suppress(OSError):
            if item.is_dir() and not item.is_symlink():
                lock = item / _LOCK_NAME
                if lock.is_file() and _abandoned(lock):
                    shutil.rmtree(item)
                    removed.append(item)
            elif item.is_file() and _abandoned(item):
                item.unlink()
                removed.append(item)
    return removed


def _path_error(exc: OSError, path: Path) -> OSError:
    """``exc`` re-addressed to the destination ``path`` (never to a temporary file's name)."""
    error = OSError(exc.errno, exc.strerror or _one_line(exc), str(path))
    error.__cause__ = exc
    return error


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_out_file(path, *, suffix: str | None = None, name: str = "out") -> Path:
    """The checks of an output file that need no writing: ``suffix`` (e.g. ``".npz"``) when given, not a
    folder, in an existing folder. Cheap, so a command can refuse a bad path before any work; the
    writers (:func:`atomic_write`) check the same. Returns the path; raises :class:`InputError`."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise _error(name, f"a {suffix} file", path)
    if path.is_dir():
        raise _error(name, "a file path", path, "It is a folder.")
    if not _parent(path).is_dir():
        raise _error(name, "a path in an existing folder", path, f"No such folder: {_parent(path)}.")
    return path


def check_out_folder(path, *, name: str = "out") -> Path:
    """The checks of an output folder that need no writing: not a file, its parent exists (the folder is
    created). :func:`staged_directory` checks the same. Returns the path; raises :class:`InputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise _error(name, "a folder", path, "A file of that name exists.")
    if not _parent(path).is_dir():
        raise _error(name, "a folder whose parent exists", path, f"No such folder: {_parent(path)}.")
    return path


def check_writable(folder, path, *, name: str = "out") -> None:
    """Fail before any work when ``folder`` cannot take a new file (permissions, a read-only file
    system): :class:`InputError` naming ``name`` and the output ``path`` asked for."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mcdrop-probe-", suffix=_TMP_SUFFIX)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _error(name, "a path in a folder this user can write", path, f"{reason}: {folder}.") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """Write ``path`` all or nothing.

    Yields a file object for a temporary file in the same folder (so the final
    :func:`os.replace` is a rename on one file system, atomic on POSIX). If the block
    raises, the temporary file is removed and ``path`` is untouched. An ``OSError`` while
    writing (a full disk, a folder without write permission) is raised with ``filename``
    set to ``path``, not to the temporary file. Leftovers of writes killed earlier in the
    same folder are removed first (:func:`remove_leftovers`).

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(folder, "a.txt"), "w") as f:
    ...     _ = f.write("done")
    >>> sorted(os.listdir(folder))
    ['a.txt']
    """
    path = check_out_file(path)
    folder = _parent(path)
    remove_leftovers(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}{_TMP_TAG}", suffix=_TMP_SUFFIX)
    except OSError as exc:
        raise _path_error(exc, path) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            _lock(handle)
            try:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                if exc.filename in (None, tmp):
                    raise _path_error(exc, path) from None
                raise
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _path_error(exc, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_directory(path) -> Iterator[Path]:
    """Write a set of output files into folder ``path`` all or nothing.

    Yields a hidden staging folder beside ``path``; write the files there. When the
    block finishes, ``path`` is created if needed and each file is moved in with
    :func:`os.replace` (replacing a file of the same name). If the block raises,
    the staging folder is deleted and ``path`` is left as it was.
    """
    path = check_out_folder(path)
    parent = _parent(path)
    remove_leftovers(parent)
    try:
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}{_TMP_TAG}", suffix=_TMP_SUFFIX))
    except OSError as exc:
        raise _path_error(exc, path) from None
    try:
        with open(stage / _LOCK_NAME, "wb") as lock:
            _lock(lock)
            yield stage
            path.mkdir(exist_ok=True)
            for item in sorted(stage.rglob("*")):
                if item.is_dir() or item == stage / _LOCK_NAME:
                    continue
                target = path / item.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    except OSError as exc:
        if exc.filename is None or str(exc.filename).startswith(str(stage)):
            raise _path_error(exc, path) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_npz(path, arrays: Mapping[str, Any], *, compressed: bool = True) -> None:
    """Save arrays to a ``.npz`` atomically (exactly at ``path``: no suffix is added)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            raise invalid(f"arrays[{key!r}]", "a numeric or string array", value)
    with atomic_write(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)


def save_json(path, obj: Any) -> None:
    """Save ``obj`` as indented, standard JSON atomically (see :func:`to_json`)."""
    save_text(path, to_json(obj) + "\n")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as standard JSON: numpy scalars and arrays become numbers and lists, paths strings,
    and NaN or infinite floats ``null`` (JSON has no NaN; most parsers other than Python's reject it).

    >>> import numpy as np
    >>> to_json({"ece": np.float32(0.5), "auroc": float("nan"), "counts": np.arange(2)}, indent=None)
    '{"ece": 0.5, "auroc": null, "counts": [0, 1]}'
    """
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(value: Any):
    """A copy of ``value`` with plain-Python containers and numbers, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, np.generic):
        return _finite(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, (str, int, bool, type(None))):
        return value
    return _json_default(value)


def save_text(path, text: str) -> None:
    """Save a string as UTF-8 atomically."""
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def save_bytes(path, data: bytes) -> None:
    """Save bytes (an image, an archive) atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def save_csv(path, columns: Mapping[str, Any]) -> None:
    """Save equal-length columns as a CSV with a header line, atomically."""
    names = list(columns)
    arrays = [np.asarray(columns[n]).reshape(-1) for n in names]
    if len({len(a) for a in arrays}) > 1:
        raise invalid("columns", "columns of one length", {n: len(a) for n, a in zip(names, arrays)})
    lines = [",".join(names)]
    for row in zip(*arrays):
        lines.append(",".join(_csv_cell(v) for v in row))
    save_text(path, "\n".join(lines) + "\n")


def _csv_cell(value: Any) -> str:
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    return str(value)


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# --------------------------------------------------------------------------- predictions


def save_prediction(path, prediction, **provenance) -> None:
    """Save a prediction as the ``.npz`` of ``mcdrop predict``, atomically.

    The archive holds the codec's arrays and its metadata as 0-d arrays (``members`` as a 1-d array),
    the per-row statistics of ``prediction.to_dict()`` for other tools, and ``provenance`` (strings or
    numbers, e.g. ``model="model.keras"``). :func:`load_prediction` reads it back.
    """
    arrays, metadata = prediction.to_arrays()
    flat = {**prediction.to_dict(), **arrays}
    flat.update({k: np.asarray(v) for k, v in metadata.items() if v is not None})
    flat.update({k: np.asarray(v) for k, v in provenance.items()})
    save_npz(path, flat)


def load_prediction(path, *, name: str = "path"):
    """The prediction in an ``.npz`` that :func:`save_prediction` (or ``mcdrop predict``, of any
    version) wrote, every field checked (:func:`mcdrop.predictive.from_arrays`); nothing is unpickled.

    Raises
    ------
    InputError
        The file is missing or unreadable, or is not a complete prediction; the message names
        ``name``, the file and the field at fault.
    """
    return prediction_from_npz(load_arrays(path, name=name), name=name, source=path)


def prediction_from_npz(arrays: Mapping[str, np.ndarray], *, name: str = "path", source=None):
    """The prediction in the arrays of a :func:`save_prediction` ``.npz`` already read
    (:func:`load_arrays`); see :func:`load_prediction`."""
    from mcdrop import predictive

    arrays, metadata = dict(arrays), {}
    for key in predictive.METADATA_KEYS:
        if key in arrays:
            value = arrays.pop(key)
            metadata[key] = value if key == "members" or value.ndim else value.item()
    if "task" not in metadata and "mean" in arrays:  # files written before the task was recorded
        metadata["task"] = "classification" if "votes" in arrays else "regression"
    try:
        return predictive.from_arrays(arrays, metadata, name=name, source=None if source is None else str(source))
    except ValueError as err:
        raise InputError(str(err)) from None


# --------------------------------------------------------------------------- .npy files written in place

#: Every header of a ``.npy`` written in place has this length, so it can be rewritten as rows are added.
NPY_HEADER_BYTES = 256


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    raw = buffer.getvalue()
    # pad the header's dict with spaces (the format allows them) to a fixed length
    magic_and_len = 10
    text = raw[magic_and_len:].rstrip(b"\n").rstrip()
    body = text + b" " * (NPY_HEADER_BYTES - magic_and_len - len(text) - 1) + b"\n"
    return raw[:8] + len(body).to_bytes(2, "little") + body


class NpyAppender:
    """A ``.npy`` file that grows along its first axis, written with plain appends (never through a
    memory map, where a full disk kills the process with SIGBUS instead of raising).

    After :meth:`commit` the file is a valid ``.npy`` of every row appended so far (for any reader, and
    after the writing process dies); :meth:`sync` puts the rows on the disk (``fsync``), which a record
    that must survive a power loss (the store's ``meta.json``) waits for.
    """

    def __init__(self, path, dtype, row_shape: tuple):
        self.path, self.dtype, self.row_shape, self.rows = Path(path), np.dtype(dtype), tuple(row_shape), 0
        self.file = open(self.path, "wb")
        self.commit()  # a valid .npy of no rows from the start
        self.sync()

    def append(self, block: np.ndarray) -> None:
        """Add rows (not yet declared by the header: see :meth:`commit`)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise invalid("prediction", f"rows of shape {self.row_shape}", block)
        self.file.seek(0, os.SEEK_END)
        self.file.write(block.tobytes())
        self.rows += block.shape[0]

    def commit(self) -> None:
        """Make the header declare every row appended so far."""
        self.file.flush()
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.flush()
        self.file.seek(0, os.SEEK_END)

    def sync(self) -> None:
        """Put the file's rows and header on the disk (``fsync``)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self, *, sync: bool = True) -> None:
        """Flush the last header to the disk (unless ``sync=False``, after a failure) and close the file."""
        if self.file.closed:
            return
        try:
            if sync:
                self.file.flush()
                os.fsync(self.file.fileno())
        finally:
            with contextlib.suppress(OSError):  # a full disk may refuse the buffered header: it is optional
                self.file.close()


def create_npy(path, dtype, shape: tuple) -> None:
    """Create a ``.npy`` of ``shape`` at its final size without writing its data (sparse where the file
    system allows), for :func:`write_npy_rows` to fill in any order."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as file:
        file.write(_npy_header(dtype, tuple(shape)))
        file.truncate(NPY_HEADER_BYTES + int(np.prod(shape)) * dtype.itemsize)
        file.flush()
        os.fsync(file.fileno())


def write_npy_rows(path, rows: np.ndarray, start: int) -> None:
    """Write ``rows`` in place at rows ``start, start + 1, ...`` of a file :func:`create_npy` made, and
    flush them to the disk."""
    rows = np.ascontiguousarray(rows)
    with open(path, "r+b") as file:
        file.seek(NPY_HEADER_BYTES + start * (rows.nbytes // max(len(rows), 1)))
        file.write(rows.tobytes())
        file.flush()
        os.fsync(file.fileno())

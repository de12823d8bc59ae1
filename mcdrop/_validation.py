"""Argument checks shared by the whole package.

Every check either returns the converted value or raises a ``ValueError`` /
``TypeError`` whose message names the argument and the value received, in one
shape (Keras' own)::

    Invalid value for argument `num_samples`: expected an integer >= 1, received 0.

Helpers return the converted arrays so callers validate and convert in one step.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np

__all__ = [
    "describe",
    "invalid",
    "check_int",
    "check_float",
    "check_choice",
    "check_array",
    "check_probs",
    "check_labels",
    "check_samples",
    "check_same_length",
    "check_finite_rows",
    "nonfinite_row_indices",
    "PROB_ATOL",
]

#: Tolerance on row sums of probabilities (float32 softmax outputs drift by ~1e-6;
#: hand-written arrays by more).
PROB_ATOL = 1e-3


#: The largest seed: the engine keys its masks by a 62-bit integer, so a larger seed would silently
#: repeat a smaller one's passes (the engine, the ensemble and the command line all refuse it).
MAX_SEED = 2**62 - 1

def describe(value: Any) -> str:
    """A short description of ``value`` for an error message (arrays by shape, not content)."""
    if isinstance(value, np.ndarray) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and not np.isscalar(value)
    ):
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) == 0:
            return repr(np.asarray(value).item())
        return f"an array of shape {shape} and dtype {getattr(value, 'dtype', '?')}"
    text = repr(value)
    if len(text) > 240:  # long enough for a file path, short enough for one line
        text = text[:237] + "..."
    if isinstance(value, (str, numbers.Number, bool, type(None), tuple, list)):
        return text
    return f"{text} (of type {type(value).__name__})"


def invalid(name: str, expected: str, value: Any, *, detail: str | None = None, error=ValueError):
    """Build (not raise) the package's standard error for argument ``name``."""
    message = f"Invalid value for argument `{name}`: expected {expected}, received {describe(value)}."
    if detail:
        message += f" {detail}"
    return error(message)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bounds = f" >= {minimum}" if minimum is not None else ""
        raise invalid(name, f"an integer{bounds}", value, error=TypeError)
    value = int(value)
    if minimum is not None and value < minimum:
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise invalid(name, f"an integer >= {minimum}{upper}", value)
    if maximum is not None and value > maximum:
        lower = f" >= {minimum} and" if minimum is not None else ""
        raise invalid(name, f"an integer{lower} <= {maximum}", value)
    return value


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite Python float within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(name, "a real number", value, error=TypeError)
    value = float(value)
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    expected = f"a number in {lo}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{hi}"
    if not np.isfinite(value):
        raise invalid(name, expected, value)
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise invalid(name, expected, value)
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise invalid(name, expected, value)
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, (str, type(None), bool, numbers.Number)) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise invalid(name, f"one of {listed}", value)
    return value


def check_array(
    value: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype=np.float64,
    allow_empty: bool = False,
    finite: bool = True,
) -> np.ndarray:
    """Convert ``value`` to a numpy array and check rank, emptiness and finiteness."""
    if value is None:
        raise invalid(name, "an array", value, error=TypeError)
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise invalid(name, "a numeric array", value, error=TypeError) from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            ranks = " or ".join(str(r) for r in allowed)
            raise invalid(name, f"an array of rank {ranks}", array)
    if not allow_empty and array.size == 0:
        raise invalid(name, "a non-empty array", array)
    if finite and np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise invalid(name, "finite values", array, detail=f"It holds {bad} NaN or infinite value(s).")
    return array


def check_probs(value: Any, name: str = "probs", *, ndim: int = 2, atol: float = PROB_ATOL) -> np.ndarray:
    """Probabilities along the last axis: values in [0, 1], each row summing to one."""
    probs = check_array(value, name, ndim=ndim)
    if probs.shape[-1] < 2:
        raise invalid(name, "at least two classes on the last axis", probs)
    if np.any(probs < -atol) or np.any(probs > 1 + atol):
        raise invalid(name, "probabilities in [0, 1]", probs,
                      detail=f"Values range over [{probs.min():.4g}, {probs.max():.4g}].")
    sums = probs.sum(axis=-1)
    off = np.abs(sums - 1.0) > atol
    if np.any(off):
        raise invalid(
            name, "rows that sum to one", probs,
            detail=f"{int(off.sum())} row(s) do not (first sum: {sums[off].ravel()[0]:.6g}).",
        )
    return np.clip(probs, 0.0, 1.0)


def check_labels(value: Any, name: str = "y_true", *, n_classes: int | None = None) -> np.ndarray:
    """Integer class labels of shape (N,), optionally in ``[0, n_classes)``."""
    raw = check_array(value, name, ndim=1, dtype=None, finite=False)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise invalid(name, "integer class labels", raw)
    elif raw.dtype.kind not in "iub":
        raise invalid(name, "integer class labels", raw, error=TypeError)
    labels = raw.astype(np.int64)
    if np.any(labels < 0) or (n_classes is not None and np.any(labels >= n_classes)):
        upper = f" and < {n_classes}" if n_classes is not None else ""
        raise invalid(name, f"labels >= 0{upper}", raw,
                      detail=f"Labels range over [{labels.min()}, {labels.max()}].")
    return labels


def check_samples(value: Any, name: str = "samples", *, probs: bool = False, ndim: int = 3) -> np.ndarray:
    """Samples shaped (T, N, ...): passes first. With ``probs`` they must be probabilities."""
    if probs:
        return check_probs(value, name, ndim=ndim)
    return check_array(value, name, ndim=ndim)


def check_same_length(**arrays: Any) -> int:
    """All arrays share their first dimension; return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"`{k}` has {n}" for k, n in lengths.items())
        first = next(iter(arrays))
        raise ValueError(
            f"Invalid value for argument `{first}`: expected the same number of rows in every input, "
            f"received {listed}."
        )
    return next(iter(lengths.values()))


#: How many row indices an error about bad rows lists before "...".
_ROWS_SHOWN = 5
#: Values checked at once for NaN/infinity (bounds the temporary boolean array).
_CHECK_VALUES = 2**24


def nonfinite_row_indices(arrays: Iterable[Any], *, axis: int = 0) -> np.ndarray:
    """Sorted indices, along ``axis``, of the rows where any floating array holds NaN or infinity.

    Parameters
    ----------
    arrays : iterable of array-like (numpy arrays or tensors), each of shape (..., N, ...)
        All share the length N of ``axis``. Integer and boolean arrays cannot hold NaN and are skipped.
    axis : int, default 0
        The row axis (1 for per-pass outputs shaped (T, N, ...)).

    Returns
    -------
    ndarray of int64, shape (K,)
        The K bad rows, ascending.

    >>> x = np.zeros((4, 2)); x[2, 1] = np.nan
    >>> nonfinite_row_indices([x, np.arange(4)]).tolist()
    [2]
    """
    bad = None
    for value in arrays:
        array = np.asarray(value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray)
                           else value)
        if not np.issubdtype(array.dtype, np.inexact):
            continue
        array = np.moveaxis(array, axis, 0)
        rows = np.zeros(array.shape[0], dtype=bool)
        step = max(1, _CHECK_VALUES // max(1, array[:1].size))  # bounded temporary memory on a large pool
        for start in range(0, array.shape[0], step):
            part = array[start:start + step]
            rows[start:start + step] = ~np.isfinite(part.reshape(part.shape[0], -1)).all(axis=1)
        bad = rows if bad is None else bad | rows
    return np.zeros(0, dtype=np.int64) if bad is None else np.flatnonzero(bad)


def check_finite_rows(arrays: Iterable[Any], name: str, *, row_offset: int = 0, total: int | None = None,
                      advice: str | None = None) -> None:
    """Raise a ``ValueError`` when any row (axis 0) of the floating ``arrays`` holds NaN or infinity.

    Parameters
    ----------
    arrays : iterable of array-like, each of shape (N, ...)
        The flat inputs of one model call (all arrays of a list/dict input).
    name : str
        The argument named in the message (``x``; ``DATA`` on the command line).
    row_offset : int, default 0
        Index of the arrays' first row in the whole input: the message lists absolute indices.
    total : int, optional
        Rows of the whole input, when known (``3 of 10 row(s)``).
    advice : str, optional
        Ends the message: how to accept such rows, in the caller's words.

    The message names how many rows and the first five of their indices:
    ``Invalid value for argument `x`: expected finite values, received 3 of 10 row(s) holding NaN or
    infinity (rows 1, 4, 7).``
    """
    bad = nonfinite_row_indices(arrays)
    if bad.size == 0:
        return
    shown = ", ".join(str(int(i) + row_offset) for i in bad[:_ROWS_SHOWN])
    more = ", ..." if bad.size > _ROWS_SHOWN else ""
    of = f" of {total}" if total is not None else ""
    message = (f"Invalid value for argument `{name}`: expected finite values, received {bad.size}{of} row(s) "
               f"holding NaN or infinity (row{'s' if bad.size > 1 else ''} {shown}{more}).")
    if advice:
        message += f" {advice}"
    raise ValueError(message)

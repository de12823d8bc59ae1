"""Inputs at the TensorFlow boundary: check them against the model once, then cut them
into row chunks.

Accepted: a numpy array or ``tf.Tensor``; a list/tuple or dict of them (multi-input
models); a ``tf.data.Dataset`` or any iterable of batches (an element may be
``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``; only ``x`` is used).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from mcdrop._validation import describe, invalid
from mcdrop.engine import _keras_compat as compat

__all__ = ["InputSpec", "input_spec", "as_flat", "iter_blocks", "is_streaming", "num_rows", "pad"]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model takes: per flat input, a name, a non-batch shape (None = any) and a dtype."""

    names: tuple
    shapes: tuple  # of tuples, or None where the model does not say
    dtypes: tuple
    structure: object  # the nesting the model's inputs have (for packing)
    keys: tuple | None  # dict keys in flat order when the model takes a dict


def input_spec(model) -> InputSpec | None:
    """The model's declared inputs, or None for a model without a graph."""
    inputs = None
    try:
        inputs = list(model.inputs) if getattr(model, "inputs", None) else None
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return None
    structure = compat.inputs_structure(model)
    if isinstance(model, keras.Sequential) or structure is None:
        structure = inputs[0] if len(inputs) == 1 else list(inputs)
    keys = None
    if isinstance(structure, dict):
        keys = tuple(path[0] for path, _ in tree.flatten_with_path(structure))
    names = tuple(getattr(t, "name", f"input_{i}") for i, t in enumerate(inputs))
    shapes = tuple(tuple(t.shape[1:]) for t in inputs)
    dtypes = tuple(t.dtype for t in inputs)
    return InputSpec(names, shapes, dtypes, structure, keys)


def is_streaming(x) -> bool:
    """Datasets, generators and other iterables of batches (as opposed to in-memory arrays)."""
    if isinstance(x, tf.data.Dataset):
        return True
    if isinstance(x, (np.ndarray, tf.Tensor, dict, list, tuple, str, bytes)) or hasattr(x, "__array__"):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def _to_array(value, name):
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return value.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        raise invalid(name, "a numeric array", value, error=TypeError) from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise invalid(name, "a numeric array", value, error=TypeError)
    return array


def as_flat(x, spec: InputSpec | None, name: str = "x"):
    """Flatten ``x`` in the model's input order and check it; return (flat arrays, structure)."""
    if spec is None:  # no declared inputs: keep the user's nesting
        flat = [_to_array(v, name) for v in tree.flatten(x)]
        _check_rows(flat, name)
        return flat, x
    if isinstance(x, dict):
        wanted = spec.keys if spec.keys is not None else spec.names
        missing = [k for k in wanted if k not in x]
        if missing:
            raise invalid(name, f"a dict with the model's input keys {list(wanted)}", sorted(x),
                          detail=f"Missing key(s): {missing}.")
        flat = [x[k] for k in wanted]
    elif isinstance(x, (list, tuple)):
        flat = list(x)
    else:
        flat = [x]
    if len(flat) != len(spec.names):
        raise invalid(name, f"{len(spec.names)} input(s) for the model's inputs {list(spec.names)}",
                      x if not isinstance(x, (list, tuple)) else f"{len(flat)} inputs")
    out = []
    for value, input_name, shape, dtype in zip(flat, spec.names, spec.shapes, spec.dtypes):
        label = name if len(flat) == 1 else f"{name}[{input_name!r}]"
        array = _to_array(value, label)
        got = tuple(array.shape)
        if len(got) != len(shape) + 1 or any(s is not None and s != g for s, g in zip(shape, got[1:])):
            raise invalid(label, f"an array of shape {(None, *shape)}", array,
                          detail="The model cannot take this input.")
        if isinstance(array, np.ndarray):
            if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(array.dtype, np.integer):
                raise invalid(label, f"integer values for the model's {dtype} input", array, error=TypeError)
            array = array.astype(dtype, copy=False)
        else:
            array = tf.cast(array, dtype)
        out.append(array)
    _check_rows(out, name)
    return out, spec.structure


def _check_rows(flat, name):
    rows = {int(a.shape[0]) for a in flat if len(a.shape)}
    if len(rows) > 1:
        raise invalid(name, "inputs with the same number of rows", f"row counts {sorted(rows)}")
    if any(len(a.shape) == 0 for a in flat):
        raise invalid(name, "arrays with a batch dimension", describe(flat[0]))


def num_rows(flat) -> int:
    return int(flat[0].shape[0])


def _take_x(element):
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0]
    return element


def pad(flat, rows):
    """Pad a short block to ``rows`` rows by repeating its last row (real, valid input values)."""
    n = int(flat[0].shape[0])
    if n == rows:
        return flat
    out = []
    for a in flat:
        if isinstance(a, np.ndarray):
            out.append(np.concatenate([a, np.repeat(a[-1:], rows - n, axis=0)], axis=0))
        else:
            out.append(tf.concat([a, tf.repeat(a[-1:], rows - n, axis=0)], axis=0))
    return out


def _concat(parts):
    return [np.concatenate([np.asarray(p[i]) for p in parts], axis=0) if len(parts) > 1 else parts[0][i]
            for i in range(len(parts[0]))]


def _check_batched(dataset, spec: InputSpec | None, name: str) -> None:
    """An unbatched dataset yields single rows without their batch axis: say so (and how to fix it)
    instead of reporting a shape mismatch. Known from the element spec before any element is read."""
    element = _take_x(dataset.element_spec)
    ranks = [len(s.shape) for s in tree.flatten(element) if isinstance(s, tf.TensorSpec)]
    if spec is not None:
        unbatched = bool(ranks) and len(ranks) == len(spec.shapes) and all(
            r == len(shape) for r, shape in zip(ranks, spec.shapes))
    else:  # no declared inputs: only a scalar element is surely unbatched
        unbatched = bool(ranks) and min(ranks) == 0
    if unbatched:
        raise invalid(name, "a batched tf.data.Dataset (elements with a batch axis)",
                      f"a dataset of single rows (element_spec {element})",
                      detail="Call `.batch(n)` on it, e.g. `dataset.batch(256)`.")


def iter_blocks(x, spec: InputSpec | None, rows: int, name: str = "x") -> Iterator[tuple]:
    """Yield (block, structure, row offset, valid rows): blocks of exactly ``rows`` rows.

    Every compiled call sees the same shape, so TensorFlow picks the same kernels and an input's
    outputs do not depend on how the rows arrived (batch sizes of a dataset, order, call pattern).
    Rows are regrouped across the batches of a stream; the last block is padded by repeating its
    last row, and the padding's outputs are dropped.
    """
    if not is_streaming(x):
        flat, structure = as_flat(x, spec, name)
        n = num_rows(flat)
        if n == 0:
            raise invalid(name, "at least one row", flat[0])
        for start in range(0, n, rows):
            block = [a[start:start + rows] for a in flat]
            valid = int(block[0].shape[0])
            yield pad(block, rows), structure, start, valid
        return
    if isinstance(x, tf.data.Dataset):
        _check_batched(x, spec, name)
    buffer, buffered, offset, structure = [], 0, 0, None
    for element in x:
        flat, structure = as_flat(_take_x(element), spec, name)
        flat = [np.asarray(a) for a in flat]
        buffer.append(flat)
        buffered += num_rows(flat)
        while buffered >= rows:
            joined = _concat(buffer)
            yield [a[:rows] for a in joined], structure, offset, rows
            offset += rows
            buffered -= rows
            buffer = [[a[rows:] for a in joined]] if buffered else []
    if buffered:
        joined = _concat(buffer)
        yield pad(joined, rows), structure, offset, buffered

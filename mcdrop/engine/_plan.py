"""The block planner: how an input is cut into pieces of rows and T into chunks of passes.

Every compiled call of one prediction gets a :class:`Piece` of exactly ``size`` rows (the last one
padded by repeating its last row, whose outputs are dropped) and a chunk of absolute pass indices of
one length (the last chunk padded with its last pass, whose outputs are dropped), so TensorFlow
picks the same kernels for every call and a row's outputs do not depend on how the rows arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from keras import tree

from mcdrop.engine import inputs as _inputs

__all__ = ["Piece", "cut", "pass_chunks", "count_rows", "pieces"]


class Piece(NamedTuple):
    """Rows of the input for one compiled call (one replica's share of it under a strategy)."""

    flat: list  # the input arrays, each with exactly `size` rows (padded)
    offset: int  # absolute index of the first row in the whole input (keys per-example masks)
    used: int  # the real rows; the rest is padding
    structure: Any  # how the flat arrays nest, as the model takes them

    @property
    def size(self) -> int:
        return int(self.flat[0].shape[0])


def cut(flat, offset: int, valid: int, size: int, structure=None) -> list[Piece]:
    """The first ``valid`` rows of ``flat`` (absolute first row ``offset``) as pieces of ``size`` rows."""
    return [Piece(_inputs.pad([a[s:s + size] for a in flat], size), offset + s, min(size, valid - s), structure)
            for s in range(0, valid, size)]


def pieces(x, spec, rows: int, row_offset: int, check=None) -> Iterator[Piece]:
    """The input ``x`` (arrays or a stream) as pieces of ``rows`` rows, in row order. ``check(flat, offset)``
    sees each block of a stream as it arrives (before any of its rows runs)."""
    for block, structure, offset, valid in _inputs.iter_blocks(x, spec, rows):
        if check is not None:
            check([a[:valid] for a in block], row_offset + offset)
        yield from cut(block, row_offset + offset, valid, rows, structure)


def pass_chunks(num_samples: int, passes: int) -> Iterator[tuple[np.ndarray, int]]:
    """Absolute pass indices per call, generated one chunk at a time (memory independent of T); the
    last chunk is padded (its extra passes dropped) so every call has the same number of passes.
    Yields (indices of shape (passes,), number of valid passes)."""
    for start in range(0, num_samples, passes):
        valid = min(passes, num_samples - start)
        idx = np.arange(start, start + passes, dtype=np.int32)
        if valid < passes:
            idx[valid:] = start + valid - 1
        yield idx, valid


def count_rows(x) -> int | None:
    """The number of rows of an in-memory input (None when it has no leading axis to count)."""
    leaves = tree.flatten(x) if isinstance(x, (dict, list, tuple)) else [x]
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape):
            return int(shape[0])
    return None

"""The retry runner: pieces of rows through every pass chunk, halving the pieces on out-of-memory.

A *group* is up to ``replicas`` pieces of one size (one per replica under a distribution strategy,
one without). For each group the runner makes one receiver per piece, runs every pass chunk through
``step`` and hands each receiver its piece's result, in pass order. When a call runs out of device
memory the group's pieces are cut in half and put back at the front of the queue with fresh
receivers, so nothing is lost or counted twice, and the rows stay in order; a warning is given once.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import tensorflow as tf

from mcdrop.engine._plan import Piece, cut

__all__ = ["RetryRunner"]


class RetryRunner:
    """Run pieces through every pass chunk, in groups of ``replicas``, retrying smaller on out-of-memory.

    Parameters
    ----------
    step : callable
        ``step(group, indices, valid)``: runs one pass chunk (absolute pass ``indices``, the first
        ``valid`` of them real) over a group of pieces, returning one result per piece.
    pass_chunks : callable
        Returns a fresh iterator of (indices, valid) pass chunks.
    replicas : int
        Pieces per group.
    progress : tqdm-like
        Moved in rows (fractions of a row while its passes run).
    num_samples : int
        T, for the progress bar's fractions.
    """

    def __init__(self, step: Callable, pass_chunks: Callable, *, replicas: int, progress, num_samples: int):
        self.step = step
        self.pass_chunks = pass_chunks
        self.replicas = replicas
        self.progress = progress
        self.num_samples = num_samples
        self.size = None  # rows per piece after an out-of-memory retry (None: as planned)
        self.rows_done = 0

    def run(self, pieces: Iterable[Piece], receiver: Callable) -> Iterator:
        """Yield each piece's receiver (made by ``receiver()``, fed ``feed(result)`` once per pass
        chunk), in row order, once all its passes ran. ``pieces`` is read lazily (a stream)."""
        pending = deque()
        for piece in pieces:
            pending.append(piece)
            while len(pending) >= self.replicas:
                yield from self._run_front(pending, receiver)
        while pending:
            yield from self._run_front(pending, receiver)

    def _run_front(self, pending: deque, receiver: Callable) -> list:
        """Run the group at the front of ``pending``; return its receivers (none if it was split)."""
        if self.size is not None and pending[0].size > self.size:
            first = pending.popleft()
            pending.extendleft(reversed(cut(first.flat, first.offset, first.used, self.size, first.structure)))
        size = pending[0].size
        group = []
        while pending and len(group) < self.replicas and pending[0].size == size:
            group.append(pending.popleft())
        try:
            return self._attempt(group, receiver)
        except tf.errors.ResourceExhaustedError:
            if size == 1:
                raise
            self._shrink(size)
            for piece in reversed(group):
                pending.extendleft(reversed(cut(piece.flat, piece.offset, piece.used, self.size, piece.structure)))
            return []

    def _attempt(self, group: list[Piece], receiver: Callable) -> list:
        receivers = [receiver() for _ in group]
        for indices, valid in self.pass_chunks():
            for piece, target, result in zip(group, receivers, self.step(group, indices, valid)):
                target.feed(result)
                self.progress.update(piece.used * valid / self.num_samples)
        self.rows_done += sum(piece.used for piece in group)
        self.progress.n = self.rows_done  # whole rows again, free of the fractions' rounding
        self.progress.update(0)
        return receivers

    def _shrink(self, size: int) -> None:
        first = self.size is None
        self.size = max(1, min(size, self.size or size) // 2)
        self.progress.n = self.rows_done  # these rows run again
        if first:
            warnings.warn(f"mcdrop ran out of memory; retrying with {self.size} rows per call.", ResourceWarning,
                          stacklevel=5)

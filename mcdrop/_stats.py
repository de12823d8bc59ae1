r"""The bottom layer: pure statistics over Monte Carlo passes (numpy and scipy only).

Everything above builds on these functions (the accumulators, the prediction types, acquisition,
the report and the plots); this module imports nothing of mcdrop, so the package's imports run one
way, from here upward.

Samples are shaped ``(T, N, ...)``: passes first. Sums over passes are taken strictly in pass order,
``((s + x_0) + x_1) + ...``, continuing from a running sum (:func:`add_in_order`), so a statistic fed
chunk by chunk is bit-identical to the same statistic computed at once.

Means and variances come from *shifted* sums: every pass is taken relative to a fixed shift, the
first pass :math:`x_0`, :math:`d_t = x_t - x_0`, so the sums hold numbers of the size of the spread,
not of the offset, and

.. math::

    \bar x = x_0 + \frac{S_1}{T}, \qquad
    \mathrm{Var} = \frac{S_2}{T} - \Big(\frac{S_1}{T}\Big)^2, \qquad S_k = \sum_t d_t^k

does not cancel catastrophically as :math:`E[x^2] - E[x]^2` does at a large offset (two passes
:math:`10^8 \pm 0.01` give 1e-4, not 0; identical passes give exactly 0).
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = [
    "add_in_order",
    "entropy",
    "ShiftedMoments",
    "shifted_mean",
    "shifted_variance",
    "moments",
    "expected_entropy",
    "mutual_information",
    "vote_counts",
    "variation_ratio",
]


def add_in_order(running: np.ndarray | None, chunk: np.ndarray) -> np.ndarray:
    """``running + chunk[0] + chunk[1] + ...``, left to right, shape ``chunk.shape[1:]``.

    A cumulative sum is sequential by definition (a plain ``sum`` may pair terms, depending on the
    array's layout). The first chunk starts from nothing (``running=None``; ``0 + x`` is ``x`` exactly,
    so skipping it changes no bit).
    """
    if running is None:
        return np.cumsum(chunk, axis=0)[-1]
    return np.cumsum(np.concatenate([running[None], chunk], axis=0), axis=0)[-1]


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Shannon entropy in nats along ``axis``, with :math:`0 \log 0 = 0`.

    .. math:: H[p] = -\sum_c p_c \log p_c

    >>> entropy(np.array([[0.5, 0.5], [1.0, 0.0]])).round(4)
    array([0.6931, 0.    ])
    """
    return special.entr(np.asarray(probs, dtype=np.float64)).sum(axis=axis)


def shifted_mean(shift: np.ndarray, sum_: np.ndarray, count: int) -> np.ndarray:
    r"""(...): the mean over passes from the shift :math:`x_0` and :math:`S_1`, :math:`x_0 + S_1 / T`."""
    return shift + sum_ / count


def shifted_variance(sum_: np.ndarray, sum_sq: np.ndarray, count: int) -> np.ndarray:
    r"""(...): the population variance (divisor T) from :math:`S_1, S_2`, never negative.

    .. math:: \mathrm{Var} = \max\Big(\frac{S_2}{T} - \Big(\frac{S_1}{T}\Big)^2,\ 0\Big)
    """
    m = sum_ / count
    return np.maximum(sum_sq / count - m * m, 0.0)


class ShiftedMoments:
    r"""Mean and population variance over passes, fed in pass order, numerically stable.

    Sums of :math:`d_t = x_t - x_0` and :math:`d_t^2`, with :math:`x_0` the first pass fed,
    added strictly in pass order (bit-identical whatever the chunking):

    .. math::

        \bar x = x_0 + \frac{S_1}{T}, \qquad \mathrm{Var} = \frac{S_2}{T} - \Big(\frac{S_1}{T}\Big)^2,
        \qquad S_k = \sum_t d_t^k .

    The rounding error is of order :math:`\varepsilon\,T\,(1 + z_0^2)\,\mathrm{Var}`, with
    :math:`z_0` the first pass's distance from the mean in standard deviations, whatever the offset.

    Examples
    --------
    >>> m = ShiftedMoments()
    >>> m.update(np.array([[1e8 + 0.01], [1e8 - 0.01]]))
    >>> float(m.variance()[0])  # doctest: +ELLIPSIS
    0.0001...
    """

    def __init__(self):
        self.count = 0
        self.shift = self._sum = self._sum_sq = None

    def update(self, chunk: np.ndarray) -> None:
        """Add the passes of ``chunk`` (T_chunk, ...), as float64, in order."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if self.shift is None:
            self.shift = chunk[0].copy()
        d = chunk - self.shift
        self._sum = add_in_order(self._sum, d)
        self._sum_sq = add_in_order(self._sum_sq, d * d)
        self.count += chunk.shape[0]

    def merge(self, count: int, first: np.ndarray, sum_: np.ndarray, sum_sq: np.ndarray) -> None:
        r"""Add a block of ``count`` passes summarised by its own first pass :math:`f` and its sums
        shifted by it, :math:`s_k = \sum_t (x_t - f)^k` (what the engine's compiled step returns).

        With :math:`\delta = f - x_0` (the running shift :math:`x_0`, the first block's first pass),

        .. math::

            S_1 \mathrel{+}= s_1 + n\,\delta, \qquad
            S_2 \mathrel{+}= s_2 + \delta\,(2 s_1 + n\,\delta),

        exact algebra in which every term is of the size of the spread, never of the offset (both
        shifts are passes), so the stability of :meth:`update` is kept; identical passes still give
        exactly 0. Blocks are merged in pass order, in float64.
        """
        first = np.asarray(first, dtype=np.float64)
        sum_, sum_sq = np.asarray(sum_, dtype=np.float64), np.asarray(sum_sq, dtype=np.float64)
        if self.shift is None:
            self.shift, self._sum, self._sum_sq = first.copy(), sum_.copy(), sum_sq.copy()
        else:
            delta = first - self.shift
            self._sum = self._sum + (sum_ + count * delta)
            self._sum_sq = self._sum_sq + (sum_sq + delta * (2.0 * sum_ + count * delta))
        self.count += int(count)

    def mean(self) -> np.ndarray:
        """(...): the mean over passes."""
        return shifted_mean(self.shift, self._sum, self.count)

    def variance(self) -> np.ndarray:
        """(...): the population variance over passes (divisor T), never negative."""
        return shifted_variance(self._sum, self._sum_sq, self.count)


def moments(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and population variance over the passes of ``samples`` (T, N, ...), each (N, ...).

    Bit-identical to :class:`ShiftedMoments` fed the same passes in any chunks.
    """
    m = ShiftedMoments()
    m.update(samples)
    return m.mean(), m.variance()


def expected_entropy(probs: np.ndarray) -> np.ndarray:
    r"""(N, ...): the mean over passes of the per-pass entropy of ``probs`` (T, N, ..., C), in nats.

    .. math:: \frac1T \sum_t H[p_t], \quad \text{summed in pass order}
    """
    p = np.asarray(probs, dtype=np.float64)
    return add_in_order(None, entropy(p)) / p.shape[0]


def mutual_information(mean_probs: np.ndarray, expected_entropy: np.ndarray, variance=None) -> np.ndarray:
    r"""(N, ...): the epistemic part of the entropy (BALD), from the mean probabilities (N, ..., C)
    and the expected per-pass entropy (N, ...), clipped at 0 against rounding.

    .. math:: I = H[\bar p] - \frac1T\sum_t H[p_t]

    With the per-class ``variance`` over passes (N, ..., C), a row whose variance is exactly 0 (every
    pass the same) gets exactly 0: the difference of two entropies computed apart would leave a few
    units of rounding there.

    >>> p = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])  # two passes that disagree
    >>> mutual_information(moments(p)[0], expected_entropy(p)).round(4)
    array([0.3681])
    """
    information = np.maximum(entropy(mean_probs) - expected_entropy, 0.0)
    if variance is None:
        return information
    return np.where(np.any(np.asarray(variance) != 0, axis=-1), information, 0.0)


def vote_counts(probs: np.ndarray) -> np.ndarray:
    """(N, ..., C) int64: how many passes of ``probs`` (T, N, ..., C) put each class first.

    Integer counts are exact in any order, so chunks' counts add up to the whole's.
    """
    p = np.asarray(probs)
    winners = np.argmax(p, axis=-1)  # (T, N, ...)
    return (winners[..., None] == np.arange(p.shape[-1])).sum(axis=0)


def variation_ratio(votes: np.ndarray, num_samples: int) -> np.ndarray:
    r"""(N, ...): the share of the T passes that disagree with the modal vote, from vote counts (N, ..., C).

    .. math:: 1 - \max_c \frac{\#\{t : \arg\max p_t = c\}}{T}

    >>> p = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.7, 0.3]], [[0.6, 0.4]]])
    >>> variation_ratio(vote_counts(p), 4)
    array([0.25])
    """
    return 1.0 - votes.max(axis=-1) / num_samples

r"""Quality of prediction sets: coverage, size, and coverage where it matters (by set size, by class).

A conformal method guarantees marginal coverage :math:`P(y \in C(x)) \ge 1 - \alpha`; the size of the
sets says what the guarantee costs, and coverage stratified by set size or by class shows whether it is
met evenly (Angelopoulos & Bates, 2023, section 3). Sets are boolean masks of shape (N, C), as returned
by :meth:`mcdrop.conformal.ConformalClassifier.predict_sets`. For intervals, use
:func:`~mcdrop.metrics.interval_coverage` and :func:`~mcdrop.metrics.mean_interval_width`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mcdrop._validation import check_array, check_labels, check_same_length, invalid
from mcdrop.metrics._common import LOWER, NEITHER, better

__all__ = [
    "set_coverage",
    "mean_set_size",
    "size_stratified_coverage",
    "class_conditional_coverage",
    "SizeStratifiedCoverage",
    "ClassConditionalCoverage",
]


class SizeStratifiedCoverage(NamedTuple):
    """Coverage among the rows whose set has each size that occurs."""

    size: np.ndarray  # (K,) the set sizes that occur, ascending
    coverage: np.ndarray  # (K,) fraction of those rows whose set holds the true class
    count: np.ndarray  # (K,) rows with that set size


class ClassConditionalCoverage(NamedTuple):
    """Coverage among the rows of each true class."""

    coverage: np.ndarray  # (C,) per class; NaN for a class with no rows
    count: np.ndarray  # (C,) rows of each class


def _sets(value: Any, name: str = "sets") -> np.ndarray:
    raw = check_array(value, name, ndim=2, dtype=None, finite=False)
    if raw.dtype.kind != "b":
        if raw.dtype.kind not in "iuf" or not np.all(np.isin(raw, (0, 1))):
            raise invalid(name, "a boolean mask of shape (N, C)", raw)
        raw = raw.astype(bool)
    return raw


def _labels_and_sets(y_true: Any, sets: Any) -> tuple[np.ndarray, np.ndarray]:
    sets = _sets(sets)
    labels = check_labels(y_true, "y_true", n_classes=sets.shape[1])
    check_same_length(y_true=labels, sets=sets)
    return labels, sets


def _hits(labels: np.ndarray, sets: np.ndarray) -> np.ndarray:
    return sets[np.arange(len(labels)), labels]


@better(NEITHER)
def set_coverage(y_true: Any, sets: Any) -> float:
    r"""Fraction of rows whose prediction set holds the true class.

    .. math::

        \mathrm{coverage} = \frac1N \sum_i \mathbb 1[y_i \in C(x_i)]

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Integer labels in ``[0, C)``.
    sets : array-like of bool, shape (N, C)

    Examples
    --------
    >>> set_coverage([0, 1, 2], [[True, False, False], [True, False, True], [False, False, True]])
    0.6666666666666666
    """
    labels, sets = _labels_and_sets(y_true, sets)
    return float(np.mean(_hits(labels, sets)))


@better(LOWER)
def mean_set_size(sets: Any) -> float:
    r"""Average number of classes per set (lower is more informative at the same coverage).

    .. math::

        \overline{|C|} = \frac1N \sum_i |C(x_i)|

    Examples
    --------
    >>> mean_set_size([[True, False, False], [True, False, True]])
    1.5
    """
    return float(np.mean(_sets(sets).sum(axis=1)))


@better(NEITHER)
def size_stratified_coverage(y_true: Any, sets: Any) -> SizeStratifiedCoverage:
    r"""Coverage within each set size (Angelopoulos et al., 2021, *Uncertainty sets for image
    classifiers using conformal prediction*): an adaptive method covers about evenly across sizes.

    .. math::

        \mathrm{coverage}_k = \frac{\sum_i \mathbb 1[|C(x_i)| = k,\ y_i \in C(x_i)]}{\sum_i \mathbb 1[|C(x_i)| = k]}

    Returns
    -------
    SizeStratifiedCoverage
        ``size``, ``coverage`` and ``count``, each (K,) over the sizes that occur (empty sets included,
        their coverage is 0).

    Examples
    --------
    >>> r = size_stratified_coverage([0, 1, 2], [[True, False, False], [True, False, True], [False, False, True]])
    >>> r.size.tolist(), r.coverage.tolist(), r.count.tolist()
    ([1, 2], [1.0, 0.0], [2, 1])
    """
    labels, sets = _labels_and_sets(y_true, sets)
    sizes = sets.sum(axis=1)
    hits = _hits(labels, sets)
    size, inverse, count = np.unique(sizes, return_inverse=True, return_counts=True)
    covered = np.bincount(inverse, weights=hits, minlength=len(size))
    return SizeStratifiedCoverage(size=size.astype(np.int64), coverage=covered / count, count=count)


@better(NEITHER)
def class_conditional_coverage(y_true: Any, sets: Any) -> ClassConditionalCoverage:
    r"""Coverage within each true class (what Mondrian conformal guarantees per class).

    .. math::

        \mathrm{coverage}_c = \frac{\sum_{i : y_i = c} \mathbb 1[c \in C(x_i)]}{\#\{i : y_i = c\}}

    Returns
    -------
    ClassConditionalCoverage
        ``coverage`` and ``count``, each (C,); NaN coverage for a class without rows.

    Examples
    --------
    >>> r = class_conditional_coverage([0, 0, 1], [[True, False, False], [False, True, False], [True, True, False]])
    >>> r.coverage.tolist()[:2], r.count.tolist()
    ([0.5, 1.0], [2, 1, 0])
    """
    labels, sets = _labels_and_sets(y_true, sets)
    n_classes = sets.shape[1]
    count = np.bincount(labels, minlength=n_classes)
    covered = np.bincount(labels, weights=_hits(labels, sets), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(count > 0, covered / np.maximum(count, 1), np.nan)
    return ClassConditionalCoverage(coverage=coverage, count=count)

r"""Proper scoring rules and calibration errors for classifiers.

Every function takes ``y_true`` (N,) integer labels first and ``probs`` (N, C) second; ``probs`` may be a
:class:`~mcdrop.predictive.ClassificationPrediction`, whose predictive mean
:math:`\bar p = \frac1T\sum_t p_t` is used.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mcdrop._validation import check_choice, check_int
from mcdrop.metrics._binning import assign, bin_edges, bin_sums
from mcdrop.metrics._common import HIGHER, LOWER, NEITHER, better, labels_and_probs

__all__ = [
    "negative_log_likelihood",
    "brier_score",
    "accuracy_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "classwise_calibration_error",
    "reliability_curve",
    "ReliabilityCurve",
]

NORMS = ("l1", "l2", "max")

#: Probabilities are clipped below at this value before the log, as scikit-learn's ``log_loss`` does.
LOG_EPS = float(np.finfo(np.float64).eps)


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of the top-label confidence. Empty bins hold NaN confidence and accuracy."""

    confidence: np.ndarray  # (B,) mean top-label confidence in each bin
    accuracy: np.ndarray  # (B,) fraction of correct predictions in each bin
    count: np.ndarray  # (B,) number of rows in each bin (int)
    edges: np.ndarray  # (B + 1,) bin edges on [0, 1]


@better(LOWER)
def negative_log_likelihood(y_true: Any, probs: Any) -> float:
    r"""Mean negative log-likelihood of the true class (log loss, in nats).

    .. math::

        \mathrm{NLL} = -\frac1N \sum_{i=1}^N \log \max(p_{i, y_i}, \epsilon)

    with :math:`\epsilon` the float64 machine epsilon, as scikit-learn's ``log_loss``.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Integer class labels in ``[0, C)``.
    probs : array-like of shape (N, C) or ClassificationPrediction
        Predicted class probabilities; rows sum to one.

    Returns
    -------
    float

    Examples
    --------
    >>> round(negative_log_likelihood([0, 1], [[0.5, 0.5], [0.2, 0.8]]), 4)
    0.4581
    """
    labels, probs = labels_and_probs(y_true, probs)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, LOG_EPS))))


@better(LOWER)
def brier_score(y_true: Any, probs: Any) -> float:
    r"""Multi-class Brier score: squared error to the one-hot label, summed over classes, mean over rows.

    .. math::

        \mathrm{BS} = \frac1N \sum_{i=1}^N \sum_{c=1}^C \big(p_{ic} - \mathbb 1[y_i = c]\big)^2
        \in [0, 2]

    (Brier 1950). Lower is better.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Integer class labels in ``[0, C)``.
    probs : array-like of shape (N, C) or ClassificationPrediction
        Predicted class probabilities.

    Returns
    -------
    float

    Examples
    --------
    >>> brier_score([0], [[0.75, 0.25]])
    0.125
    """
    labels, probs = labels_and_probs(y_true, probs)
    rows = np.arange(len(labels))
    # sum_c p_c^2 - 2 p_y + 1: avoids materialising the one-hot matrix
    total = np.einsum("ij,ij->i", probs, probs) - 2.0 * probs[rows, labels] + 1.0
    return float(np.mean(total))


@better(HIGHER)
def accuracy_score(y_true: Any, probs: Any) -> float:
    """Fraction of rows whose most probable class is the label.

    Parameters
    ----------
    y_true : array-like of shape (N,)
    probs : array-like of shape (N, C) or ClassificationPrediction

    Examples
    --------
    >>> accuracy_score([0, 1], [[0.9, 0.1], [0.6, 0.4]])
    0.5
    """
    labels, probs = labels_and_probs(y_true, probs)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def _top_label_bins(y_true, probs, n_bins, strategy):
    labels, probs = labels_and_probs(y_true, probs)
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    predicted = np.argmax(probs, axis=1)
    confidence = probs[np.arange(len(labels)), predicted]
    correct = (predicted == labels).astype(np.float64)
    edges = bin_edges(confidence, n_bins, strategy)
    index = assign(confidence, edges)
    counts, conf_sum, correct_sum = bin_sums(index, n_bins, confidence, correct)
    return counts, conf_sum, correct_sum, edges


def _calibration_gap(counts, conf_sum, correct_sum, norm, n_rows):
    filled = counts > 0
    gaps = np.abs(correct_sum[filled] - conf_sum[filled]) / counts[filled]
    weights = counts[filled] / n_rows
    if norm == "l1":
        return float(np.sum(weights * gaps))
    if norm == "l2":
        return float(np.sqrt(np.sum(weights * gaps**2)))
    return float(np.max(gaps))


@better(LOWER)
def expected_calibration_error(y_true: Any, probs: Any, *, n_bins: int = 15, strategy: str = "uniform",
                               norm: str = "l1") -> float:
    r"""Top-label expected calibration error (Guo et al., 2017).

    Rows are binned by their confidence :math:`\hat p_i = \max_c p_{ic}` into bins :math:`B_1..B_M`
    (right-closed intervals; equal widths or equal counts), and in each bin the accuracy is compared
    with the mean confidence:

    .. math::

        \mathrm{acc}(B_m) = \frac{1}{|B_m|}\sum_{i\in B_m} \mathbb 1[\hat y_i = y_i],\qquad
        \mathrm{conf}(B_m) = \frac{1}{|B_m|}\sum_{i\in B_m} \hat p_i

    .. math::

        \mathrm{ECE}_{\ell_1} = \sum_m \frac{|B_m|}{N}\,\big|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\big|,\quad
        \mathrm{ECE}_{\ell_2} = \Big(\sum_m \frac{|B_m|}{N}\,\big(\mathrm{acc} - \mathrm{conf}\big)^2\Big)^{1/2},\quad
        \mathrm{ECE}_{\max} = \max_{m : |B_m| > 0} \big|\mathrm{acc} - \mathrm{conf}\big|

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Integer class labels in ``[0, C)``.
    probs : array-like of shape (N, C) or ClassificationPrediction
        Predicted class probabilities.
    n_bins : int, default 15
        Number of bins M >= 1.
    strategy : {"uniform", "quantile"}, default "uniform"
        Equal-width bins on [0, 1], or bins holding (about) equal numbers of rows.
    norm : {"l1", "l2", "max"}, default "l1"
        How the per-bin gaps are combined; ``"max"`` is the maximum calibration error.

    Returns
    -------
    float
        In [0, 1]; 0 for a calibrated classifier.

    Examples
    --------
    >>> expected_calibration_error([0, 1], [[0.9, 0.1], [0.6, 0.4]], n_bins=2)
    0.25
    """
    norm = check_choice(norm, "norm", NORMS)
    counts, conf_sum, correct_sum, _ = _top_label_bins(y_true, probs, n_bins, strategy)
    return _calibration_gap(counts, conf_sum, correct_sum, norm, counts.sum())


@better(LOWER)
def maximum_calibration_error(y_true: Any, probs: Any, *, n_bins: int = 15, strategy: str = "uniform") -> float:
    r"""Largest gap between accuracy and confidence over the non-empty bins (Naeini et al., 2015).

    .. math::

        \mathrm{MCE} = \max_{m : |B_m| > 0} \big|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\big|

    Same binning as :func:`expected_calibration_error` (it equals ``norm="max"``).

    Examples
    --------
    >>> maximum_calibration_error([0, 1], [[0.9, 0.1], [0.6, 0.4]], n_bins=10)
    0.6
    """
    return expected_calibration_error(y_true, probs, n_bins=n_bins, strategy=strategy, norm="max")


@better(LOWER)
def classwise_calibration_error(y_true: Any, probs: Any, *, n_bins: int = 15) -> float:
    r"""Class-wise ECE (Kull et al., 2019): the calibration of every class probability, not only the top one.

    For each class c, the probabilities :math:`p_{ic}` are put into M equal-width bins :math:`B_{m,c}` and

    .. math::

        \mathrm{cwECE} = \frac1C \sum_{c=1}^C \sum_{m=1}^M \frac{|B_{m,c}|}{N}
        \Big| \frac{1}{|B_{m,c}|}\sum_{i\in B_{m,c}} \mathbb 1[y_i = c]
              - \frac{1}{|B_{m,c}|}\sum_{i\in B_{m,c}} p_{ic} \Big|

    Parameters
    ----------
    y_true : array-like of shape (N,)
    probs : array-like of shape (N, C) or ClassificationPrediction
    n_bins : int, default 15

    Returns
    -------
    float

    Examples
    --------
    >>> round(classwise_calibration_error([0, 1], [[0.9, 0.1], [0.6, 0.4]], n_bins=2), 4)
    0.25
    """
    labels, probs = labels_and_probs(y_true, probs)
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    n, c = probs.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = assign(probs, edges)  # (N, C)
    flat = (index + n_bins * np.arange(c)[None, :]).ravel()  # one bin id per (class, bin)
    onehot_hits = np.zeros_like(probs)
    onehot_hits[np.arange(n), labels] = 1.0
    counts, p_sum, hit_sum = bin_sums(flat, n_bins * c, probs.ravel(), onehot_hits.ravel())
    return float(np.sum(np.abs(hit_sum - p_sum)) / (n * c))


@better(NEITHER)
def reliability_curve(y_true: Any, probs: Any, *, n_bins: int = 15, strategy: str = "uniform") -> ReliabilityCurve:
    r"""Per-bin mean confidence, accuracy and count of the top label (the reliability diagram's data).

    Parameters
    ----------
    y_true : array-like of shape (N,)
    probs : array-like of shape (N, C) or ClassificationPrediction
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}, default "uniform"

    Returns
    -------
    ReliabilityCurve
        ``confidence`` (B,), ``accuracy`` (B,), ``count`` (B,), ``edges`` (B + 1,). Empty bins have NaN
        confidence and accuracy, so that bins keep their positions.

    Examples
    --------
    >>> curve = reliability_curve([0, 1], [[0.9, 0.1], [0.6, 0.4]], n_bins=2)
    >>> curve.count.tolist(), curve.accuracy.tolist()
    ([0, 2], [nan, 0.5])
    """
    counts, conf_sum, correct_sum, edges = _top_label_bins(y_true, probs, n_bins, strategy)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, conf_sum / counts, np.nan)
        accuracy = np.where(counts > 0, correct_sum / counts, np.nan)
    return ReliabilityCurve(confidence, accuracy, counts.astype(np.int64), edges)

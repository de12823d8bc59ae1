r"""Out-of-distribution detection by thresholding an uncertainty score.

Out-of-distribution rows are the positive class and a higher uncertainty flags them (Hendrycks &
Gimpel, 2017, *A baseline for detecting misclassified and out-of-distribution examples*, ICLR).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import check_float
from mcdrop.metrics._common import HIGHER, LOWER, better, uncertainty_of
from mcdrop.metrics._ranking import auroc, average_precision, distinct_threshold_counts

__all__ = ["ood_auroc", "ood_aupr", "fpr_at_95_tpr"]


def _pooled(uncertainty_in, uncertainty_out, measure):
    u_in = uncertainty_of(uncertainty_in, "uncertainty_in", measure)
    u_out = uncertainty_of(uncertainty_out, "uncertainty_out", measure)
    score = np.concatenate([u_in, u_out])
    is_out = np.r_[np.zeros(u_in.size, bool), np.ones(u_out.size, bool)]
    return score, is_out


@better(HIGHER)
def ood_auroc(uncertainty_in: Any, uncertainty_out: Any, *, measure: str | None = None) -> float:
    r"""AUROC of separating out-of-distribution rows (positive) from in-distribution ones by uncertainty.

    .. math::

        \mathrm{AUROC} = P(u^{out} > u^{in}) + \tfrac12 P(u^{out} = u^{in})

    Parameters
    ----------
    uncertainty_in : array-like of shape (N_in,) or prediction
        Uncertainty on in-distribution inputs (for a prediction: its ``measure``).
    uncertainty_out : array-like of shape (N_out,) or prediction
        Uncertainty on out-of-distribution inputs.
    measure : str, optional
        Statistic read from predictions: ``"entropy"`` (default), ``"mutual_information"``, ... for
        classification, ``"variance"`` (default), ``"epistemic_variance"``, ... for regression.

    Returns
    -------
    float
        1 is perfect separation, 0.5 chance.

    Examples
    --------
    >>> ood_auroc([0.1, 0.2, 0.6], [0.5, 0.9])
    0.8333333333333334
    """
    score, is_out = _pooled(uncertainty_in, uncertainty_out, measure)
    return auroc(score, is_out)


@better(HIGHER)
def ood_aupr(uncertainty_in: Any, uncertainty_out: Any, *, measure: str | None = None) -> float:
    r"""Average precision with out-of-distribution as the positive class (AUPR-out).

    .. math::

        \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k

    Examples
    --------
    >>> round(ood_aupr([0.1, 0.2, 0.6], [0.5, 0.9]), 4)
    0.8333
    """
    score, is_out = _pooled(uncertainty_in, uncertainty_out, measure)
    return average_precision(score, is_out)


@better(LOWER)
def fpr_at_95_tpr(uncertainty_in: Any, uncertainty_out: Any, *, tpr: float = 0.95,
                  measure: str | None = None) -> float:
    r"""Fraction of in-distribution rows flagged when the threshold catches at least 95% of the OOD rows.

    .. math::

        \mathrm{FPR@95} = \min_{\tau\,:\,\mathrm{TPR}(\tau) \ge 0.95} \frac{\#\{i : u^{in}_i \ge \tau\}}{N_{in}},
        \qquad \mathrm{TPR}(\tau) = \frac{\#\{j : u^{out}_j \ge \tau\}}{N_{out}}

    Lower is better.

    Parameters
    ----------
    uncertainty_in, uncertainty_out : array-like or prediction
        As for :func:`ood_auroc`.
    tpr : float, default 0.95
        The true-positive rate to reach, in (0, 1].

    Examples
    --------
    >>> fpr_at_95_tpr([0.1, 0.2, 0.6], [0.5, 0.9])
    0.3333333333333333
    """
    tpr = check_float(tpr, "tpr", low=0.0, high=1.0, low_inclusive=False)
    score, is_out = _pooled(uncertainty_in, uncertainty_out, measure)
    _, tp, fp = distinct_threshold_counts(score, is_out)
    n_out, n_in = is_out.sum(), (~is_out).sum()
    reached = np.nonzero(tp >= tpr * n_out - 1e-9 * n_out)[0][0]
    return float(fp[reached] / n_in)

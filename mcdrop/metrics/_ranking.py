"""Tie-aware ranking statistics shared by the selective-prediction and OOD metrics."""

from __future__ import annotations

import numpy as np


def distinct_threshold_counts(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives when flagging every row with score >= s, for each distinct s.

    Returns ``(thresholds, tp, fp)``, thresholds in decreasing order, each of shape (K,).
    """
    order = np.argsort(-score, kind="stable")
    score = score[order]
    positive = positive[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(score))[0], score.size - 1]  # last row of each tie group
    tp = np.cumsum(positive)[last]
    fp = (last + 1) - tp
    return score[last], tp, fp


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    ranks = rankdata(score)  # average ranks: a tie counts one half
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    r"""Average precision :math:`\sum_k (R_k - R_{k-1}) P_k` over distinct thresholds (no interpolation)."""
    _, tp, fp = distinct_threshold_counts(score, positive)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))

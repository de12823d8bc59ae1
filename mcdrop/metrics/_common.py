"""Input handling shared by the metric families: predictions or plain arrays in, checked arrays out."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import check_array, check_labels, check_probs, check_same_length, invalid
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction


#: Which way a metric improves, recorded on the metric function itself as ``fn.direction`` (see
#: :func:`better`): higher is better (+1), lower is better (-1), or neither (0) — a curve, per-row values,
#: or a value with a target rather than an optimum, such as a coverage aimed at its nominal level.
HIGHER, LOWER, NEITHER = 1, -1, 0


def better(direction: int):
    """Decorator: record on a metric function which way it improves, as ``fn.direction``
    (:data:`HIGHER`, :data:`LOWER` or :data:`NEITHER`). The report, the demo and the tuning read it there."""
    if direction not in (HIGHER, LOWER, NEITHER):
        raise invalid("direction", "1 (higher is better), -1 (lower is better) or 0", direction)

    def mark(fn):
        fn.direction = direction
        return fn

    return mark


def is_prediction(value: Any) -> bool:
    """Whether ``value`` is a prediction object (which answers :meth:`uncertainty` and the like) rather
    than an array."""
    return isinstance(value, (ClassificationPrediction, RegressionPrediction))


def is_classification_prediction(value: Any) -> bool:
    return isinstance(value, ClassificationPrediction)


def is_regression_prediction(value: Any) -> bool:
    return isinstance(value, RegressionPrediction)


def looks_like_probs(array: np.ndarray) -> bool:
    """Whether every row along the last axis is a probability vector (within the package tolerance)."""
    from mcdrop._validation import PROB_ATOL

    return bool(np.all(array >= -PROB_ATOL) and np.all(array <= 1 + PROB_ATOL)
                and np.all(np.abs(array.sum(axis=-1) - 1.0) <= PROB_ATOL))


def probs_of(value: Any, name: str = "probs") -> np.ndarray:
    """Class probabilities (N, C) from a ClassificationPrediction (its ``mean``) or an array."""
    if is_classification_prediction(value):
        value = value.mean
    return check_probs(value, name)


def labels_and_probs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked integer labels (N,) and probabilities (N, C) with labels in ``[0, C)``."""
    probs = probs_of(probs)
    labels = check_labels(y_true, "y_true", n_classes=probs.shape[1])
    check_same_length(y_true=labels, probs=probs)
    return labels, probs


def scores(value: Any, name: str) -> np.ndarray:
    """A finite 1-D score array (N,)."""
    return check_array(value, name, ndim=1)


def binary_labels(value: Any, name: str) -> np.ndarray:
    """A 1-D array of booleans or 0/1 values, returned as bool."""
    raw = check_array(value, name, ndim=1, dtype=None, finite=False)
    if raw.dtype.kind == "b":
        return raw
    if raw.dtype.kind not in "iuf" or not np.all(np.isin(raw, (0, 1))):
        raise invalid(name, "booleans or 0/1 values", raw)
    return raw.astype(bool)


def targets(value: Any, name: str = "y_true") -> np.ndarray:
    """Regression targets (N,) or (N, D) as float64."""
    return check_array(value, name, ndim=(1, 2))


def same_shape(reference: np.ndarray, ref_name: str, value: np.ndarray, name: str) -> np.ndarray:
    """``value`` with the shape of ``reference``; a (N, 1) / (N,) mismatch is squeezed."""
    if value.shape != reference.shape:
        if value.size == reference.size and value.shape[:1] == reference.shape[:1]:
            return value.reshape(reference.shape)
        check_same_length(**{ref_name: reference, name: value})
        raise invalid(name, f"an array of the shape of `{ref_name}` {reference.shape}", value)
    return value


def uncertainty_of(value: Any, name: str, measure: str | None) -> np.ndarray:
    """Per-row uncertainty (N,): an array as given, or ``measure`` read from a prediction
    (:meth:`~mcdrop.predictive.ClassificationPrediction.uncertainty`: entropy or total variance by default,
    regression measures averaged over output dimensions)."""
    if is_prediction(value):
        return check_array(value.uncertainty(measure), name, ndim=1)
    return scores(value, name)

"""``mcdrop.evaluate`` reads the task of a bare array from the targets and the values, never from a shape
(issue 9.3)."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop.report import evaluate


def test_unnormalised_probabilities_are_an_error_not_a_regression_report():
    # issue 9.3: on main (N, C) scores gave an internal reshape error, and with N == C a regression report
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 1.0, size=(6, 3))
    with pytest.raises(ValueError, match=r"`prediction_or_predictions`: expected class probabilities of shape "
                                         r"\(N, C\) or \(T, N, C\), or a declared task, received an array of "
                                         r"shape \(6, 3\).*6 of 6 row\(s\) do not sum to one.*task='regression'"):
        evaluate(scores, [0, 1, 2, 0, 1, 2])
    square = rng.uniform(0.1, 1.0, size=(3, 3))  # N == C must not flip the task
    with pytest.raises(ValueError, match=r"3 of 3 row\(s\) do not sum to one"):
        evaluate(square, [0, 1, 2])
    with pytest.raises(ValueError, match=r"`prediction_or_predictions\['a'\]`: expected class probabilities"):
        evaluate({"a": square}, [0, 1, 2])
    # normalised, the same square array is a classification, checked against a hand computation
    probs = square / square.sum(axis=1, keepdims=True)
    report = evaluate(probs, [0, 1, 2])
    assert report.task == "classification"
    assert report.metrics["model"]["nll"] == pytest.approx(-np.mean(np.log(probs[[0, 1, 2], [0, 1, 2]])))
    # declaring the task is the way to read integer targets as regression
    assert evaluate(square, [0, 1, 2], task="regression").task == "regression"
    with pytest.raises(ValueError, match=r"the task cannot be read from this array"):
        evaluate(np.array([1.0, 2.0, 3.0]), [1, 2, 3])

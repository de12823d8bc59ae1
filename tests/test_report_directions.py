"""The report's metric directions come from the metrics (issue 13 item 6), and its per-task behaviour from
the prediction types: one task object per type, no task-string branches."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop import metrics, report
from mcdrop.heads import TASKS
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

#: The directions the report showed before they were read from the metrics (written out by hand).
EXPECTED = {
    "accuracy": +1, "nll": -1, "brier": -1, "ece": -1, "mce": -1, "classwise_ece": -1, "aurc": -1,
    "excess_aurc": -1, "error_auroc": +1, "error_aupr": +1, "mean_entropy": 0, "mean_mutual_information": 0,
    "rmse": -1, "gaussian_nll": -1, "mixture_nll": -1, "crps": -1, "coverage": 0, "coverage_error": -1,
    "interval_width": -1, "miscalibration_area": -1, "mean_std": 0, "num_samples": 0,
    "includes_aleatoric": 0,
}


def _reports():
    clf = ClassificationPrediction.from_samples(np.array([[[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]],
                                                          [[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]]))
    reg = RegressionPrediction.from_samples(np.array([[1.0, 2.0, 0.0], [2.0, 3.0, 1.0]]),
                                            np.full((2, 3), 0.25))
    return report.evaluate(clf, [0, 1, 0]), report.evaluate(reg, [1.5, 2.0, 0.0])


def test_directions_are_the_metrics_and_unchanged():
    assert report.DIRECTIONS == EXPECTED
    for row, fn in report.ROW_METRICS.items():
        assert report.DIRECTIONS[row] == fn.direction, row


def test_every_row_of_every_task_has_a_direction():
    for rep in _reports():
        assert set(rep.metric_names) <= set(report.DIRECTIONS)
        assert rep.to_dict()["directions"] == {k: EXPECTED[k] for k in rep.metric_names}
    assert {rep.task for rep in _reports()} == set(TASKS)


def test_best_follows_the_direction():
    """The sharp model is better on both counts: more accurate (higher is better) and a lower NLL (lower is
    better); a flipped direction would name the flat one."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = [0, 1, 1, 1]
    rep = report.evaluate({"flat": np.full((4, 2), 0.5), "sharp": probs}, y)
    assert rep.metrics["sharp"]["accuracy"] == 0.75 and rep.metrics["flat"]["accuracy"] == 0.25
    assert rep.metrics["sharp"]["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    assert rep.metrics["flat"]["nll"] == pytest.approx(np.log(2))
    assert rep.best("accuracy") == "sharp" and rep.best("nll") == "sharp"
    assert rep.best("mean_entropy") is None  # descriptive: no best


@pytest.mark.parametrize("task", TASKS)
def test_one_task_object_per_prediction_type(task):
    kind = report._KINDS[task]
    assert kind.prediction.task == task
    assert kind.prediction in (ClassificationPrediction, RegressionPrediction)


def test_a_prediction_of_the_other_task_is_refused():
    clf, _ = _reports()
    reg = RegressionPrediction.from_samples(np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"argument `prediction_or_predictions\['b'\]`: expected a classification "
                                        r"prediction"):
        report.evaluate({"a": clf._predictions["model"], "b": reg}, [0, 1, 0])
    with pytest.raises(TypeError, match=r"expected a regression prediction"):
        report.evaluate(clf._predictions["model"], [0.5, 1.0, 2.0], task="regression")

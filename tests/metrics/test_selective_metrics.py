import numpy as np
import pytest
import sklearn.metrics as skm

from mcdrop import metrics
from mcdrop.predictive import ClassificationPrediction

Y = np.array([0, 1, 0])
P = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])  # right, wrong, right


def test_risk_coverage_hand():
    curve = metrics.risk_coverage_curve(Y, P)
    np.testing.assert_allclose(curve.coverage, [1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.risk, [0, 1 / 2, 1 / 3])
    np.testing.assert_allclose(curve.threshold, [0.9, 0.8, 0.7])


def test_aurc_and_excess_hand():
    assert metrics.aurc(Y, P) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    # ideal order puts the error last: risks 0, 0, 1/3
    assert metrics.excess_aurc(Y, P) == pytest.approx((1 / 2 + 1 / 3) / 3 - (1 / 3) / 3)


def test_ties_take_expected_risk():
    # all equally confident: one error among two, either order with probability one half
    curve = metrics.risk_coverage_curve([0, 1], [[0.6, 0.4], [0.6, 0.4]])
    np.testing.assert_allclose(curve.risk, [0.5, 0.5])
    assert metrics.aurc([1, 0], [[0.6, 0.4], [0.6, 0.4]]) == pytest.approx(0.5)


def test_aurc_against_loop_without_ties(classification_data):
    y, p = classification_data
    order = np.argsort(-p.max(1))
    err = (p.argmax(1) != y)[order]
    risks = [err[:k].mean() for k in range(1, len(y) + 1)]
    assert metrics.aurc(y, p) == pytest.approx(np.mean(risks), rel=1e-10)
    assert metrics.risk_coverage_curve(y, p).risk[-1] == pytest.approx(err.mean())


def test_ranking_by_uncertainty():
    # rank by an external uncertainty that puts the error first: the risk starts at 1
    curve = metrics.risk_coverage_curve(Y, P, uncertainty=[0.5, 0.1, 0.9])
    np.testing.assert_allclose(curve.risk, [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(curve.threshold, [0.1, 0.5, 0.9])


def test_ranking_by_prediction_measure():
    passes = np.array([[[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]],
                       [[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]])
    pred = ClassificationPrediction.from_samples(passes)
    by_mi = metrics.aurc([0, 1, 0], pred, uncertainty=pred, measure="mutual_information")
    expected = metrics.aurc([0, 1, 0], pred, uncertainty=pred.mutual_information)
    assert by_mi == expected


def test_uncertainty_auroc_matches_sklearn(classification_data):
    y, p = classification_data
    is_error = p.argmax(1) != y
    u = np.round(1 - p.max(1), 2)  # rounding makes ties
    assert metrics.uncertainty_auroc(is_error, u) == pytest.approx(skm.roc_auc_score(is_error, u), rel=1e-12)
    assert metrics.uncertainty_aupr(is_error, u) == pytest.approx(
        skm.average_precision_score(is_error, u), rel=1e-12)


def test_uncertainty_auroc_hand():
    assert metrics.uncertainty_auroc([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    assert metrics.uncertainty_auroc([1, 0, 0], [0.1, 0.9, 0.2]) == 0.0
    assert metrics.uncertainty_auroc([1, 0], [0.3, 0.3]) == 0.5


def test_error_is_error_one_class():
    with pytest.raises(ValueError, match=r"`is_error`: expected both errors and correct predictions.*All 2"):
        metrics.uncertainty_auroc([0, 0], [0.1, 0.2])


def test_error_is_error_not_binary():
    with pytest.raises(ValueError, match=r"`is_error`: expected booleans or 0/1 values"):
        metrics.uncertainty_aupr([0, 2], [0.1, 0.2])


def test_error_uncertainty_length():
    with pytest.raises(ValueError, match=r"same number of rows.*`y_true` has 3, `uncertainty` has 2"):
        metrics.risk_coverage_curve(Y, P, uncertainty=[0.1, 0.2])


def test_error_unknown_measure():
    pred = ClassificationPrediction.from_samples(P[None])
    with pytest.raises(ValueError, match=r"`measure`: expected one of 'entropy'.*received 'variance'"):
        metrics.aurc(Y, pred, uncertainty=pred, measure="variance")

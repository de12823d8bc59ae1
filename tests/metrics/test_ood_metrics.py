import numpy as np
import pytest
import sklearn.metrics as skm

from mcdrop import metrics
from mcdrop.predictive import ClassificationPrediction


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    u_in = np.round(rng.gamma(2.0, 0.2, size=700), 2)
    u_out = np.round(rng.gamma(3.0, 0.3, size=300), 2)
    return u_in, u_out


def _pooled(u_in, u_out):
    return np.r_[np.zeros(u_in.size), np.ones(u_out.size)], np.r_[u_in, u_out]


def test_ood_auroc_matches_sklearn(scores):
    y, s = _pooled(*scores)
    assert metrics.ood_auroc(*scores) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)


def test_ood_aupr_matches_sklearn(scores):
    y, s = _pooled(*scores)
    assert metrics.ood_aupr(*scores) == pytest.approx(skm.average_precision_score(y, s), rel=1e-12)


@pytest.mark.parametrize("level", [0.95, 0.8, 1.0])
def test_fpr_at_tpr_matches_sklearn_roc(scores, level):
    y, s = _pooled(*scores)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    expected = fpr[np.searchsorted(tpr, level - 1e-12, side="left")]
    assert metrics.fpr_at_95_tpr(*scores, tpr=level) == pytest.approx(expected)


def test_hand_cases():
    assert metrics.ood_auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert metrics.ood_aupr([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert metrics.fpr_at_95_tpr([0.1, 0.2], [0.3, 0.4]) == 0.0
    # 20 OOD rows: 19 above every in-distribution row reach exactly 95%, the 20th is not needed
    u_out = np.r_[np.full(19, 5.0), 0.0]
    assert metrics.fpr_at_95_tpr([1.0, 2.0], u_out) == 0.0
    assert metrics.fpr_at_95_tpr([1.0, 2.0], u_out, tpr=1.0) == 1.0


def test_predictions_use_entropy_by_default():
    p_in = ClassificationPrediction.from_samples(np.array([[[0.9, 0.1], [0.8, 0.2]]]))
    p_out = ClassificationPrediction.from_samples(np.array([[[0.5, 0.5], [0.6, 0.4]]]))
    assert metrics.ood_auroc(p_in, p_out) == metrics.ood_auroc(p_in.entropy, p_out.entropy) == 1.0


def test_error_tpr():
    with pytest.raises(ValueError, match=r"`tpr`: expected a number in \(0.0, 1.0\], received 0"):
        metrics.fpr_at_95_tpr([0.1], [0.2], tpr=0)


def test_error_empty_out():
    with pytest.raises(ValueError, match=r"`uncertainty_out`: expected a non-empty array"):
        metrics.ood_auroc([0.1], [])


def test_error_nan_scores():
    with pytest.raises(ValueError, match=r"`uncertainty_in`: expected finite values"):
        metrics.ood_aupr([np.nan, 0.1], [0.2])

"""Epistemic-only regression predictions say so (issue 9, item 12): the prediction records whether the
targets' noise is included, intervals/cdf/quantile warn once when it is not, and the report says so.
Checked on scikit-learn's diabetes data, where such intervals cover far less than their level."""

import dataclasses
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

import mcdrop
from mcdrop.calibration import VarianceScaling
from mcdrop.predictive import EpistemicOnlyWarning, RegressionPrediction, concatenate


@pytest.fixture(scope="module")
def diabetes():
    """Epistemic samples (T, N) from a bootstrap ensemble of ridge fits (an independent source of model
    uncertainty): validation and test splits with their targets."""
    x, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, val, test = order[:250], order[250:340], order[340:]
    preds = []
    for _ in range(50):
        boot = rng.choice(train, size=len(train))
        model = Ridge(alpha=0.1).fit(x[boot], y[boot])
        preds.append(model.predict(x))
    samples = np.stack(preds)  # (T, N)
    return samples[:, val], y[val], samples[:, test], y[test]


def coverage(pred, y, level=0.95):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpistemicOnlyWarning)
        lo, hi = pred.interval(level)
    return float(np.mean((lo[:, 0] <= y) & (y <= hi[:, 0])))


def test_epistemic_only_intervals_under_cover_and_warn(diabetes):
    _, _, test_samples, y_test = diabetes
    pred = RegressionPrediction.from_samples(test_samples)
    assert pred.includes_aleatoric is False
    with pytest.warns(EpistemicOnlyWarning, match=r"interval covers the model's \(epistemic\) uncertainty "
                                                   r"only.*mcdrop\.calibration\.VarianceScaling.*conformal"):
        lo, hi = pred.interval(0.95)
    covered = np.mean((lo[:, 0] <= y_test) & (y_test <= hi[:, 0]))
    assert covered < 0.5  # far below 0.95: what the warning is about


def test_warns_once_per_prediction_across_interval_cdf_and_quantile(diabetes):
    _, _, test_samples, y_test = diabetes
    pred = RegressionPrediction.from_samples(test_samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred.cdf(y_test)
        pred.interval(0.9)
        pred.quantile(0.2)
    assert [type(w.message) for w in caught] == [EpistemicOnlyWarning]
    assert "cdf covers" in str(caught[0].message)
    with pytest.warns(EpistemicOnlyWarning, match="quantile"):  # another prediction warns again
        RegressionPrediction.from_samples(test_samples).quantile(0.5)


def test_variance_scaling_fixes_coverage_and_silences_the_warning(diabetes):
    val_samples, y_val, test_samples, y_test = diabetes
    val, test = RegressionPrediction.from_samples(val_samples), RegressionPrediction.from_samples(test_samples)
    scaled = VarianceScaling().fit(val, y_val).transform(test)
    assert scaled.includes_aleatoric is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", EpistemicOnlyWarning)
        lo, hi = scaled.interval(0.95, method="gaussian")
        scaled.cdf(y_test)
    assert abs(np.mean((lo[:, 0] <= y_test) & (y_test <= hi[:, 0])) - 0.95) < 0.08
    assert coverage(test, y_test) < 0.5


def test_gaussian_head_and_declared_noise_include_aleatoric():
    rng = np.random.default_rng(1)
    mu, var = rng.standard_normal((20, 8)), rng.random((20, 8)) + 0.1
    assert RegressionPrediction.from_samples(mu, var).includes_aleatoric is True
    declared = RegressionPrediction.from_samples(mu, includes_aleatoric=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EpistemicOnlyWarning)
        RegressionPrediction.from_samples(mu, var).interval(0.9)
        declared.interval(0.9)
    with pytest.raises(TypeError, match=r"argument `includes_aleatoric`: expected True, False or None, "
                                        r"received 'yes'"):
        RegressionPrediction.from_samples(mu, includes_aleatoric="yes")


def test_the_flag_is_carried_through_subset_concatenate_to_dict_and_store(tmp_path):
    mu = np.random.default_rng(2).standard_normal((10, 6))
    plain = RegressionPrediction.from_samples(mu)
    declared = RegressionPrediction.from_samples(mu, includes_aleatoric=True)
    for pred in (plain, declared):
        flag = pred.includes_aleatoric
        assert pred.subset(slice(1, 4)).includes_aleatoric is flag
        assert concatenate([pred.subset(slice(0, 3)), pred.subset(slice(3, 6))]).includes_aleatoric is flag
        assert pred.to_dict()["includes_aleatoric"].item() is flag
        writer = mcdrop.store.PredictionWriter(tmp_path / str(flag))
        writer.append(pred)
        assert writer.close().includes_aleatoric is flag
    with pytest.raises(ValueError, match=r"argument `predictions`: expected regression predictions that all "
                                         r"include the targets' noise or all leave it out"):
        concatenate([plain, declared])
    assert dataclasses.replace(plain, mean=plain.mean + 1).includes_aleatoric is False


def test_report_says_when_the_spread_is_epistemic_only(diabetes):
    val_samples, y_val, test_samples, y_test = diabetes
    test = RegressionPrediction.from_samples(test_samples)
    scaled = VarianceScaling().fit(RegressionPrediction.from_samples(val_samples), y_val).transform(test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpistemicOnlyWarning)
        report = mcdrop.evaluate({"mc": test, "mc + scaling": scaled}, y_test)
    assert report.metrics["mc"]["includes_aleatoric"] is False
    assert report.metrics["mc + scaling"]["includes_aleatoric"] is True
    assert "includes_aleatoric False" in str(report) and "VarianceScaling" in str(report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpistemicOnlyWarning)
        assert "includes_aleatoric False" not in str(mcdrop.evaluate(scaled, y_test))

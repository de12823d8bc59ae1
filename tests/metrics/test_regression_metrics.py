import numpy as np
import pytest
import sklearn.metrics as skm
from scipy import integrate, stats

from mcdrop import metrics
from mcdrop.predictive import RegressionPrediction


@pytest.fixture
def gaussian_data():
    rng = np.random.default_rng(5)
    n = 500
    mean = rng.normal(size=n)
    std = rng.uniform(0.5, 2.0, size=n)
    y = mean + std * rng.normal(size=n)
    return y, mean, std


# --- hand cases and independent references -------------------------------------------------------

def test_gaussian_nll_matches_scipy(gaussian_data):
    y, mean, std = gaussian_data
    expected = -np.mean(stats.norm.logpdf(y, mean, std))
    assert metrics.gaussian_nll(y, mean, std**2) == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_hand():
    # 0.5 log(2 pi 4) + (2^2)/(2*4)
    assert metrics.gaussian_nll([2.0], [0.0], [4.0]) == pytest.approx(0.5 * np.log(8 * np.pi) + 0.5)


def test_crps_gaussian_hand():
    # at the mean: sigma (2 phi(0) - 1/sqrt(pi)) = sigma (sqrt(2) - 1) / sqrt(pi)
    assert metrics.crps_gaussian([0.0], [0.0], [2.0]) == pytest.approx(2 * (np.sqrt(2) - 1) / np.sqrt(np.pi))
    assert metrics.crps_gaussian([3.0], [1.0], [0.0]) == 2.0


def test_crps_gaussian_against_numerical_integral():
    # CRPS = integral of (F(x) - 1[x >= y])^2 dx
    y, mu, sd = 0.7, -0.2, 1.3
    left, _ = integrate.quad(lambda x: stats.norm.cdf(x, mu, sd) ** 2, -np.inf, y)
    right, _ = integrate.quad(lambda x: stats.norm.sf(x, mu, sd) ** 2, y, np.inf)
    assert metrics.crps_gaussian([y], [mu], [sd]) == pytest.approx(left + right, rel=1e-7)


def test_crps_gaussian_against_many_samples(gaussian_data):
    y, mean, std = gaussian_data
    y, mean, std = y[:50], mean[:50], std[:50]
    rng = np.random.default_rng(6)
    samples = mean + std * rng.normal(size=(20000, 50))
    assert metrics.crps_samples(y, samples) == pytest.approx(metrics.crps_gaussian(y, mean, std), rel=0.01)


def test_crps_samples_hand_and_pairwise():
    assert metrics.crps_samples([0.0], [[1.0], [-1.0]]) == 0.5
    rng = np.random.default_rng(7)
    samples = rng.normal(size=(30, 8))
    y = rng.normal(size=8)
    pairwise = np.abs(samples[:, None] - samples[None]).mean(axis=(0, 1))
    expected = np.mean(np.abs(samples - y).mean(0) - 0.5 * pairwise)
    assert metrics.crps_samples(y, samples) == pytest.approx(expected, rel=1e-12)


def test_crps_of_gaussian_mixture_prediction():
    rng = np.random.default_rng(8)
    t, n = 6, 40
    means = rng.normal(size=(t, n)) * 2
    variances = rng.uniform(0.1, 1.0, size=(t, n))
    y = rng.normal(size=n)
    pred = RegressionPrediction.from_samples(means, variances)
    # draw many samples from the mixture: pick a pass, then its Gaussian
    draws = 40000
    pick = rng.integers(0, t, size=(draws, n))
    cols = np.arange(n)
    mixture_samples = means[pick, cols] + np.sqrt(variances[pick, cols]) * rng.normal(size=(draws, n))
    assert metrics.crps_samples(y, pred) == pytest.approx(metrics.crps_samples(y, mixture_samples), rel=0.01)


def test_crps_prediction_without_mixture_is_gaussian():
    rng = np.random.default_rng(9)
    samples = rng.normal(size=(5, 10))
    pred = RegressionPrediction.from_samples(samples, keep_samples=False)
    y = np.zeros(10)
    assert metrics.crps_samples(y, pred) == pytest.approx(
        metrics.crps_gaussian(y, pred.mean[:, 0], pred.std[:, 0]))
    assert metrics.crps_samples(y, RegressionPrediction.from_samples(samples)) == pytest.approx(
        metrics.crps_samples(y, samples))


def test_rmse_matches_sklearn(gaussian_data):
    y, mean, _ = gaussian_data
    assert metrics.rmse(y, mean) == pytest.approx(np.sqrt(skm.mean_squared_error(y, mean)), rel=1e-12)


def test_interval_hand():
    assert metrics.interval_coverage([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, 0.5, 3.0]) == pytest.approx(2 / 3)
    assert metrics.mean_interval_width([0.0, 0.0], [1.0, 3.0]) == 2.0


def test_interval_from_prediction(gaussian_data):
    y, mean, std = gaussian_data
    pred = RegressionPrediction.from_samples(mean[None], (std**2)[None])
    lo, hi = pred.interval(0.9)
    assert metrics.interval_coverage(y, pred, level=0.9) == metrics.interval_coverage(y, lo, hi)
    # the mixture of one Gaussian is that Gaussian: width 2 z_{0.95} sigma
    assert metrics.mean_interval_width(pred, level=0.9) == pytest.approx(
        2 * stats.norm.ppf(0.95) * std.mean(), rel=1e-6)
    assert metrics.interval_coverage(y, pred, level=0.9) == pytest.approx(0.9, abs=0.04)


def test_pit_of_samples_hand():
    np.testing.assert_allclose(metrics.pit_values([0.5, 5.0], [[0.0, 1.0], [1.0, 2.0]]), [0.5, 1.0])


def test_quantile_curve_hand():
    curve = metrics.quantile_calibration_curve([0.5], [[0.0], [1.0]], n_levels=5)
    np.testing.assert_allclose(curve.expected, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.observed, [0, 0, 1, 1, 1])


def test_miscalibration_area_against_fine_grid():
    rng = np.random.default_rng(10)
    samples = rng.normal(size=(50, 300))
    y = rng.normal(scale=2.0, size=300)  # overconfident predictions
    u = np.sort(metrics.pit_values(y, samples))
    grid = np.linspace(0, 1, 200001)
    g = np.searchsorted(u, grid, side="right") / u.size
    expected = np.trapezoid(np.abs(g - grid), grid)
    assert metrics.miscalibration_area(y, samples) == pytest.approx(expected, abs=1e-4)
    assert metrics.miscalibration_area(y, samples) > 0.1


def test_mixture_calibration_is_not_a_gaussian_fit():
    # targets drawn from a bimodal mixture: the mixture is calibrated, its moment-matched Gaussian is not
    rng = np.random.default_rng(11)
    n, t = 4000, 2
    means = np.stack([np.full(n, -3.0), np.full(n, 3.0)])
    variances = np.full((t, n), 0.25)
    comp = rng.integers(0, t, size=n)
    y = means[comp, np.arange(n)] + 0.5 * rng.normal(size=n)
    mixture = RegressionPrediction.from_samples(means, variances)
    gaussian = RegressionPrediction.from_samples(means, variances, keep_samples=False)
    assert metrics.miscalibration_area(y, mixture) < 0.02
    assert metrics.miscalibration_area(y, gaussian) > 0.05
    curve = metrics.quantile_calibration_curve(y, mixture)
    np.testing.assert_allclose(curve.observed, curve.expected, atol=0.03)


def test_calibrated_gaussian_has_small_area(gaussian_data):
    y, mean, std = gaussian_data
    pred = RegressionPrediction.from_samples(mean[None], (std**2)[None])
    assert metrics.miscalibration_area(y, pred) < 0.03
    # predicting half the spread is visibly miscalibrated
    narrow = RegressionPrediction.from_samples(mean[None], (std**2 / 4)[None])
    assert metrics.miscalibration_area(y, narrow) > 0.08


def test_prediction_as_mean_gives_moment_matched_nll():
    rng = np.random.default_rng(12)
    pred = RegressionPrediction.from_samples(rng.normal(size=(4, 20)), rng.uniform(0.5, 1, size=(4, 20)))
    y = rng.normal(size=20)
    assert metrics.gaussian_nll(y, pred) == pytest.approx(
        metrics.gaussian_nll(y, pred.mean[:, 0], pred.variance[:, 0]))
    assert metrics.rmse(y, pred) == metrics.rmse(y, pred.mean[:, 0])


def test_multi_output():
    rng = np.random.default_rng(13)
    samples = rng.normal(size=(10, 20, 3))
    y = rng.normal(size=(20, 3))
    per_dim = [metrics.crps_samples(y[:, d], samples[:, :, d]) for d in range(3)]
    assert metrics.crps_samples(y, samples) == pytest.approx(np.mean(per_dim))


# --- bad input -----------------------------------------------------------------------------------

def test_error_variance_not_positive():
    with pytest.raises(ValueError, match=r"`variance`: expected variances > 0.*smallest is 0"):
        metrics.gaussian_nll([0.0, 1.0], [0.0, 0.0], [1.0, 0.0])


def test_error_std_negative():
    with pytest.raises(ValueError, match=r"`std`: expected standard deviations >= 0"):
        metrics.crps_gaussian([0.0], [0.0], [-1.0])


def test_error_missing_spread():
    with pytest.raises(TypeError, match=r"`variance`: expected an array of variances \(or a prediction"):
        metrics.gaussian_nll([0.0], [0.0])


def test_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"same number of rows.*`y_true` has 2, `mean` has 3"):
        metrics.rmse([0.0, 1.0], [0.0, 1.0, 2.0])


def test_error_samples_shape():
    with pytest.raises(ValueError, match=r"`samples`: expected samples of shape \(T, 3\)"):
        metrics.crps_samples([0.0, 1.0, 2.0], np.zeros((5, 4)))


def test_error_interval_order():
    with pytest.raises(ValueError, match=r"`upper`: expected upper bounds >= the lower bounds.*1 interval"):
        metrics.interval_coverage([0.0, 0.0], [0.0, 1.0], [1.0, 0.5])


def test_error_interval_missing_upper():
    with pytest.raises(TypeError, match=r"`upper`: expected an array of upper bounds"):
        metrics.mean_interval_width([0.0])


def test_error_n_levels():
    with pytest.raises(ValueError, match=r"`n_levels`: expected an integer >= 2, received 1"):
        metrics.quantile_calibration_curve([0.0], [[0.0]], n_levels=1)


def test_error_level():
    pred = RegressionPrediction.from_samples(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`level`: expected a number in \(0.0, 1.0\), received 1.5"):
        metrics.interval_coverage(np.zeros(3), pred, level=1.5)


def test_error_empty_targets():
    with pytest.raises(ValueError, match=r"`y_true`: expected a non-empty array"):
        metrics.rmse([], [])


# --- properties ----------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 30), st.booleans(), st.integers(0, 2**32 - 1))
def test_regression_properties(t, n, gaussian_head, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(t, n)) * rng.uniform(0.1, 3)
    variances = rng.uniform(0.01, 2.0, size=(t, n)) if gaussian_head else None
    y = rng.normal(size=n) * 2
    pred = RegressionPrediction.from_samples(means, variances)
    area = metrics.miscalibration_area(y, pred)
    crps = metrics.crps_samples(y, pred)
    assert 0.0 <= area <= 0.5
    assert crps >= -1e-12
    # CRPS = E|X - y| - E|X - X'| / 2 <= E|X - y| <= E|mu_t - y| + E[sigma_t |Z|]
    spread = np.sqrt(variances) * np.sqrt(2 / np.pi) if gaussian_head else np.zeros_like(means)
    assert crps <= np.mean(np.abs(means - y).mean(0) + spread.mean(0)) + 1e-9
    # pass order does not matter
    order = rng.permutation(t)
    shuffled = RegressionPrediction.from_samples(means[order], None if variances is None else variances[order])
    assert metrics.crps_samples(y, shuffled) == pytest.approx(crps, rel=1e-10, abs=1e-12)
    assert metrics.miscalibration_area(y, shuffled) == pytest.approx(area, abs=1e-12)
    # row order does not matter
    rows = rng.permutation(n)
    moved = RegressionPrediction.from_samples(means[:, rows], None if variances is None else variances[:, rows])
    assert metrics.crps_samples(y[rows], moved) == pytest.approx(crps, rel=1e-10, abs=1e-12)
    assert metrics.miscalibration_area(y[rows], moved) == pytest.approx(area, abs=1e-12)
    assert metrics.rmse(y[rows], moved) == pytest.approx(metrics.rmse(y, pred), rel=1e-12)


def test_error_same_rows_other_shape():
    with pytest.raises(ValueError, match=r"`mean`: expected an array of the shape of `y_true` \(4, 2\)"):
        metrics.rmse(np.zeros((4, 2)), np.zeros((4, 3)))


def test_error_upper_with_prediction():
    pred = RegressionPrediction.from_samples(np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"`upper`: expected None when `lower` is a prediction"):
        metrics.interval_coverage(np.zeros(3), pred, np.ones(3))

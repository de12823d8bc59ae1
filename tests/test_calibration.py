import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from mcdrop import metrics
from mcdrop.calibration import TemperatureScaling, VarianceScaling, VectorScaling
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction


def softmax(z):
    return np.exp(special.log_softmax(z, axis=-1))


def draw_labels(rng, probs):
    return (rng.random((len(probs), 1)) > probs.cumsum(1)).sum(1).clip(0, probs.shape[1] - 1)


# --- temperature scaling -------------------------------------------------------------------------

@pytest.mark.parametrize("true_t, logit_scale", [(0.5, 3.0), (2.0, 3.0), (3.0, 3.0)])  # 400: see test_calibration_degenerate
def test_temperature_recovered_single_pass(true_t, logit_scale):
    rng = np.random.default_rng(int(true_t * 10))
    logits = rng.normal(size=(20000, 5)) * logit_scale
    y = draw_labels(rng, softmax(logits / true_t))
    fitted = TemperatureScaling().fit(logits, y).temperature_
    assert abs(fitted / true_t - 1) < 0.05


def test_temperature_recovered_mc_passes():
    rng = np.random.default_rng(1)
    true_t = 2.5
    base = rng.normal(size=(12000, 4)) * 3.0
    passes = base[None] + rng.normal(size=(8, 12000, 4))  # (T, N, C) per-pass logits
    y = draw_labels(rng, softmax(passes / true_t).mean(0))
    assert abs(TemperatureScaling().fit(passes, y).temperature_ / true_t - 1) < 0.05
    # the same passes given as probabilities, and as a prediction with samples, give the same fit
    probs = softmax(passes)
    pred = ClassificationPrediction.from_samples(probs)
    t_probs = TemperatureScaling().fit(probs, y).temperature_
    t_pred = TemperatureScaling().fit(pred, y).temperature_
    assert t_probs == pytest.approx(t_pred, rel=1e-9)
    assert abs(t_pred / true_t - 1) < 0.05
    # fitting on the averaged probabilities instead would be a different (wrong) model of the passes
    t_mean = TemperatureScaling().fit(probs.mean(0), y).temperature_
    assert abs(t_mean / true_t - 1) > 0.05


def test_temperature_held_out_nll_improves():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6000, 3)) * 4.0
    y = draw_labels(rng, softmax(logits / 2.0))
    ts = TemperatureScaling().fit(logits[:3000], y[:3000])
    before = metrics.negative_log_likelihood(y[3000:], softmax(logits[3000:]))
    after = metrics.negative_log_likelihood(y[3000:], ts.transform(logits[3000:]))
    assert after < before - 0.05
    assert metrics.expected_calibration_error(y[3000:], ts.transform(logits[3000:])) < \
        metrics.expected_calibration_error(y[3000:], softmax(logits[3000:]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(2, 60), st.integers(2, 5), st.floats(0.0, 5.0), st.integers(0, 2**32 - 1))
def test_nll_never_rises_on_fitting_data(t, n, c, spread, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, n, c)) * spread
    y = rng.integers(0, c, size=n)
    identity = metrics.negative_log_likelihood(y, softmax(logits).mean(0))
    for scaler in (TemperatureScaling(), VectorScaling()):
        calibrated = scaler.fit_transform(logits, y)
        assert metrics.negative_log_likelihood(y, calibrated) <= identity + 1e-9
        assert scaler.nll_after_ <= scaler.nll_before_


def test_temperature_transform_formula_and_argmax():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=50)
    ts = TemperatureScaling()
    ts.temperature_, ts.n_classes_, ts.fitted_ = 2.0, 4, True
    expected = softmax(np.log(probs) / 2.0)
    np.testing.assert_allclose(ts.transform(probs), expected, rtol=1e-12)
    np.testing.assert_array_equal(ts.transform(probs).argmax(1), probs.argmax(1))
    # explicit logits: an (N, C) array of probabilities read as logits differs
    assert not np.allclose(ts.transform(probs, inputs="logits"), expected)


def test_transform_prediction_rebuilds_statistics():
    rng = np.random.default_rng(4)
    passes = rng.dirichlet(np.full(3, 0.5), size=(5, 40))
    y = rng.integers(0, 3, size=40)
    pred = ClassificationPrediction.from_samples(passes)
    ts = TemperatureScaling().fit(pred, y)
    new = ts.transform_prediction(pred)
    np.testing.assert_allclose(new.mean, ts.transform(pred), rtol=1e-12)
    assert new.num_samples == 5
    assert new.samples.shape == passes.shape


# --- vector scaling ------------------------------------------------------------------------------

def test_vector_scaling_recovers_scale_and_bias():
    rng = np.random.default_rng(5)
    w, b = np.array([0.5, 1.0, 2.0]), np.array([0.5, 0.0, -0.5])
    logits = rng.normal(size=(40000, 3)) * 2.0
    y = draw_labels(rng, softmax(logits * w + b))
    vs = VectorScaling().fit(logits, y)
    np.testing.assert_allclose(vs.scale_, w, atol=0.08)
    np.testing.assert_allclose(vs.bias_ - vs.bias_.mean(), b - b.mean(), atol=0.08)  # b is defined up to a shift
    assert vs.nll_after_ <= TemperatureScaling().fit(logits, y).nll_after_ + 1e-9


# --- variance scaling ----------------------------------------------------------------------------

def test_variance_scaling_recovers_factor_gaussian():
    rng = np.random.default_rng(6)
    n, k = 20000, 1.7
    mean, std = rng.normal(size=n), rng.uniform(0.2, 2.0, size=n)
    y = mean + k * std * rng.normal(size=n)
    vs = VarianceScaling().fit((mean, std), y)
    assert abs(vs.scale_ / k - 1) < 0.05
    # the Gaussian optimum in closed form
    assert vs.scale_ == pytest.approx(np.sqrt(np.mean(((y - mean) / std) ** 2)), rel=1e-5)
    new_mean, new_std = vs.transform((mean, std))
    np.testing.assert_array_equal(new_mean, mean)
    np.testing.assert_allclose(new_std, vs.scale_ * std)


def test_variance_scaling_recovers_factor_mixture():
    rng = np.random.default_rng(7)
    t, n, k = 6, 20000, 0.6
    means = rng.normal(size=(1, n)) + rng.normal(size=(t, n)) * 1.5
    variances = rng.uniform(0.1, 0.5, size=(t, n))
    center = means.mean(0)
    pick = rng.integers(0, t, size=n)
    cols = np.arange(n)
    y = center + k * (means[pick, cols] - center) + k * np.sqrt(variances[pick, cols]) * rng.normal(size=n)
    pred = RegressionPrediction.from_samples(means, variances)
    vs = VarianceScaling().fit(pred, y)
    assert abs(vs.scale_ / k - 1) < 0.05
    scaled = vs.transform(pred)
    np.testing.assert_allclose(scaled.mean, pred.mean, rtol=1e-12)
    np.testing.assert_allclose(scaled.variance, pred.variance * vs.scale_**2, rtol=1e-10)
    # the whole predictive CDF is the original one stretched about the mean
    q = rng.normal(size=(n, 1))
    np.testing.assert_allclose(scaled.cdf(q), pred.cdf(pred.mean + (q - pred.mean) / vs.scale_), atol=1e-12)
    assert metrics.miscalibration_area(y, scaled) < metrics.miscalibration_area(y, pred)


def test_variance_scaling_plain_head_uses_moment_matched_gaussian():
    rng = np.random.default_rng(8)
    samples = rng.normal(size=(10, 3000))
    y = samples.mean(0) + 2.0 * samples.std(0) * rng.normal(size=3000)
    pred = RegressionPrediction.from_samples(samples)
    vs = VarianceScaling().fit(pred, y)
    z = (y - pred.mean[:, 0]) / pred.std[:, 0]
    assert vs.scale_ == pytest.approx(np.sqrt(np.mean(z**2)), rel=1e-5)
    assert vs.transform(pred).samples.std(0)[:, 0] == pytest.approx(vs.scale_ * samples.std(0), rel=1e-10)


def test_variance_scaling_never_raises_nll():
    rng = np.random.default_rng(9)
    mean, std = rng.normal(size=200), np.ones(200)
    y = mean + rng.normal(size=200)  # already calibrated
    vs = VarianceScaling().fit((mean, std), y)
    new_mean, new_std = vs.transform((mean, std))
    assert metrics.gaussian_nll(y, new_mean, new_std**2) <= metrics.gaussian_nll(y, mean, std**2) + 1e-12


# --- bad input -----------------------------------------------------------------------------------

def test_error_not_fitted():
    with pytest.raises(RuntimeError, match="TemperatureScaling is not fitted yet"):
        TemperatureScaling().transform(np.zeros((2, 3)))


def test_error_not_fitted_variance():
    with pytest.raises(RuntimeError, match="VarianceScaling is not fitted yet"):
        VarianceScaling().transform((np.zeros(2), np.ones(2)))


def test_error_inputs_choice():
    with pytest.raises(ValueError, match=r"`inputs`: expected one of 'auto', 'logits', 'probs', received 'log'"):
        TemperatureScaling().fit(np.zeros((2, 3)), [0, 1], inputs="log")


def test_error_prediction_without_samples():
    pred = ClassificationPrediction.from_samples(np.full((2, 3, 2), 0.5), keep_samples=False)
    with pytest.raises(ValueError, match=r"`x`: expected a prediction with per-pass samples"):
        TemperatureScaling().fit(pred, [0, 1, 0])


def test_error_labels_out_of_range():
    with pytest.raises(ValueError, match=r"`y_true`: expected labels >= 0 and < 3"):
        TemperatureScaling().fit(np.zeros((2, 3)), [0, 3])


def test_error_length_mismatch():
    with pytest.raises(ValueError, match=r"same number of rows.*`y_true` has 3, `x` has 2"):
        VectorScaling().fit(np.zeros((2, 3)), [0, 1, 2])


def test_error_probs_declared_but_invalid():
    with pytest.raises(ValueError, match=r"`x`: expected rows that sum to one"):
        TemperatureScaling().fit(np.full((2, 3), 0.5), [0, 1], inputs="probs")


def test_error_class_count_in_transform():
    ts = TemperatureScaling().fit(np.eye(3)[[0, 1, 2, 0]] * 2.0, [0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"`x`: expected 3 classes on the last axis, as in `fit`"):
        ts.transform(np.zeros((2, 4)))


def test_error_variance_scaling_type():
    with pytest.raises(TypeError, match=r"`prediction`: expected a RegressionPrediction or a \(mean, std\) tuple"):
        VarianceScaling().fit(np.zeros(3), np.zeros(3))


def test_error_variance_scaling_target_shape():
    with pytest.raises(ValueError, match=r"same number of rows.*`y_true` has 4, `prediction` has 3"):
        VarianceScaling().fit((np.zeros(3), np.ones(3)), np.zeros(4))


def test_error_negative_std():
    with pytest.raises(ValueError, match=r"`std`: expected standard deviations >= 0"):
        VarianceScaling().fit((np.zeros(2), np.array([1.0, -1.0])), np.zeros(2))


def test_error_regression_prediction_to_temperature():
    pred = RegressionPrediction.from_samples(np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"`x`: expected classification outputs"):
        TemperatureScaling().fit(pred, [0, 1, 0])


def test_error_one_class_logits():
    with pytest.raises(ValueError, match=r"`x`: expected at least two classes on the last axis"):
        TemperatureScaling().fit(np.zeros((3, 1)), [0, 0, 0])


def test_error_std_shape():
    with pytest.raises(ValueError, match=r"`std`: expected an array of the mean's shape \(3,\)"):
        VarianceScaling().fit((np.zeros(3), np.ones(4)), np.zeros(3))


def test_error_target_shape_variance_scaling():
    with pytest.raises(ValueError, match=r"`y_true`: expected targets of shape \(3, 1\)"):
        VarianceScaling().fit((np.zeros(3), np.ones(3)), np.zeros((3, 2)))

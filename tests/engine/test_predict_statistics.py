"""Predictions from the engine against statistics computed independently from its raw samples
(scipy, numpy, tensorflow-probability), task/output detection, logits, sigmoid and Gaussian heads."""

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from scipy import special, stats

import mcdrop
from tests.engine.conftest import L, mlp

X = np.random.default_rng(0).standard_normal((25, 8)).astype("float32")


def test_classification_statistics_match_independent_computation():
    mc = mcdrop.MCDropout(mlp(), num_samples=30, seed=0, verbose=0)
    samples = mc.sample(X).astype(np.float64)  # (T, N, C) softmax outputs
    pred = mc.predict(X, return_samples=True)
    assert pred.task == "classification" and pred.outputs == "probs"
    mean = samples.mean(axis=0)
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(pred.variance, samples.var(axis=0), atol=1e-12)
    # scipy renormalises each row; float32 softmax rows sum to 1 within ~1e-7, hence rtol 1e-6
    np.testing.assert_allclose(pred.entropy, stats.entropy(mean, axis=1), rtol=1e-6)
    expected_entropy = stats.entropy(samples, axis=2).mean(axis=0)
    np.testing.assert_allclose(pred.expected_entropy, expected_entropy, rtol=1e-6)
    np.testing.assert_allclose(pred.mutual_information, stats.entropy(mean, axis=1) - expected_entropy,
                               atol=1e-6)
    winners = samples.argmax(axis=2)
    mode_count = np.array([np.bincount(winners[:, i], minlength=3).max() for i in range(25)])
    np.testing.assert_allclose(pred.variation_ratio, 1 - mode_count / 30)
    np.testing.assert_array_equal(pred.predicted_class, mean.argmax(axis=1))
    np.testing.assert_allclose(pred.confidence, mean.max(axis=1))
    np.testing.assert_allclose(pred.standard_error, samples.std(axis=0, ddof=1) / np.sqrt(30), rtol=1e-8)
    np.testing.assert_array_equal(pred.samples, mc.sample(X))
    dist = pred.distribution
    np.testing.assert_allclose(dist.probs_parameter().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(dist.entropy().numpy(), pred.entropy, rtol=1e-8)


def test_samples_not_kept_by_default_for_classification():
    assert mcdrop.MCDropout(mlp(), num_samples=5, seed=0, verbose=0).predict(X).samples is None


def test_logits_are_softmaxed_per_pass_before_averaging():
    model = mlp(activation=None)
    mc = mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0, task="classification", outputs="logits")
    logits = mc.sample(X).astype(np.float64)
    pred = mc.predict(X)
    assert pred.outputs == "logits"
    np.testing.assert_allclose(pred.mean, special.softmax(logits, axis=2).mean(axis=0), rtol=1e-10)
    # averaging logits first would be a different (wrong) answer
    assert not np.allclose(pred.mean, special.softmax(logits.mean(axis=0), axis=1), atol=1e-4)


def test_linear_output_is_detected_as_regression():
    pred = mcdrop.MCDropout(mlp(n_out=2, activation=None), num_samples=5, seed=0, verbose=0).predict(X)
    assert isinstance(pred, mcdrop.RegressionPrediction)
    assert pred.samples.shape == (5, 25, 2)  # regression keeps the mixture's components by default


def test_single_sigmoid_unit_is_a_two_class_problem():
    mc = mcdrop.MCDropout(mlp(n_out=1, activation="sigmoid"), num_samples=15, seed=0, verbose=0)
    p = mc.sample(X)[..., 0].astype(np.float64)
    pred = mc.predict(X)
    assert pred.mean.shape == (25, 2)
    np.testing.assert_allclose(pred.mean[:, 1], p.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(pred.mean[:, 0], 1 - p.mean(axis=0), rtol=1e-10)
    expected_entropy = stats.entropy(np.stack([1 - p, p], axis=-1), axis=-1).mean(axis=0)
    np.testing.assert_allclose(pred.expected_entropy, expected_entropy, rtol=1e-6)


def test_single_logit_unit_gets_a_sigmoid_per_pass():
    mc = mcdrop.MCDropout(mlp(n_out=1, activation=None), num_samples=15, seed=0, verbose=0,
                          task="classification", outputs="logits")
    z = mc.sample(X)[..., 0].astype(np.float64)
    np.testing.assert_allclose(mc.predict(X).mean[:, 1], special.expit(z).mean(axis=0), rtol=1e-10)


def test_multi_unit_sigmoid_is_refused_as_classification():
    mc = mcdrop.MCDropout(mlp(n_out=3, activation="sigmoid"), num_samples=3, seed=0, verbose=0)
    with pytest.raises(ValueError, match="multi-unit sigmoid"):
        mc.predict(X)


def _gaussian_head_model(d=1):
    inp = keras.Input((8,))
    h = L.Dropout(0.3)(L.Dense(16, activation="relu")(inp))
    return keras.Model(inp, L.Dense(2 * d)(h))


@pytest.mark.parametrize("param", ["log_variance", "std", "softplus_std"])
def test_heteroscedastic_decomposition(param):
    mc = mcdrop.MCDropout(_gaussian_head_model(), num_samples=40, seed=0, verbose=0, heteroscedastic=param)
    raw = mc.sample(X).astype(np.float64)
    mu, s = raw[..., :1], raw[..., 1:]
    var = {"log_variance": np.exp(s), "std": s**2, "softplus_std": np.log1p(np.exp(s)) ** 2}[param]
    pred = mc.predict(X)
    assert pred.heteroscedastic
    np.testing.assert_allclose(pred.mean, mu.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(pred.aleatoric_variance, var.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(pred.epistemic_variance, mu.var(axis=0), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(pred.variance, var.mean(axis=0) + mu.var(axis=0), rtol=1e-8)
    # the interval comes from the mixture of the T per-pass Normals: check with TFP's own mixture
    lower, upper = pred.interval(0.9)
    mixture = tfp.distributions.MixtureSameFamily(
        tfp.distributions.Categorical(logits=np.zeros((25, 1, 40))),
        tfp.distributions.Normal(np.moveaxis(mu, 0, -1), np.sqrt(np.moveaxis(var, 0, -1))))
    np.testing.assert_allclose(mixture.cdf(lower).numpy(), 0.05, atol=1e-6)
    np.testing.assert_allclose(mixture.cdf(upper).numpy(), 0.95, atol=1e-6)
    np.testing.assert_allclose(pred.distribution.log_prob(pred.mean).numpy(),
                               mixture.log_prob(pred.mean).numpy(), rtol=1e-8)


def test_homoscedastic_regression_mixture_is_the_empirical_distribution_of_the_passes():
    mc = mcdrop.MCDropout(mlp(n_out=1, activation=None), num_samples=40, seed=0, verbose=0)
    pred = mc.predict(X)
    s = mc.sample(X).astype(np.float64)
    np.testing.assert_allclose(pred.std, s.std(axis=0), rtol=1e-8)
    np.testing.assert_array_equal(pred.aleatoric_variance, 0.0)
    lower, upper = pred.interval(0.8)
    # the generalised inverse of the empirical CDF: at least 10% of passes at or below `lower`
    frac_low = (s <= lower[None]).mean(axis=0)
    assert np.all(frac_low >= 0.1) and np.all((s < lower[None]).mean(axis=0) < 0.1)
    np.testing.assert_allclose(pred.distribution.cdf(upper).numpy(), (s <= upper[None]).mean(axis=0))
    g_lower, g_upper = pred.interval(0.8, method="gaussian")
    np.testing.assert_allclose(g_upper - pred.mean, stats.norm.ppf(0.9) * pred.std, rtol=1e-10)
    assert np.allclose(g_lower + g_upper, 2 * pred.mean)


def test_regression_without_samples_uses_a_gaussian_and_refuses_mixture_intervals():
    pred = mcdrop.MCDropout(mlp(n_out=1, activation=None), num_samples=10, seed=0, verbose=0).predict(
        X, return_samples=False)
    assert pred.samples is None and not pred.has_mixture
    lower, upper = pred.interval(0.95)
    np.testing.assert_allclose(upper - pred.mean, 1.959963984540054 * pred.std, rtol=1e-9)
    with pytest.raises(ValueError, match="return_samples=True"):
        pred.interval(0.95, method="mixture")

"""Prediction objects and accumulators: hand-worked cases, properties, and the helpers downstream code uses."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mcdrop.accumulators import ClassificationAccumulator, RegressionAccumulator
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction, concatenate

# two passes, two inputs, two classes, worked by hand
PASSES = np.array([
    [[0.9, 0.1], [0.5, 0.5]],
    [[0.1, 0.9], [0.5, 0.5]],
])


def h(*p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_hand_worked_classification():
    pred = ClassificationPrediction.from_samples(PASSES)
    np.testing.assert_allclose(pred.mean, [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(pred.variance, [[0.16, 0.16], [0.0, 0.0]], atol=1e-15)
    np.testing.assert_allclose(pred.entropy, [math.log(2), math.log(2)])
    np.testing.assert_allclose(pred.expected_entropy, [h(0.9, 0.1), math.log(2)])
    np.testing.assert_allclose(pred.mutual_information, [math.log(2) - h(0.9, 0.1), 0.0], atol=1e-15)
    np.testing.assert_allclose(pred.variation_ratio, [0.5, 0.0])  # argmax ties go to class 0
    np.testing.assert_allclose(pred.standard_error, [[0.4, 0.4], [0.0, 0.0]], atol=1e-15)  # sqrt(0.32/2)
    assert pred.num_classes == 2 and len(pred) == 2 and pred.task == "classification"


def test_hand_worked_regression_with_gaussian_head():
    means = np.array([[[1.0]], [[3.0]]])  # (T=2, N=1, D=1)
    variances = np.array([[[1.0]], [[1.0]]])
    pred = RegressionPrediction.from_samples(means, variances)
    assert pred.mean.item() == 2.0 and pred.epistemic_variance.item() == 1.0
    assert pred.aleatoric_variance.item() == 1.0 and pred.variance.item() == 2.0
    # the mixture 0.5 N(1, 1) + 0.5 N(3, 1) is symmetric about 2: its median is 2
    assert abs(pred.quantile(0.5).item() - 2.0) < 1e-9
    assert abs(pred.cdf(np.array([[2.0]])).item() - 0.5) < 1e-12
    lower, upper = pred.interval(0.5)
    assert abs(lower.item() + upper.item() - 4.0) < 1e-9


def test_standard_error_undefined_for_one_pass():
    pred = ClassificationPrediction.from_samples(PASSES[:1])
    assert np.all(np.isnan(pred.standard_error))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 5)),
              elements=st.floats(1e-3, 1.0)))
def test_decomposition_bounds_and_pass_order_invariance(raw):
    probs = raw / raw.sum(axis=-1, keepdims=True)
    pred = ClassificationPrediction.from_samples(probs)
    c = probs.shape[-1]
    assert np.all(pred.mutual_information >= 0)
    assert np.all(pred.mutual_information <= pred.entropy + 1e-12)
    assert np.all(pred.entropy <= math.log(c) + 1e-12)
    shuffled = ClassificationPrediction.from_samples(probs[::-1])
    np.testing.assert_allclose(shuffled.mean, pred.mean, rtol=1e-12)
    np.testing.assert_allclose(shuffled.mutual_information, pred.mutual_information, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4), st.integers(2, 4)),
              elements=st.floats(1e-3, 1.0)), st.integers(1, 12))
def test_accumulation_is_bit_identical_whatever_the_pass_chunks(raw, chunk):
    probs = raw / raw.sum(axis=-1, keepdims=True)
    whole = ClassificationAccumulator()
    whole.update(probs)
    parts = ClassificationAccumulator()
    for start in range(0, len(probs), chunk):
        parts.update(probs[start:start + chunk])
    a, b = whole.result(), parts.result()
    for name in ("mean", "variance", "expected_entropy", "votes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_regression_accumulation_chunks_bit_identical():
    rng = np.random.default_rng(0)
    mu, var = rng.standard_normal((9, 5, 2)), rng.random((9, 5, 2))
    whole = RegressionAccumulator(heteroscedastic=True)
    whole.update(mu, var)
    parts = RegressionAccumulator(heteroscedastic=True)
    for s in (slice(0, 4), slice(4, 5), slice(5, 9)):
        parts.update(mu[s], var[s])
    for name in ("mean", "epistemic_variance", "aleatoric_variance"):
        np.testing.assert_array_equal(getattr(whole.result(), name), getattr(parts.result(), name))


def test_subset_and_concatenate_are_inverse():
    rng = np.random.default_rng(1)
    raw = rng.random((4, 10, 3))
    pred = ClassificationPrediction.from_samples(raw / raw.sum(-1, keepdims=True))
    joined = concatenate([pred.subset(slice(0, 3)), pred.subset(slice(3, 10))])
    for name in ("mean", "variance", "expected_entropy", "votes", "samples"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(pred, name))
    reg = RegressionPrediction.from_samples(rng.standard_normal((4, 10)), rng.random((4, 10)))
    joined = concatenate([reg.subset(np.arange(5)), reg.subset(np.arange(5, 10))])
    np.testing.assert_array_equal(joined.sample_variances, reg.sample_variances)


def test_to_dict_has_every_per_row_statistic():
    pred = ClassificationPrediction.from_samples(PASSES)
    d = pred.to_dict()
    assert {"mean", "variance", "entropy", "mutual_information", "expected_entropy", "samples"} <= set(d)
    assert all(len(v) == 2 for k, v in d.items() if k != "samples")


def test_errors_name_argument_and_value():
    with pytest.raises(ValueError, match=r"argument `samples`: expected rows that sum to one"):
        ClassificationPrediction.from_samples(np.full((2, 3, 2), 0.7))
    with pytest.raises(ValueError, match=r"argument `samples`: expected an array of rank 3"):
        ClassificationPrediction.from_samples(np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"argument `mask`: expected one of 'consistent', 'per_example'"):
        ClassificationPrediction.from_samples(PASSES, mask="sometimes")
    reg = RegressionPrediction.from_samples(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"argument `level`: expected a number in \(0.0, 1.0\), received 1.5"):
        reg.interval(1.5)
    with pytest.raises(ValueError, match=r"argument `y`: expected targets of shape \(4, 1\)"):
        reg.cdf(np.zeros(5))
    with pytest.raises(ValueError, match=r"argument `predictions`: expected predictions of one task"):
        concatenate([reg, ClassificationPrediction.from_samples(PASSES)])
    with pytest.raises(ValueError, match=r"argument `variances`: expected non-negative variances"):
        RegressionPrediction.from_samples(np.zeros((2, 3)), -np.ones((2, 3)))


# --------------------------------------------------------------------------- behaviour on the types (issue 13 item 6)


def test_uncertainty_reads_each_measure_and_defaults_to_the_first():
    from scipy.stats import entropy as scipy_entropy

    p = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.45, 0.55], [0.9, 0.1]], [[0.6, 0.4], [0.3, 0.7]]])  # (3, 2, 2)
    clf = ClassificationPrediction.from_samples(p)
    total = scipy_entropy(p.mean(axis=0), axis=1)
    expected = scipy_entropy(p, axis=2).mean(axis=0)
    np.testing.assert_allclose(clf.uncertainty(), total, rtol=1e-12)
    np.testing.assert_allclose(clf.uncertainty("mutual_information"), total - expected, rtol=1e-12)
    np.testing.assert_allclose(clf.uncertainty("expected_entropy"), expected, rtol=1e-12)
    np.testing.assert_allclose(clf.uncertainty("variation_ratio"), [1 - 2 / 3, 1 - 2 / 3])  # votes 0,1,0 and 1,0,1
    samples = np.array([[[1.0, 0.0]], [[3.0, 4.0]]])  # (T=2, N=1, D=2)
    reg = RegressionPrediction.from_samples(samples, np.full_like(samples, 0.5))
    np.testing.assert_allclose(reg.uncertainty(), [(1.0 + 0.5 + 4.0 + 0.5) / 2])  # mean over D of the total
    np.testing.assert_allclose(reg.uncertainty("epistemic_variance"), [(1.0 + 4.0) / 2])
    np.testing.assert_allclose(reg.uncertainty("std"), [(np.sqrt(1.5) + np.sqrt(4.5)) / 2])
    assert clf.uncertainty_measures[0] == "entropy" and reg.uncertainty_measures[0] == "variance"


@pytest.mark.parametrize("prediction, bad", [
    (ClassificationPrediction.from_samples(np.full((2, 1, 2), 0.5)), "variance"),
    (RegressionPrediction.from_samples(np.zeros((2, 1))), "entropy"),
])
def test_uncertainty_refuses_the_other_tasks_measure(prediction, bad):
    with pytest.raises(ValueError, match=rf"argument `measure`: expected one of .*received '{bad}'"):
        prediction.uncertainty(bad)


def test_summary_holds_the_headline_numbers():
    p = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5], [0.4, 0.6]]])
    s = ClassificationPrediction.from_samples(p).summary()
    assert s["task"] == "classification" and (s["rows"], s["num_samples"], s["classes"]) == (2, 2, 2)
    assert s["mean_confidence"] == pytest.approx((0.6 + 0.7) / 2)
    assert s["max_standard_error"] == pytest.approx(0.1)  # std 0.1 over 2 passes: sqrt(0.01 / (2 - 1))
    r = RegressionPrediction.from_samples(np.array([[1.0, 4.0], [3.0, 4.0]])).summary()
    assert r == {"task": "regression", "rows": 2, "num_samples": 2, "targets": 1, "mean_std": 0.5,
                 "mean_epistemic_variance": 0.5, "mean_aleatoric_variance": 0.0}
    assert all(type(v) in (str, int, float) for v in (*s.values(), *r.values()))


def test_prediction_types_by_task():
    from mcdrop.heads import TASKS
    from mcdrop.predictive import PREDICTION_TYPES

    assert PREDICTION_TYPES == {"classification": ClassificationPrediction, "regression": RegressionPrediction}
    assert tuple(PREDICTION_TYPES) == TASKS


def test_without_samples_and_the_default_for_keeping_them():
    clf = ClassificationPrediction.from_samples(np.array([[[0.9, 0.1]], [[0.2, 0.8]]]))
    bare = clf.without_samples()
    assert bare.samples is None and clf.samples is not None
    np.testing.assert_allclose(bare.mean, [[0.55, 0.45]], rtol=1e-12)
    assert bare.mutual_information == pytest.approx(clf.mutual_information)
    assert bare.without_samples() is bare
    reg = RegressionPrediction.from_samples(np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]]))
    plain = reg.without_samples()
    assert plain.samples is None and plain.sample_variances is None and not plain.has_mixture
    assert plain.variance[0, 0] == pytest.approx(2.0)  # epistemic 1 + aleatoric 1, kept without the passes
    assert (ClassificationPrediction.keeps_samples_by_default, RegressionPrediction.keeps_samples_by_default) \
        == (False, True)

"""The bottom layer, mcdrop._stats: each function against an independent computation (scipy, numpy,
Python's own sequential float sums, hand-worked cases), and the layers above against it bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcdrop import _stats
from mcdrop import acquisition as acq
from mcdrop.accumulators import ClassificationAccumulator, ClassificationStatistics, RegressionStatistics
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction


def _probs(seed: int, shape=(9, 13, 4)) -> np.ndarray:
    raw = np.random.default_rng(seed).random(shape) ** 3
    return raw / raw.sum(axis=-1, keepdims=True)


def test_entropy_matches_scipy_and_takes_zero_log_zero_as_zero():
    p = _probs(0)
    np.testing.assert_allclose(_stats.entropy(p), stats.entropy(p, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(_stats.entropy(np.moveaxis(p, -1, 0), axis=0), stats.entropy(p, axis=-1),
                               rtol=1e-12)
    assert _stats.entropy(np.array([1.0, 0.0])) == 0.0
    assert _stats.entropy(np.array([0.5, 0.5])) == pytest.approx(math.log(2), abs=1e-15)


def test_add_in_order_is_python_sequential_float_addition():
    chunk = np.random.default_rng(1).standard_normal((17, 3)) * 10.0 ** np.arange(-8, 9)[:, None]
    by_hand = [0.0, 0.0, 0.0]
    for row in chunk.tolist():
        by_hand = [s + x for s, x in zip(by_hand, row)]
    np.testing.assert_array_equal(_stats.add_in_order(None, chunk), by_hand)
    running = _stats.add_in_order(None, chunk[:5])
    np.testing.assert_array_equal(_stats.add_in_order(running, chunk[5:]), by_hand)


def test_moments_match_numpy_and_survive_a_large_offset():
    x = np.random.default_rng(2).standard_normal((50, 7, 2))
    mean, var = _stats.moments(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-10)
    hi, lo = 1e8 + 0.01, 1e8 - 0.01  # E[x^2] - E[x]^2 would give 0 here
    mean, var = _stats.moments(np.array([[hi], [lo]]))
    assert var[0] == pytest.approx(((hi - lo) / 2) ** 2, rel=1e-12)  # hi - lo is exact (Sterbenz)
    assert mean[0] == pytest.approx(1e8, abs=1e-7)
    assert _stats.moments(np.full((4, 3), 7.25))[1].tolist() == [0.0, 0.0, 0.0]


def test_shifted_pieces_are_the_textbook_formulas():
    # passes 1, 3, 8 shifted by x0 = 1: S1 = 0 + 2 + 7 = 9, S2 = 0 + 4 + 49 = 53, T = 3
    assert _stats.shifted_mean(np.array(1.0), np.array(9.0), 3) == 4.0
    assert _stats.shifted_variance(np.array(9.0), np.array(53.0), 3) == pytest.approx(np.var([1, 3, 8]))
    assert _stats.shifted_variance(np.array(1.0), np.array(0.0), 1) == 0.0  # rounding never goes negative


def test_mutual_information_and_variation_ratio_by_hand():
    p = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])  # two passes that disagree
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    expected = _stats.expected_entropy(p)
    assert expected[0] == pytest.approx(h, abs=1e-15)
    assert _stats.mutual_information(p.mean(axis=0), expected)[0] == pytest.approx(math.log(2) - h, abs=1e-15)
    votes = _stats.vote_counts(np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.7, 0.3]], [[0.6, 0.4]]]))
    assert votes.tolist() == [[3, 1]]
    assert _stats.variation_ratio(votes, 4).tolist() == [0.25]
    # identical passes: no epistemic part, and rounding never makes it negative
    same = np.repeat(_probs(3, (1, 20, 5)), 6, axis=0)
    mi = _stats.mutual_information(_stats.moments(same)[0], _stats.expected_entropy(same))
    assert np.all(mi >= 0.0) and np.all(mi <= 4 * np.finfo(float).eps)


def test_accumulators_return_plain_statistics_and_predictions_build_on_them():
    p = _probs(4)
    acc = ClassificationAccumulator()
    acc.update(p)
    result = acc.result()
    assert type(result) is ClassificationStatistics and result.num_samples == 9 and result.samples is None
    pred = ClassificationPrediction.from_statistics(result, mask="per_example", seed=3, outputs="logits")
    assert (pred.mask, pred.seed, pred.outputs) == ("per_example", 3, "logits")
    reg = RegressionPrediction.from_samples(np.arange(6.0).reshape(3, 2, 1), keep_samples=False)
    assert set(RegressionStatistics._fields) <= {f for f in reg.__dataclass_fields__}


@pytest.mark.parametrize("shape", [(9, 13, 4), (1, 5, 2), (40, 3, 10)])
def test_every_prediction_statistic_is_the_bottom_layers_bit_for_bit(shape):
    p = _probs(5, shape)
    pred = ClassificationPrediction.from_samples(p)
    mean, var = _stats.moments(p)
    expected = _stats.expected_entropy(p)
    np.testing.assert_array_equal(pred.mean, mean)
    np.testing.assert_array_equal(pred.variance, var)
    np.testing.assert_array_equal(pred.expected_entropy, expected)
    np.testing.assert_array_equal(pred.entropy, _stats.entropy(mean))
    np.testing.assert_array_equal(pred.mutual_information, _stats.mutual_information(mean, expected))
    np.testing.assert_array_equal(pred.variation_ratio, _stats.variation_ratio(_stats.vote_counts(p), shape[0]))


@pytest.mark.parametrize("score", ["max_entropy", "bald", "variation_ratio", "mean_std", "margin",
                                   "least_confidence"])
def test_acquisition_scores_of_an_array_equal_those_of_its_prediction_bit_for_bit(score):
    p = _probs(6, (11, 30, 3))
    fn = getattr(acq, score)
    np.testing.assert_array_equal(fn(p), fn(ClassificationPrediction.from_samples(p)))


def test_a_heads_summary_turns_the_plain_statistics_into_its_prediction_with_provenance():
    from mcdrop.heads import Head

    p = _probs(7, (5, 4, 3))
    summary = Head("classification", outputs="probs").accumulator(keep_samples=True,
                                                                  provenance={"mask": "consistent", "seed": 1})
    summary.update(p[:2])
    summary.update(p[2:])
    pred = summary.result()
    assert isinstance(pred, ClassificationPrediction)
    assert (pred.seed, pred.outputs, pred.num_samples) == (1, "probs", 5)
    np.testing.assert_array_equal(pred.samples, p)
    np.testing.assert_array_equal(pred.mean, _stats.moments(p)[0])
    mu = np.random.default_rng(8).standard_normal((6, 4, 2))
    head = Head("regression", heteroscedastic="log_variance")
    reg = head.accumulator(keep_samples=False, provenance={"seed": 2})
    head.update(reg, mu)  # as the engine feeds it: a mean half and a log-variance half
    out = reg.result()
    assert isinstance(out, RegressionPrediction) and out.heteroscedastic and out.includes_aleatoric
    np.testing.assert_allclose(out.aleatoric_variance, np.exp(mu[..., 1:]).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 20), (6, 20, 3)])
def test_regression_scores_of_an_array_are_numpys_variance_and_equal_those_of_its_prediction(shape):
    mu = 1e3 + np.random.default_rng(9).standard_normal(shape)
    expected = mu.var(axis=0) if len(shape) == 2 else mu.var(axis=0).sum(axis=-1)
    pred = RegressionPrediction.from_samples(mu)
    for score in (acq.predictive_variance, acq.epistemic_variance):
        np.testing.assert_allclose(score(mu), expected, rtol=1e-9)
        np.testing.assert_array_equal(score(mu), score(pred))


def test_a_head_is_the_type_of_its_task_and_carries_its_behaviour():
    import pickle

    from mcdrop.heads import ClassificationHead, Head, RegressionHead

    clf, reg = Head("classification", "logits"), Head("regression", heteroscedastic="log_variance")
    assert type(clf) is ClassificationHead and type(reg) is RegressionHead
    assert not clf.keeps_samples_by_default and reg.keeps_samples_by_default  # the mixture needs the passes
    assert clf == Head("classification", "logits") and hash(clf) == hash(Head("classification", "logits"))
    assert pickle.loads(pickle.dumps(reg)) == reg
    with pytest.raises(ValueError, match=r"argument `task`: expected one of"):
        Head("ranking")
    raw = np.array([[[0.0, 0.0]], [[1.0, 2.0]]])  # two passes, one row
    probs, none = clf.per_pass(raw)
    np.testing.assert_allclose(probs[1, 0], [1 / (1 + np.e), np.e / (1 + np.e)])
    assert none is None
    means, variances = reg.per_pass(raw)
    np.testing.assert_array_equal(means[..., 0], [[0.0], [1.0]])
    np.testing.assert_allclose(variances[..., 0], [[1.0], [np.exp(2.0)]])

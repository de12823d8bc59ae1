import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.calibration import calibration_curve

from mcdrop import metrics
from mcdrop.predictive import ClassificationPrediction

Y = np.array([0, 1, 0, 2])
P = np.array([
    [0.7, 0.2, 0.1],   # conf 0.7, correct
    [0.5, 0.4, 0.1],   # conf 0.5, wrong
    [0.2, 0.2, 0.6],   # conf 0.6, wrong
    [0.05, 0.05, 0.9],  # conf 0.9, correct
])


# --- hand-computed cases -------------------------------------------------------------------------

def test_nll_hand():
    expected = -(np.log(0.7) + np.log(0.4) + np.log(0.2) + np.log(0.9)) / 4
    assert metrics.negative_log_likelihood(Y, P) == pytest.approx(expected, rel=1e-12)


def test_brier_hand():
    rows = [0.3**2 + 0.2**2 + 0.1**2, 0.5**2 + 0.6**2 + 0.1**2,
            0.8**2 + 0.2**2 + 0.6**2, 0.05**2 + 0.05**2 + 0.1**2]
    assert metrics.brier_score(Y, P) == pytest.approx(np.mean(rows), rel=1e-12)


def test_accuracy_hand():
    assert metrics.accuracy_score(Y, P) == 0.5


def test_ece_hand_two_bins():
    # bins (0, .5] and (.5, 1]: first holds conf .5 (wrong); second .7 ok, .6 wrong, .9 ok
    first = 1 / 4 * abs(0 - 0.5)
    second = 3 / 4 * abs(2 / 3 - (0.7 + 0.6 + 0.9) / 3)
    assert metrics.expected_calibration_error(Y, P, n_bins=2) == pytest.approx(first + second)
    l2 = np.sqrt(1 / 4 * 0.5**2 + 3 / 4 * (2 / 3 - 2.2 / 3) ** 2)
    assert metrics.expected_calibration_error(Y, P, n_bins=2, norm="l2") == pytest.approx(l2)
    assert metrics.expected_calibration_error(Y, P, n_bins=2, norm="max") == pytest.approx(0.5)
    assert metrics.maximum_calibration_error(Y, P, n_bins=2) == pytest.approx(0.5)


def test_ece_one_bin_is_accuracy_gap():
    assert metrics.expected_calibration_error(Y, P, n_bins=1) == pytest.approx(abs(0.5 - 2.7 / 4))


def test_ece_right_closed_bins():
    # 0.5 lies on the edge of two bins: Guo et al.'s ((m-1)/M, m/M] puts it in the lower one
    curve = metrics.reliability_curve([0, 0], [[0.5, 0.5], [0.75, 0.25]], n_bins=2)
    assert curve.count.tolist() == [1, 1]


def test_ece_quantile_hand():
    # two equal-count bins: {.5, .6} (both wrong) and {.7, .9} (both right)
    expected = 0.5 * 0.55 + 0.5 * abs(1 - 0.8)
    assert metrics.expected_calibration_error(Y, P, n_bins=2, strategy="quantile") == pytest.approx(expected)


def test_classwise_hand():
    # class 0 probs .7 .5 .2 .05 with hits 1 0 1 0; class 1: .2 .4 .2 .05 / 0 1 0 0; class 2: .1 .1 .6 .9 / 0 0 0 1
    # two bins (0, .5], (.5, 1]
    c0 = abs((0 + 1 + 0) - (0.5 + 0.2 + 0.05)) + abs(1 - 0.7)
    c1 = abs(1 - (0.2 + 0.4 + 0.2 + 0.05))
    c2 = abs(0 - 0.2) + abs(1 - 1.5)
    assert metrics.classwise_calibration_error(Y, P, n_bins=2) == pytest.approx((c0 + c1 + c2) / 12)


def test_classwise_against_loop(classification_data):
    y, p = classification_data
    n_bins = 10
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for c in range(p.shape[1]):
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = (p[:, c] > lo) & (p[:, c] <= hi) if lo > 0 else (p[:, c] <= hi)
            if in_bin.any():
                total += in_bin.mean() * abs((y[in_bin] == c).mean() - p[in_bin, c].mean())
    assert metrics.classwise_calibration_error(y, p, n_bins=n_bins) == pytest.approx(total / p.shape[1])


def test_perfect_predictions():
    y = np.array([0, 1, 1])
    p = np.eye(2)[y]
    assert metrics.negative_log_likelihood(y, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.brier_score(y, p) == 0.0
    assert metrics.expected_calibration_error(y, p) == 0.0


def test_nll_clips_zero_probability():
    value = metrics.negative_log_likelihood([1], [[1.0, 0.0]])
    assert value == pytest.approx(-np.log(np.finfo(float).eps))


# --- against independent implementations ---------------------------------------------------------

def test_nll_matches_sklearn(classification_data):
    y, p = classification_data
    assert metrics.negative_log_likelihood(y, p) == pytest.approx(
        skm.log_loss(y, p, labels=range(p.shape[1])), rel=1e-10)


def test_brier_matches_sklearn_one_hot(classification_data):
    y, p = classification_data
    onehot = np.eye(p.shape[1])[y]
    per_class = sum(skm.brier_score_loss(onehot[:, c], p[:, c]) for c in range(p.shape[1]))
    assert metrics.brier_score(y, p) == pytest.approx(per_class, rel=1e-10)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_tfp(classification_data, n_bins):
    import tensorflow_probability as tfp

    y, p = classification_data
    reference = tfp.stats.expected_calibration_error(
        n_bins, logits=np.log(p).astype(np.float32), labels_true=y.astype(np.int32))
    assert metrics.expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(
        float(reference), abs=2e-5)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_matches_sklearn(classification_data, strategy):
    y, p = classification_data
    correct = (p.argmax(1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, p.max(1), n_bins=10, strategy=strategy)
    curve = metrics.reliability_curve(y, p, n_bins=10, strategy=strategy)
    filled = curve.count > 0
    np.testing.assert_allclose(curve.accuracy[filled], prob_true, rtol=1e-12)
    np.testing.assert_allclose(curve.confidence[filled], prob_pred, rtol=1e-12)
    assert curve.count.sum() == len(y)
    assert curve.edges.shape == (11,)


def test_reliability_curve_gives_ece(classification_data):
    y, p = classification_data
    c = metrics.reliability_curve(y, p, n_bins=12)
    f = c.count > 0
    ece = np.sum(c.count[f] / len(y) * np.abs(c.accuracy[f] - c.confidence[f]))
    assert metrics.expected_calibration_error(y, p, n_bins=12) == pytest.approx(ece)
    assert np.isnan(c.accuracy[~f]).all()


def test_prediction_object_uses_its_mean(classification_data):
    y, p = classification_data
    rng = np.random.default_rng(1)
    passes = np.stack([p, rng.dirichlet(np.ones(p.shape[1]), size=len(p))])
    pred = ClassificationPrediction.from_samples(passes)
    for fn in (metrics.negative_log_likelihood, metrics.brier_score, metrics.expected_calibration_error):
        assert fn(y, pred) == pytest.approx(fn(y, passes.mean(0)), rel=1e-12)


def test_list_input_equals_array_input():
    assert metrics.expected_calibration_error(Y.tolist(), P.tolist(), n_bins=3) == \
        metrics.expected_calibration_error(Y, P, n_bins=3)


def test_returns_python_float():
    for fn in (metrics.negative_log_likelihood, metrics.brier_score, metrics.expected_calibration_error,
               metrics.maximum_calibration_error, metrics.classwise_calibration_error):
        assert type(fn(Y, P)) is float


# --- properties ----------------------------------------------------------------------------------

@st.composite
def labelled_probs(draw, max_rows=40, max_classes=6):
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(2, max_classes))
    raw = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0.0, 1.0)))
    raw = raw + 1e-3
    probs = raw / raw.sum(1, keepdims=True)
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return labels, probs


@settings(max_examples=60, deadline=None)
@given(labelled_probs(), st.integers(1, 20), st.sampled_from(["uniform", "quantile"]),
       st.sampled_from(["l1", "l2", "max"]))
def test_ece_in_unit_interval(data, n_bins, strategy, norm):
    y, p = data
    ece = metrics.expected_calibration_error(y, p, n_bins=n_bins, strategy=strategy, norm=norm)
    assert 0.0 <= ece <= 1.0
    assert 0.0 <= metrics.classwise_calibration_error(y, p, n_bins=n_bins) <= 1.0


@settings(max_examples=40, deadline=None)
@given(labelled_probs(), st.randoms(use_true_random=False))
def test_invariant_to_row_order(data, random):
    y, p = data
    order = np.arange(len(y))
    random.shuffle(order)
    for fn in (metrics.negative_log_likelihood, metrics.brier_score, metrics.expected_calibration_error,
               metrics.classwise_calibration_error, metrics.aurc, metrics.excess_aurc):
        assert fn(y[order], p[order]) == pytest.approx(fn(y, p), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_information_bounds_and_pass_order(t, n, c, seed):
    rng = np.random.default_rng(seed)
    passes = rng.dirichlet(np.full(c, 0.3), size=(t, n))
    pred = ClassificationPrediction.from_samples(passes)
    mi, h = pred.mutual_information, pred.entropy
    assert np.all(mi >= 0)
    assert np.all(mi <= h + 1e-12)
    assert np.all(h <= np.log(c) + 1e-12)
    shuffled = ClassificationPrediction.from_samples(passes[rng.permutation(t)])
    y = rng.integers(0, c, size=n)
    np.testing.assert_allclose(shuffled.mutual_information, mi, atol=1e-12)
    assert metrics.expected_calibration_error(y, shuffled) == pytest.approx(
        metrics.expected_calibration_error(y, pred), abs=1e-12)
    assert metrics.negative_log_likelihood(y, shuffled) == pytest.approx(
        metrics.negative_log_likelihood(y, pred), rel=1e-12)


# --- bad input: one test per message -------------------------------------------------------------

def test_error_label_out_of_range():
    with pytest.raises(ValueError, match=r"`y_true`: expected labels >= 0 and < 3.*range over \[0, 3\]"):
        metrics.brier_score([0, 1, 0, 3], P)


def test_error_label_not_integer():
    with pytest.raises(ValueError, match=r"`y_true`: expected integer class labels"):
        metrics.negative_log_likelihood([0, 1.5, 0, 2], P)


def test_error_label_type():
    with pytest.raises(TypeError, match=r"`y_true`: expected integer class labels"):
        metrics.negative_log_likelihood(np.array(["a", "b", "a", "c"]), P)


def test_error_probs_outside_unit_interval():
    bad = P.copy()
    bad[0] = [1.5, -0.4, -0.1]
    with pytest.raises(ValueError, match=r"`probs`: expected probabilities in \[0, 1\]"):
        metrics.expected_calibration_error(Y, bad)


def test_error_rows_not_summing_to_one():
    with pytest.raises(ValueError, match=r"`probs`: expected rows that sum to one.*1 row\(s\)"):
        metrics.expected_calibration_error(Y, P * np.array([[1], [1], [1], [0.9]]))


def test_error_mismatched_lengths():
    with pytest.raises(ValueError, match=r"same number of rows.*`y_true` has 3, `probs` has 4"):
        metrics.negative_log_likelihood([0, 1, 0], P)


def test_error_n_bins():
    with pytest.raises(ValueError, match=r"`n_bins`: expected an integer >= 1, received 0"):
        metrics.expected_calibration_error(Y, P, n_bins=0)


def test_error_n_bins_type():
    with pytest.raises(TypeError, match=r"`n_bins`: expected an integer >= 1, received 2.5"):
        metrics.reliability_curve(Y, P, n_bins=2.5)


def test_error_empty():
    with pytest.raises(ValueError, match=r"`probs`: expected a non-empty array"):
        metrics.brier_score([], np.empty((0, 3)))


def test_error_strategy():
    with pytest.raises(ValueError, match=r"`strategy`: expected one of 'uniform', 'quantile', received 'equal'"):
        metrics.expected_calibration_error(Y, P, strategy="equal")


def test_error_norm():
    with pytest.raises(ValueError, match=r"`norm`: expected one of 'l1', 'l2', 'max', received 'l3'"):
        metrics.expected_calibration_error(Y, P, norm="l3")


def test_error_single_class():
    with pytest.raises(ValueError, match=r"`probs`: expected at least two classes"):
        metrics.brier_score([0], [[1.0]])


def test_error_nan():
    bad = P.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`probs`: expected finite values.*1 NaN"):
        metrics.brier_score(Y, bad)

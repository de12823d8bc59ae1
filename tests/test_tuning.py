"""tune_rate on synthetic data whose best rate is known by construction."""

import keras
import numpy as np
import pytest

import mcdrop
from mcdrop.tuning import RateTuning

L = keras.layers
TRUE_RATE = 0.3


def _linear(weights, trained_rate=0.2):
    inp = keras.Input((len(weights),))
    out = L.Dense(1, use_bias=False, name="head")(L.Dropout(trained_rate, name="drop")(inp))
    model = keras.Model(inp, out)
    model.get_layer("head").set_weights([np.asarray(weights, np.float32)[:, None]])
    return model


@pytest.fixture(scope="module")
def synthetic():
    """Targets drawn from the model's own predictive distribution at TRUE_RATE (moment-matched):
    y = w.x + sqrt(v(p*)) z with v(r) = sum_i w_i^2 x_i^2 r / (1 - r), the Bernoulli variance of
    w.(x * m / (1 - r)). The Gaussian NLL is a proper score, so its expectation is lowest at p*."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    x = rng.normal(size=(800, 8)).astype("float32")
    c = (w ** 2 * x.astype(np.float64) ** 2).sum(axis=1)
    y = x.astype(np.float64) @ w + np.sqrt(c * TRUE_RATE / (1 - TRUE_RATE)) * rng.normal(size=len(x))
    return _linear(w), x, y[:, None], c


def test_the_rate_the_data_was_drawn_at_wins(synthetic):
    model, x, y, c = synthetic
    # per-example masks: each row's MC error is independent, so it averages out over the rows
    result = mcdrop.tune_rate(model, x, y, rates=[0.5, 0.1, 0.2, 0.3, 0.4], num_samples=100, seed=1,
                              mask="per_example")
    assert isinstance(result, RateTuning)
    assert result.best == pytest.approx(TRUE_RATE)
    np.testing.assert_array_equal(result.values, [0.1, 0.2, 0.3, 0.4, 0.5])
    # each score against the closed-form Gaussian NLL at the exact Bernoulli variance (numpy, no engine)
    mean = (x.astype(np.float64) @ model.get_layer("head").get_weights()[0])
    for r, score in zip(result.values, result.scores):
        v = c[:, None] * r / (1 - r)
        expected = np.mean(0.5 * np.log(2 * np.pi * v) + (y - mean) ** 2 / (2 * v))
        # T = 100 passes estimate each row's variance; 1 / v_hat is biased up (Jensen), most at low rates
        assert score == pytest.approx(expected, rel=0.08)
    curve = result.curve
    np.testing.assert_array_equal(curve.values, result.values)
    np.testing.assert_array_equal(curve.scores, result.scores)
    assert "*" in result.table() and "nll" in result.table()
    assert model.get_layer("drop").rate == 0.2


def test_scales_multiply_the_trained_rates(synthetic):
    model, x, y, _ = synthetic  # trained at 0.2: scale 1.5 is the true 0.3
    result = mcdrop.tune_rate(model, x, y, scales=[0.5, 1.0, 1.5, 2.5], num_samples=100, seed=1,
                              mask="per_example")
    assert result.kind == "scale" and result.best == pytest.approx(1.5)


def test_rate_zero_without_a_gaussian_head_has_infinite_nll(synthetic):
    model, x, y, _ = synthetic
    result = mcdrop.tune_rate(model, x[:50], y[:50], rates=[0.0, 0.3], num_samples=10)
    assert result.scores[0] == np.inf and result.best == pytest.approx(0.3)


def test_classification_metrics_and_a_callable():
    model = keras.Sequential([keras.Input((4,)), L.Dense(16, activation="relu"), L.Dropout(0.2),
                              L.Dense(3, activation="softmax")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype("float32")
    y = rng.integers(0, 3, 60)
    calls = []

    def accuracy_error(y_true, pred):
        calls.append(pred.num_samples)
        return float(np.mean(pred.predicted_class != y_true))

    result = mcdrop.tune_rate(model, x, y, rates=[0.1, 0.4], metric=accuracy_error, num_samples=8)
    assert result.metric == "accuracy_error" and calls == [8, 8]
    brier = mcdrop.tune_rate(model, x, y, rates=[0.1, 0.4], metric="brier", num_samples=8)
    p = mcdrop.MCDropout(model, num_samples=8, seed=0, rate=0.4).predict(x).mean
    onehot = np.eye(3)[y]
    assert brier.scores[1] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)), rel=1e-9)


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, TypeError, r"argument `rates`: expected exactly one of `rates` and `scales`"),
    ({"rates": [0.1], "scales": [1.0]}, TypeError, r"exactly one of `rates` and `scales`"),
    ({"rates": []}, TypeError, r"argument `rates`: expected a non-empty sequence"),
    ({"rates": [1.2]}, ValueError, r"argument `rates`: expected a number in \[0.0, 1.0\)"),
    ({"scales": [0.0]}, ValueError, r"argument `scales`: expected a number in \(0.0, inf\]"),
    ({"scales": [6.0]}, ValueError, r"argument `scales`: expected scales that keep every rate below 1"),
    ({"rates": [0.1], "metric": "auc"}, ValueError, r"argument `metric`: expected one of 'nll'"),
    ({"rates": [0.1], "metric": "ece"}, ValueError, r"argument `metric`: expected one of 'nll', 'crps', 'rmse' "
                                                     r"for regression"),
    ({"rates": [0.1], "num_samples": 1}, ValueError, r"argument `num_samples`: expected an integer >= 2"),
    ({"rates": [0.1], "rate": 0.2}, TypeError, r"argument `rate`: expected no `rate` among the engine options"),
    # a metric that says higher is better is refused, never minimised (issue 13 item 6)
    ({"rates": [0.1], "metric": mcdrop.metrics.accuracy_score}, ValueError,
     r"argument `metric`: expected a lower-is-better metric .*received 'accuracy_score'\. Its `direction` is 1: "
     r"higher is better"),
    ({"rates": [0.1], "metric": mcdrop.metrics.interval_coverage}, ValueError,
     r"received 'interval_coverage'\. Its `direction` is 0"),
])
def test_errors(kwargs, error, match):
    model = _linear([1.0, 2.0])
    x = np.ones((4, 2), np.float32)
    with pytest.raises(error, match=match):
        mcdrop.tune_rate(model, x, np.ones((4, 1)), **kwargs)


def test_named_metrics_are_the_lower_is_better_metrics_of_mcdrop_metrics():
    """Every named metric is minimised, so each must say lower is better; and each is the metric of
    mcdrop.metrics it is named after (checked on a hand-worked prediction)."""
    from mcdrop import metrics
    from mcdrop.predictive import ClassificationPrediction, RegressionPrediction
    from mcdrop.tuning import METRICS, _SCORES

    assert set(METRICS) == set(mcdrop.heads.TASKS)
    assert all(fn.direction == metrics.LOWER for scores in _SCORES.values() for fn in scores.values())
    clf = ClassificationPrediction.from_samples(np.array([[[0.8, 0.2], [0.4, 0.6]]]))
    assert _SCORES[clf.task]["nll"]([0, 1], clf) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    reg = RegressionPrediction.from_samples(np.array([[1.0, 2.0], [3.0, 2.0]]))
    assert _SCORES[reg.task]["rmse"]([2.0, 4.0], reg) == pytest.approx(np.sqrt((0 + 4) / 2))
    point = RegressionPrediction.from_samples(np.array([[1.0, 2.0]]))
    assert _SCORES[point.task]["nll"]([1.0, 2.0], point) == np.inf

"""Properties every metric in ``mcdrop.metrics`` must have, checked from one registry
(in the style of scikit-learn's ``sklearn/metrics/tests/test_common.py``).

Each public metric is registered once in ``METRICS`` with the kind of its inputs and its bounds. The
suite then checks, for every metric:

* row permutation: permuting the rows (together across the arguments; the in- and out-of-distribution
  scores of the OOD metrics each on their own) leaves the value unchanged (row-wise outputs such as
  PIT values follow the permutation);
* dtype: float32 inputs give the value of the same numbers as float64;
* list versus array: nested Python lists give exactly the array result;
* bounds: every value lies in the metric's range (ECE and AUROC in [0, 1], set size in [0, C], ...);
* pass order, where the metric accepts a prediction object (or raw samples ``(T, N)``): reordering
  the Monte Carlo passes leaves the value unchanged.

A test guards the registry itself: every name in ``mcdrop.metrics.__all__`` that is a function is
registered, so a new metric cannot skip the suite.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcdrop import metrics as M
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction
from tests.metrics.conftest import softmax

N, M_OUT, C, T = 40, 27, 4, 6  # rows, OOD rows, classes, passes
INF = np.inf
PASS_ORDER_RTOL = 1e-9  # only the summation order of the passes changes
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The inputs, by name. `rows` says which axis is the row axis (the passes come first in samples).
ROW_AXIS = {"samples": 1}
OWN_ROWS = {"u_out"}  # permuted on their own (another population)


def make_data(seed: int) -> dict[str, np.ndarray]:
    """One draw of every input kind, with ties (rounded scores) so that tie handling is exercised."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(size=(N, C)) * 2.0)
    y = np.array([rng.choice(C, p=p) for p in softmax(np.log(probs) / 1.5)])
    mean = rng.normal(size=N)
    std = rng.uniform(0.3, 2.0, size=N)
    y_reg = mean + std * rng.normal(size=N)
    sets = rng.random((N, C)) < 0.5
    sets[np.arange(N), probs.argmax(axis=1)] = True  # never empty at the top label
    is_error = probs.argmax(axis=1) != y
    is_error[:2] = (True, False)  # both outcomes occur
    return {
        "y": y, "probs": probs, "sets": sets,
        "is_error": is_error, "u": np.round(rng.random(N), 1),
        "u_in": np.round(rng.random(N), 1), "u_out": np.round(rng.random(M_OUT) + 0.3, 1),
        "y_reg": y_reg, "mean": mean, "std": std, "var": std**2,
        "lower": mean - 1.5 * std, "upper": mean + 1.5 * std,
        "samples": mean + std * rng.normal(size=(T, N)),
    }


class Metric(NamedTuple):
    fn: Callable
    args: tuple[str, ...]  # the inputs, in order, by name in make_data
    bounds: tuple[float, float]  # closed range of every value the metric returns
    rowwise: bool = False  # the output has one value per row (it follows a permutation)
    with_prediction: str | None = None  # how it takes a prediction object (see `prediction_args`)


UNIT = (0.0, 1.0)
NONNEG = (0.0, INF)

#: Every public metric, once.
METRICS: dict[str, Metric] = {
    # classification
    "negative_log_likelihood": Metric(M.negative_log_likelihood, ("y", "probs"), NONNEG, with_prediction="labels"),
    "brier_score": Metric(M.brier_score, ("y", "probs"), (0.0, 2.0), with_prediction="labels"),
    "accuracy_score": Metric(M.accuracy_score, ("y", "probs"), UNIT, with_prediction="labels"),
    "expected_calibration_error": Metric(M.expected_calibration_error, ("y", "probs"), UNIT,
                                         with_prediction="labels"),
    "maximum_calibration_error": Metric(M.maximum_calibration_error, ("y", "probs"), UNIT,
                                        with_prediction="labels"),
    "classwise_calibration_error": Metric(M.classwise_calibration_error, ("y", "probs"), UNIT,
                                          with_prediction="labels"),
    "reliability_curve": Metric(M.reliability_curve, ("y", "probs"), NONNEG, with_prediction="labels"),
    # selective prediction
    "risk_coverage_curve": Metric(M.risk_coverage_curve, ("y", "probs"), UNIT, with_prediction="labels"),
    "aurc": Metric(M.aurc, ("y", "probs"), UNIT, with_prediction="labels"),
    "excess_aurc": Metric(M.excess_aurc, ("y", "probs"), UNIT, with_prediction="labels"),
    "uncertainty_auroc": Metric(M.uncertainty_auroc, ("is_error", "u"), UNIT, with_prediction="error"),
    "uncertainty_aupr": Metric(M.uncertainty_aupr, ("is_error", "u"), UNIT, with_prediction="error"),
    # out-of-distribution
    "ood_auroc": Metric(M.ood_auroc, ("u_in", "u_out"), UNIT, with_prediction="ood"),
    "ood_aupr": Metric(M.ood_aupr, ("u_in", "u_out"), UNIT, with_prediction="ood"),
    "fpr_at_95_tpr": Metric(M.fpr_at_95_tpr, ("u_in", "u_out"), UNIT, with_prediction="ood"),
    # regression
    "gaussian_nll": Metric(M.gaussian_nll, ("y_reg", "mean", "var"), (-INF, INF), with_prediction="regression"),
    "crps_gaussian": Metric(M.crps_gaussian, ("y_reg", "mean", "std"), NONNEG, with_prediction="regression"),
    "crps_samples": Metric(M.crps_samples, ("y_reg", "samples"), NONNEG, with_prediction="regression"),
    "rmse": Metric(M.rmse, ("y_reg", "mean"), NONNEG, with_prediction="regression"),
    "interval_coverage": Metric(M.interval_coverage, ("y_reg", "lower", "upper"), UNIT,
                                with_prediction="regression"),
    "mean_interval_width": Metric(M.mean_interval_width, ("lower", "upper"), NONNEG, with_prediction="interval"),
    "pit_values": Metric(M.pit_values, ("y_reg", "samples"), UNIT, rowwise=True, with_prediction="regression"),
    "quantile_calibration_curve": Metric(M.quantile_calibration_curve, ("y_reg", "samples"), UNIT,
                                         with_prediction="regression"),
    "miscalibration_area": Metric(M.miscalibration_area, ("y_reg", "samples"), (0.0, 0.5),
                                  with_prediction="regression"),
    # prediction sets
    "set_coverage": Metric(M.set_coverage, ("y", "sets"), UNIT),
    "mean_set_size": Metric(M.mean_set_size, ("sets",), (0.0, C)),
    "size_stratified_coverage": Metric(M.size_stratified_coverage, ("y", "sets"), (0.0, N)),
    "class_conditional_coverage": Metric(M.class_conditional_coverage, ("y", "sets"), (0.0, N)),
}
NAMES = sorted(METRICS)


# -- helpers -----------------------------------------------------------------------------------
def call(name: str, data: dict[str, Any]):
    metric = METRICS[name]
    return metric.fn(*(data[arg] for arg in metric.args))


def values(result) -> list[np.ndarray]:
    """A metric's result as a list of float arrays (a float, an array, or each field of a NamedTuple)."""
    if isinstance(result, tuple):
        return [np.asarray(field, dtype=np.float64) for field in result]
    return [np.asarray(result, dtype=np.float64)]


def assert_same(a, b, *, rtol: float, atol: float = 0.0):
    va, vb = values(a), values(b)
    assert len(va) == len(vb)
    for x, z in zip(va, vb):
        np.testing.assert_allclose(x, z, rtol=rtol, atol=atol, equal_nan=True)


def permute(data: dict[str, np.ndarray], rng) -> tuple[dict[str, np.ndarray], np.ndarray]:
    perm, own = rng.permutation(N), rng.permutation(M_OUT)
    out = {}
    for key, value in data.items():
        order = own if key in OWN_ROWS else perm
        out[key] = np.take(value, order, axis=ROW_AXIS.get(key, 0))
    return out, perm


# -- the registry is complete --------------------------------------------------------------------
def test_every_public_metric_is_registered():
    functions = {name for name in M.__all__ if inspect.isfunction(getattr(M, name))}
    assert functions == set(METRICS)


# -- row permutation ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_row_permutation_invariance(name, seed):
    data = make_data(seed)
    shuffled, perm = permute(data, np.random.default_rng(seed + 1))
    expected = call(name, data)
    if METRICS[name].rowwise:
        expected = np.asarray(expected)[perm]
    assert_same(call(name, shuffled), expected, rtol=1e-12, atol=1e-15)


# -- dtype ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_float32_inputs_give_the_float64_value_of_the_same_numbers(name):
    data = make_data(0)
    as32 = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in data.items()}
    as64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in as32.items()}
    # the probabilities stay probability vectors after rounding to float32
    assert_same(call(name, as32), call(name, as64), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if "y" in METRICS[n].args])
@pytest.mark.parametrize("label_dtype", [np.int32, np.uint8, np.float64])
def test_label_dtype_does_not_matter(name, label_dtype):
    data = make_data(1)
    other = {**data, "y": data["y"].astype(label_dtype)}
    assert_same(call(name, other), call(name, data), rtol=0.0)


# -- list versus array ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_lists_give_the_array_result(name):
    data = make_data(2)
    lists = {k: v.tolist() for k, v in data.items()}
    assert_same(call(name, lists), call(name, data), rtol=0.0)


# -- bounds ---------------------------------------------------------------------------------------
def extreme_data(seed: int, case: str) -> dict[str, np.ndarray]:
    """Edge cases that push metrics to their bounds: confident and wrong, perfect, all-or-nothing sets."""
    data = make_data(seed)
    if case == "confidently_wrong":
        wrong = (data["y"] + 1) % C
        data["probs"] = np.full((N, C), 1e-6)
        data["probs"][np.arange(N), wrong] = 1.0 - (C - 1) * 1e-6
        data["u"] = np.where(data["is_error"], 0.0, 1.0)  # uncertainty backwards
        data["u_out"] = data["u_out"] - 2.0  # OOD scores below every in-distribution one
        data["sets"][:] = False
        data["sets"][np.arange(N), wrong] = True
        data["samples"] = data["y_reg"] + 50.0 + data["samples"] * 0.01  # every sample far above the target
    elif case == "perfect":
        data["probs"] = np.eye(C)[data["y"]] * (1 - C * 1e-9) + 1e-9
        data["u"] = data["is_error"].astype(float)
        data["u_out"] = data["u_out"] + 5.0
        data["sets"][:] = True
        data["lower"], data["upper"] = data["y_reg"] - 1.0, data["y_reg"] + 1.0
    return data


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["random", "confidently_wrong", "perfect"])
def test_values_lie_within_the_bounds(name, case):
    low, high = METRICS[name].bounds
    for seed in range(3):
        for value in values(call(name, extreme_data(seed, case))):
            finite = value[~np.isnan(value)]
            assert finite.size, f"{name} returned only NaN"
            assert np.all((finite >= low) & (finite <= high)), (name, case, finite.min(), finite.max())


# -- pass order of prediction objects -------------------------------------------------------------
def predictions(seed: int, order=None):
    """A classification and a regression prediction from the same passes, optionally reordered."""
    rng = np.random.default_rng(seed)
    cls = softmax(rng.normal(size=(T, N, C)) * 2.0)
    means = rng.normal(size=(T, N))
    variances = rng.uniform(0.2, 1.0, size=(T, N))
    cls_out = softmax(rng.normal(size=(T, M_OUT, C)))
    if order is not None:
        cls, means, variances, cls_out = cls[order], means[order], variances[order], cls_out[order]
    return (ClassificationPrediction.from_samples(cls), RegressionPrediction.from_samples(means, variances),
            ClassificationPrediction.from_samples(cls_out))


def prediction_args(name: str, preds, data, measure: str | None):
    c_in, reg, c_out = preds
    with_prediction = METRICS[name].with_prediction
    if with_prediction == "labels":
        return (data["y"], c_in), {}
    if with_prediction == "error":
        return (data["is_error"], c_in), {"measure": measure}
    if with_prediction == "ood":
        return (c_in, c_out), {"measure": measure}
    if with_prediction == "interval":
        return (reg,), {}
    return (data["y_reg"], reg), {}


PREDICTION_CASES = [
    pytest.param(name, measure, id=f"{name}-{measure}")
    for name in NAMES if METRICS[name].with_prediction
    for measure in ((None, "mutual_information", "variation_ratio")
                    if METRICS[name].with_prediction in ("error", "ood") else (None,))
]


@pytest.mark.parametrize("name, measure", PREDICTION_CASES)
def test_pass_order_of_a_prediction_does_not_matter(name, measure):
    data = make_data(3)
    order = np.random.default_rng(4).permutation(T)
    results = []
    for preds in (predictions(5), predictions(5, order)):
        args, kwargs = prediction_args(name, preds, data, measure)
        results.append(METRICS[name].fn(*args, **kwargs))
    assert_same(results[1], results[0], rtol=PASS_ORDER_RTOL, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if "samples" in METRICS[n].args])
def test_pass_order_of_raw_samples_does_not_matter(name):
    data = make_data(6)
    reordered = {**data, "samples": data["samples"][np.random.default_rng(7).permutation(T)]}
    assert_same(call(name, reordered), call(name, data), rtol=PASS_ORDER_RTOL, atol=1e-12)


# -- the checks can fail ----------------------------------------------------------------------------
BROKEN = {
    "reads the first row": (test_row_permutation_invariance,
                            Metric(lambda y, p: float(np.asarray(p)[0, 0]), ("y", "probs"), UNIT)),
    "depends on the dtype": (test_float32_inputs_give_the_float64_value_of_the_same_numbers,
                             Metric(lambda y, p: float(np.asarray(p).dtype.itemsize) / 8, ("y", "probs"), UNIT)),
    "depends on the container": (test_lists_give_the_array_result,
                                 Metric(lambda y, p: float(isinstance(p, np.ndarray)), ("y", "probs"), UNIT)),
    "out of its bounds": (lambda name: test_values_lie_within_the_bounds(name, "random"),
                          Metric(lambda y, p: 1.5, ("y", "probs"), UNIT)),
    "reads the first pass": (test_pass_order_of_a_prediction_does_not_matter,
                             Metric(lambda y, pred: float(pred.samples[0, 0, 0]), ("y", "probs"), UNIT,
                                    with_prediction="labels")),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_check_catches_a_metric_that_breaks_its_property(monkeypatch, broken):
    check, metric = BROKEN[broken]
    monkeypatch.setitem(METRICS, "broken", metric)
    args = ("broken", None) if check is test_pass_order_of_a_prediction_does_not_matter else ("broken",)
    with pytest.raises(AssertionError):
        check(*args)

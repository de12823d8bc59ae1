"""Every public metric says which way it improves (issue 13 item 6): ``fn.direction`` is +1 (higher is
better), -1 (lower is better) or 0 (a curve, per-row values, or a value aimed at a target), and
``metrics.DIRECTIONS`` has them by name. Each stated direction is checked against the metric's meaning: on a
hand-built pair of inputs, one plainly better than the other, the better one scores higher (+1) or lower (-1).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from mcdrop import metrics as M

# classification: four rows, labels 0 0 0 0
Y = np.array([0, 0, 0, 0])
#: right and confident, calibrated-ish
SHARP = np.array([[0.99, 0.01]] * 4)
#: three of four wrong, and sure of it
WRONG = np.array([[0.1, 0.9], [0.1, 0.9], [0.1, 0.9], [0.6, 0.4]])
#: one error, the least confident row (a good ranking) / the most confident row (a bad one)
RANKED_WELL = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.45, 0.55]])
RANKED_BADLY = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.05, 0.95]])
IS_ERROR = np.array([False, False, True, True])
RNG = np.random.default_rng(0)
Y_REG = RNG.normal(size=200)
#: samples (T, N) from the targets' own distribution, and from a far too narrow one
CALIBRATED = RNG.normal(size=(400, 200))
OVERCONFIDENT = 0.1 * RNG.normal(size=(400, 200))
U_IN, U_OUT = np.linspace(0.0, 1.0, 20), np.linspace(0.9, 2.0, 20)

#: (arguments of the better case, arguments of the worse case) for every metric with a direction.
BETTER_WORSE = {
    "negative_log_likelihood": ((Y, SHARP), (Y, WRONG)),
    "brier_score": ((Y, SHARP), (Y, WRONG)),
    "accuracy_score": ((Y, SHARP), (Y, WRONG)),
    "expected_calibration_error": ((Y, SHARP), (Y, WRONG)),
    "maximum_calibration_error": ((Y, SHARP), (Y, WRONG)),
    "classwise_calibration_error": ((Y, SHARP), (Y, WRONG)),
    "aurc": ((Y, RANKED_WELL), (Y, RANKED_BADLY)),
    "excess_aurc": ((Y, RANKED_WELL), (Y, RANKED_BADLY)),
    "uncertainty_auroc": ((IS_ERROR, [0.1, 0.2, 0.8, 0.9]), (IS_ERROR, [0.9, 0.8, 0.2, 0.1])),
    "uncertainty_aupr": ((IS_ERROR, [0.1, 0.2, 0.8, 0.9]), (IS_ERROR, [0.9, 0.8, 0.2, 0.1])),
    "ood_auroc": ((U_IN, U_OUT), (U_OUT, U_IN)),
    "ood_aupr": ((U_IN, U_OUT), (U_OUT, U_IN)),
    "fpr_at_95_tpr": ((U_IN, U_OUT), (U_OUT, U_IN)),
    "gaussian_nll": ((Y_REG, np.zeros(200), np.ones(200)), (Y_REG, np.full(200, 3.0), np.ones(200))),
    "crps_gaussian": ((Y_REG, np.zeros(200), np.ones(200)), (Y_REG, np.full(200, 3.0), np.ones(200))),
    "crps_samples": ((Y_REG, CALIBRATED), (Y_REG, OVERCONFIDENT + 2.0)),
    "rmse": ((Y_REG, Y_REG + 0.1), (Y_REG, Y_REG + 1.0)),
    "miscalibration_area": ((Y_REG, CALIBRATED), (Y_REG, OVERCONFIDENT)),
    "mean_interval_width": ((np.zeros(3), np.ones(3)), (np.zeros(3), np.full(3, 2.0))),
    "mean_set_size": (([[True, False, False]],), ([[True, True, False]],)),
}
#: Metrics with no better direction: curves, per-row values, and coverages (aimed at their level).
NO_DIRECTION = {"reliability_curve", "risk_coverage_curve", "quantile_calibration_curve", "pit_values",
                "interval_coverage", "set_coverage", "size_stratified_coverage", "class_conditional_coverage"}

PUBLIC = sorted(name for name in M.__all__ if inspect.isfunction(getattr(M, name)))


def test_every_public_metric_is_classified_here():
    assert set(PUBLIC) == set(BETTER_WORSE) | NO_DIRECTION
    assert not set(BETTER_WORSE) & NO_DIRECTION


@pytest.mark.parametrize("name", PUBLIC)
def test_each_metric_carries_its_direction(name):
    fn = getattr(M, name)
    assert fn.direction in (M.HIGHER, M.LOWER, M.NEITHER)
    assert M.DIRECTIONS[name] == fn.direction
    if name in NO_DIRECTION:
        assert fn.direction == M.NEITHER


@pytest.mark.parametrize("name", sorted(BETTER_WORSE))
def test_the_direction_agrees_with_a_plainly_better_input(name):
    fn = getattr(M, name)
    better, worse = (fn(*args) for args in BETTER_WORSE[name])
    assert better != pytest.approx(worse), "the pair does not separate"
    assert fn.direction == (M.HIGHER if better > worse else M.LOWER)


def test_directions_follow_the_naming_convention():
    """``*_score`` and AUROC/AUPR higher is better; ``*_error``, ``*_loss``, NLL, CRPS, RMSE lower."""
    for name, direction in M.DIRECTIONS.items():
        if name.endswith("_score") and name != "brier_score" or name.endswith(("auroc", "aupr")):
            assert direction == M.HIGHER, name
        if name.endswith(("_error", "_nll", "likelihood", "rmse")) or name.startswith("crps"):
            assert direction == M.LOWER, name
    assert M.brier_score.direction == M.LOWER  # a score in the proper-scoring-rule sense: a loss


def test_better_refuses_a_direction_that_is_not_one_of_three():
    from mcdrop.metrics._common import better

    with pytest.raises(ValueError, match=r"argument `direction`: expected 1 \(higher is better\), -1"):
        better(2)

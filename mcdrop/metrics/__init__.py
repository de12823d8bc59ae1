"""Calibration and uncertainty-quality metrics (plain numpy).

Conventions (scikit-learn's): ``y_true`` first, then predictions — arrays, or a prediction from
:class:`~mcdrop.MCDropout` — and options keyword-only. ``*_score`` is higher-is-better,
``*_error`` / ``*_loss`` / ``nll`` lower-is-better. Scalars are Python floats; curves are NamedTuples.

Every metric carries its direction as an attribute, ``fn.direction``: +1 (:data:`HIGHER`) when higher is
better, -1 (:data:`LOWER`) when lower is better, 0 (:data:`NEITHER`) for curves, per-row values and values
aimed at a target (the coverage of a set or an interval); :data:`DIRECTIONS` has them by name.

>>> from mcdrop import metrics
>>> metrics.expected_calibration_error.direction, metrics.ood_auroc.direction, metrics.set_coverage.direction
(-1, 1, 0)

Families:

* classification calibration — :func:`negative_log_likelihood`, :func:`brier_score`,
  :func:`expected_calibration_error`, :func:`maximum_calibration_error`,
  :func:`classwise_calibration_error`, :func:`reliability_curve`
* selective prediction — :func:`risk_coverage_curve`, :func:`aurc`, :func:`excess_aurc`,
  :func:`uncertainty_auroc`, :func:`uncertainty_aupr`
* out-of-distribution detection — :func:`ood_auroc`, :func:`ood_aupr`, :func:`fpr_at_95_tpr`
* regression — :func:`gaussian_nll`, :func:`crps_gaussian`, :func:`crps_samples`,
  :func:`interval_coverage`, :func:`mean_interval_width`, :func:`quantile_calibration_curve`,
  :func:`miscalibration_area`, :func:`rmse`, :func:`pit_values`
* prediction sets — :func:`set_coverage`, :func:`mean_set_size`, :func:`size_stratified_coverage`,
  :func:`class_conditional_coverage` (intervals: :func:`interval_coverage`, :func:`mean_interval_width`)
"""

from mcdrop.metrics._classification import (
    ReliabilityCurve,
    accuracy_score,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from mcdrop.metrics._common import HIGHER, LOWER, NEITHER
from mcdrop.metrics._ood import fpr_at_95_tpr, ood_aupr, ood_auroc
from mcdrop.metrics._regression import (
    QuantileCalibrationCurve,
    crps_gaussian,
    crps_samples,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    miscalibration_area,
    pit_values,
    quantile_calibration_curve,
    rmse,
)
from mcdrop.metrics._sets import (
    ClassConditionalCoverage,
    SizeStratifiedCoverage,
    class_conditional_coverage,
    mean_set_size,
    set_coverage,
    size_stratified_coverage,
)
from mcdrop.metrics._selective import (
    RiskCoverageCurve,
    aurc,
    excess_aurc,
    risk_coverage_curve,
    uncertainty_aupr,
    uncertainty_auroc,
)

__all__ = [
    # classification
    "negative_log_likelihood",
    "brier_score",
    "accuracy_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "classwise_calibration_error",
    "reliability_curve",
    "ReliabilityCurve",
    # selective prediction
    "risk_coverage_curve",
    "RiskCoverageCurve",
    "aurc",
    "excess_aurc",
    "uncertainty_auroc",
    "uncertainty_aupr",
    # out-of-distribution
    "ood_auroc",
    "ood_aupr",
    "fpr_at_95_tpr",
    # regression
    "gaussian_nll",
    "crps_gaussian",
    "crps_samples",
    "interval_coverage",
    "mean_interval_width",
    "pit_values",
    "quantile_calibration_curve",
    "QuantileCalibrationCurve",
    "miscalibration_area",
    "rmse",
    # prediction sets
    "set_coverage",
    "mean_set_size",
    "size_stratified_coverage",
    "SizeStratifiedCoverage",
    "class_conditional_coverage",
    "ClassConditionalCoverage",
    # which way each metric improves
    "DIRECTIONS",
    "HIGHER",
    "LOWER",
    "NEITHER",
]

#: ``{name: direction}`` of every public metric function: +1 higher is better, -1 lower is better, 0 neither.
DIRECTIONS = {name: value.direction for name, value in sorted(globals().items())
              if name in __all__ and callable(value) and hasattr(value, "direction")}

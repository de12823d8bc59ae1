"""``mcdrop.evaluate``: every relevant metric of one or several predictions, as one report object.

>>> import numpy as np
>>> from mcdrop.report import evaluate
>>> report = evaluate(np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), [0, 1, 1])
>>> report.metrics["model"]["accuracy"]
0.6666666666666666

The report prints as a table (one column per prediction), and writes ``to_dict``, ``to_json(path)`` and
``to_html(path)`` — one self-contained HTML file with the figures embedded as base64 PNG. Files are
written atomically (a temporary file in the same folder, then :func:`os.replace`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from mcdrop import metrics
from mcdrop._validation import check_choice, check_float, check_int, invalid
from mcdrop.metrics._common import (
    is_classification_prediction,
    is_regression_prediction,
    labels_and_probs,
    looks_like_probs,
    targets,
)

__all__ = ["evaluate", "EvaluationReport", "DIRECTIONS"]

#: Whether a higher (+1) or lower (-1) value is better; 0 for descriptive statistics.
DIRECTIONS = {
    "accuracy": +1, "nll": -1, "brier": -1, "ece": -1, "mce": -1, "classwise_ece": -1, "aurc": -1,
    "excess_aurc": -1, "error_auroc": +1, "error_aupr": +1, "mean_entropy": 0, "mean_mutual_information": 0,
    "rmse": -1, "gaussian_nll": -1, "mixture_nll": -1, "crps": -1, "coverage": 0, "coverage_error": -1,
    "interval_width": -1, "miscalibration_area": -1, "mean_std": 0, "num_samples": 0,
    "includes_aleatoric": 0,
}
TASKS = ("classification", "regression")
_EPISTEMIC_ONLY_NOTE = ("includes_aleatoric False: that spread is the model's (epistemic) uncertainty only, so its "
                        "intervals under-cover the targets; recalibrate with mcdrop.calibration.VarianceScaling "
                        "or use split-conformal intervals (mcdrop.conformal.ConformalRegressor).")


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one or several predictions on the same targets.

    Attributes
    ----------
    task : {"classification", "regression"}
    n_rows : int
    metrics : dict of str to dict of str to float or None
        ``metrics[model][metric]``; None where a metric does not apply (e.g. mutual information of plain
        probabilities, error AUROC when there is no error).
    options : dict
        The options the metrics were computed with (``n_bins``, ``level``).
    """

    task: str
    n_rows: int
    metrics: dict
    options: dict
    _predictions: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)
    _y_true: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def models(self) -> list[str]:
        return list(self.metrics)

    @property
    def metric_names(self) -> list[str]:
        return list(next(iter(self.metrics.values())))

    def best(self, metric: str) -> str | None:
        """The model with the best value of ``metric`` (None for descriptive metrics)."""
        direction = DIRECTIONS.get(metric, 0)
        values = {m: v[metric] for m, v in self.metrics.items() if v.get(metric) is not None}
        if direction == 0 or not values:
            return None
        pick = max if direction > 0 else min
        return pick(values, key=values.get)

    def _best_models(self, metric: str) -> set[str]:
        """Every model tied with the best value of ``metric`` (empty for one model or no direction)."""
        best = self.best(metric) if len(self.models) > 1 else None
        if best is None:
            return set()
        top = self.metrics[best][metric]
        return {m for m in self.models
                if self.metrics[m][metric] is not None and math.isclose(self.metrics[m][metric], top,
                                                                         rel_tol=1e-12, abs_tol=1e-15)}

    def __str__(self) -> str:
        rows = [["metric", *self.models]]
        for name in self.metric_names:
            arrow = {1: " (↑)", -1: " (↓)"}.get(DIRECTIONS.get(name, 0), "")
            best = self._best_models(name)
            cells = [_format(self.metrics[m][name]) + ("*" if m in best else "") for m in self.models]
            rows.append([name + arrow, *cells])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.task} report, {self.n_rows} rows"]
        for k, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        if any(v.get("includes_aleatoric") is False for v in self.metrics.values()):
            lines.append(_EPISTEMIC_ONLY_NOTE)
        if len(self.models) > 1:
            lines.append("* best")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: task, n_rows, options, models, metrics, directions."""
        return {
            "task": self.task,
            "n_rows": self.n_rows,
            "options": dict(self.options),
            "models": self.models,
            "metrics": {m: dict(v) for m, v in self.metrics.items()},
            "directions": {k: DIRECTIONS.get(k, 0) for k in self.metric_names},
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically."""
        _write_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def figures(self) -> dict[str, Any]:
        """The report's figures, by title (matplotlib Figure objects)."""
        if self._y_true is None:
            return {}
        from mcdrop import plotting

        out = {}
        y = self._y_true
        n_bins = self.options.get("n_bins", 15)
        if self.task == "classification":
            first = None
            for name, pred in self._predictions.items():
                disp = plotting.RiskCoverageDisplay.from_predictions(y, pred, name=name,
                                                                    ax=None if first is None else first.ax_)
                first = first or disp
            out["Risk–coverage"] = first.figure_
            for name, pred in self._predictions.items():
                out[f"Reliability: {name}"] = plotting.ReliabilityDisplay.from_predictions(
                    y, pred, n_bins=n_bins, name=name).figure_
                if 0 < self.metrics[name]["accuracy"] < 1:
                    out[f"Uncertainty: {name}"] = plotting.UncertaintyDisplay.from_predictions(
                        y, pred, name=name).figure_
        else:
            first = None
            for name, pred in self._predictions.items():
                disp = plotting.RegressionCalibrationDisplay.from_predictions(
                    y, pred, name=name, ax=None if first is None else first.ax_)
                first = first or disp
            out["Regression calibration"] = first.figure_
            for name, pred in self._predictions.items():
                out[f"Intervals: {name}"] = plotting.PredictionIntervalDisplay.from_predictions(
                    y, pred, level=self.options.get("level", 0.95), name=name).figure_
        return out

    def to_html(self, path: str | os.PathLike, *, figures: bool = True) -> None:
        """Write one self-contained HTML file: the metrics table and the figures as embedded PNG."""
        head = "".join(f"<th>{html.escape(m)}</th>" for m in self.models)
        body = []
        for name in self.metric_names:
            best = self._best_models(name)
            arrow = {1: " ↑", -1: " ↓"}.get(DIRECTIONS.get(name, 0), "")
            best_attr = ' class="best"'
            cells = "".join(
                f"<td{best_attr if m in best else ''}>{_format(self.metrics[m][name])}</td>"
                for m in self.models)
            body.append(f"<tr><th>{html.escape(name)}{arrow}</th>{cells}</tr>")
        images = []
        if figures:
            for title, fig in self.figures().items():
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", dpi=100)
                data = base64.b64encode(buffer.getvalue()).decode("ascii")
                images.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                              f"<figcaption>{html.escape(title)}</figcaption></figure>")
        options = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in self.options.items())
        document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mcdrop {self.task} report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
tr th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #eef6ee; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }}
img {{ max-width: 640px; }}
</style></head><body>
<h1>mcdrop {self.task} report</h1>
<p>{self.n_rows} rows; {options}. ↑ higher is better, ↓ lower is better; the best value is highlighted.</p>
<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{chr(10).join(images)}
</body></html>
"""
        _write_atomic(path, document)


def _format(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def _write_atomic(path, text: str) -> None:
    """All-or-nothing write, through the package's one implementation (:func:`mcdrop.io.save_text`)."""
    from mcdrop.io import save_text

    save_text(path, text)


def _as_prediction(value: Any, task: str | None, name: str):
    """A prediction object from a prediction, probabilities (N, C) / (T, N, C) or regression samples."""
    from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

    if is_classification_prediction(value) or is_regression_prediction(value):
        if task is not None and value.task != task:
            raise invalid(name, f"a {task} prediction", value, error=TypeError)
        return value
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
    if task == "regression":
        return RegressionPrediction.from_samples(array)
    if array.ndim == 2:
        return array  # probabilities (N, C): plain-array metrics
    return ClassificationPrediction.from_samples(array)


def _task_of(value: Any, y_true: Any) -> str:
    """The task of a prediction; for an array, classification when its last axis holds probability
    vectors and ``y_true`` holds integer-valued labels, regression otherwise."""
    task = getattr(value, "task", None)
    if task in TASKS:
        return task
    try:
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
        y = np.asarray(y_true, dtype=np.float64)
    except (TypeError, ValueError):
        return "classification"  # let the checks name the bad argument
    labels_like = y.ndim == 1 and bool(np.all(np.isfinite(y) & (y == np.round(y))))
    probs_like = array.ndim in (2, 3) and array.shape[-1] >= 2 and looks_like_probs(array)
    return "classification" if labels_like and probs_like else "regression"


def _optional(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


def _classification_metrics(y, pred, n_bins):
    from mcdrop.accumulators import entropy

    probs = pred.mean if is_classification_prediction(pred) else pred
    labels, probs = labels_and_probs(y, probs)
    is_error = np.argmax(probs, axis=1) != labels
    uncertainty = pred.entropy if is_classification_prediction(pred) else entropy(probs)
    mc = is_classification_prediction(pred)
    return {
        "accuracy": float(np.mean(~is_error)),
        "nll": metrics.negative_log_likelihood(labels, probs),
        "brier": metrics.brier_score(labels, probs),
        "ece": metrics.expected_calibration_error(labels, probs, n_bins=n_bins),
        "mce": metrics.maximum_calibration_error(labels, probs, n_bins=n_bins),
        "classwise_ece": metrics.classwise_calibration_error(labels, probs, n_bins=n_bins),
        "aurc": metrics.aurc(labels, probs),
        "excess_aurc": metrics.excess_aurc(labels, probs),
        "error_auroc": _optional(metrics.uncertainty_auroc, is_error, uncertainty),
        "error_aupr": _optional(metrics.uncertainty_aupr, is_error, uncertainty),
        "mean_entropy": float(np.mean(uncertainty)),
        "mean_mutual_information": float(np.mean(pred.mutual_information)) if mc else None,
        "num_samples": int(pred.num_samples) if mc else None,
    }


def _mixture_nll(y, pred) -> float | None:
    if not (pred.has_mixture and pred.heteroscedastic):
        return None
    from mcdrop.calibration import _components, _mixture_nll as nll

    return nll(_components(pred), y.reshape(pred.mean.shape), 1.0)


def _regression_metrics(y, pred, level):
    y = targets(y)
    coverage = metrics.interval_coverage(y.reshape(pred.mean.shape), pred, level=level)
    return {
        "rmse": metrics.rmse(y, pred),
        "gaussian_nll": metrics.gaussian_nll(y, pred) if np.all(pred.variance > 0) else None,
        "mixture_nll": _mixture_nll(y, pred),
        "crps": metrics.crps_samples(y, pred),
        "coverage": coverage,
        "coverage_error": abs(coverage - level),
        "interval_width": metrics.mean_interval_width(pred, level=level),
        "miscalibration_area": metrics.miscalibration_area(y, pred),
        "mean_std": float(np.mean(pred.std)),
        "num_samples": int(pred.num_samples),
        "includes_aleatoric": bool(pred.includes_aleatoric),
    }


def evaluate(prediction_or_predictions: Any, y_true: Any, *, n_bins: int = 15, level: float = 0.95,
             task: str | None = None) -> EvaluationReport:
    """Evaluate one prediction, or several side by side, on the same targets.

    Parameters
    ----------
    prediction_or_predictions : prediction, array, or dict of str to prediction/array
        A :class:`~mcdrop.predictive.ClassificationPrediction` or
        :class:`~mcdrop.predictive.RegressionPrediction`; class probabilities of shape (N, C) or per-pass
        probabilities (T, N, C); regression samples (T, N). A dict compares several (e.g. deterministic, MC,
        MC + temperature), keyed by the names shown in the table.
    y_true : array-like of shape (N,) or (N, D)
        Integer labels (classification) or targets (regression).
    n_bins : int, default 15
        Bins of the calibration errors.
    level : float, default 0.95
        Level of the regression prediction intervals.
    task : {"classification", "regression"}, optional
        Needed only for arrays whose task cannot be read from ``y_true``'s dtype (integer labels mean
        classification).

    Returns
    -------
    EvaluationReport

    Classification metrics: accuracy, nll, brier, ece, mce, classwise_ece, aurc, excess_aurc, error_auroc /
    error_aupr (predictive entropy as a detector of errors), mean_entropy, mean_mutual_information,
    num_samples. Regression: rmse, gaussian_nll (moment-matched), mixture_nll (exact, Gaussian head with
    kept samples), crps (of the mixture), coverage and coverage_error at ``level``, interval_width,
    miscalibration_area, mean_std, num_samples.
    """
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    level = check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    if task is not None:
        task = check_choice(task, "task", TASKS)
    if isinstance(prediction_or_predictions, Mapping):
        named = dict(prediction_or_predictions)
        if not named:
            raise invalid("prediction_or_predictions", "a non-empty dict of predictions", named)
        for key in named:
            if not isinstance(key, str):
                raise invalid("prediction_or_predictions", "a dict keyed by model names (str)", key,
                              error=TypeError)
    else:
        named = {"model": prediction_or_predictions}
    if task is None:
        task = _task_of(next(iter(named.values())), y_true)
    preds = {name: _as_prediction(p, task, f"prediction_or_predictions[{name!r}]") for name, p in named.items()}
    rows = {}
    for name, pred in preds.items():
        if task == "classification":
            if is_regression_prediction(pred):
                raise invalid(f"prediction_or_predictions[{name!r}]", "a classification prediction", pred,
                              error=TypeError)
            rows[name] = _classification_metrics(y_true, pred, n_bins)
        else:
            rows[name] = _regression_metrics(y_true, pred, level)
        for key, value in rows[name].items():
            if isinstance(value, float) and not math.isfinite(value):
                rows[name][key] = None
    n_rows = len(np.asarray(y_true))
    options = {"n_bins": n_bins} if task == "classification" else {"level": level}
    return EvaluationReport(task=task, n_rows=n_rows, metrics=rows, options=options,
                            _predictions=preds, _y_true=np.asarray(y_true))

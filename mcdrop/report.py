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

import dataclasses
import html
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from mcdrop import metrics
from mcdrop._validation import PROB_ATOL, check_choice, check_float, check_int, invalid
from mcdrop.heads import TASKS
from mcdrop.metrics._common import (
    is_classification_prediction,
    is_prediction,
    labels_and_probs,
    looks_like_probs,
    targets,
)
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["evaluate", "EvaluationReport", "DIRECTIONS"]

#: The metric behind each row of the table: a row's direction is that metric's ``direction``.
ROW_METRICS = {
    "accuracy": metrics.accuracy_score, "nll": metrics.negative_log_likelihood, "brier": metrics.brier_score,
    "ece": metrics.expected_calibration_error, "mce": metrics.maximum_calibration_error,
    "classwise_ece": metrics.classwise_calibration_error, "aurc": metrics.aurc, "excess_aurc": metrics.excess_aurc,
    "error_auroc": metrics.uncertainty_auroc, "error_aupr": metrics.uncertainty_aupr, "rmse": metrics.rmse,
    "gaussian_nll": metrics.gaussian_nll, "crps": metrics.crps_samples, "coverage": metrics.interval_coverage,
    "interval_width": metrics.mean_interval_width, "miscalibration_area": metrics.miscalibration_area,
}
#: Whether a higher (+1) or lower (-1) value is better; 0 for descriptive statistics. Read from the metrics
#: (``fn.direction``); the rows no public metric computes: the exact mixture NLL (a negative
#: log-likelihood), the distance of the coverage from its level, and descriptive statistics.
DIRECTIONS = {
    **{row: fn.direction for row, fn in ROW_METRICS.items()},
    "mixture_nll": metrics.negative_log_likelihood.direction, "coverage_error": metrics.LOWER,
    **dict.fromkeys(("mean_entropy", "mean_mutual_information", "mean_std", "num_samples", "includes_aleatoric"),
                    metrics.NEITHER),
}
_EPISTEMIC_ONLY_NOTE = ("includes_aleatoric False: that spread is the model's (epistemic) uncertainty only, so its "
                        "intervals under-cover the targets; recalibrate with mcdrop.calibration.VarianceScaling "
                        "or use split-conformal intervals (mcdrop.conformal.ConformalRegressor).")

#: Readable name and formula (plain text, shown one click away in the HTML report) of every metric.
METRIC_INFO = {
    "accuracy": ("accuracy", "(1/N) Σᵢ 1[ŷᵢ = yᵢ]: the share of rows whose most probable class is the label."),
    "nll": ("negative log-likelihood", "−(1/N) Σᵢ log p̄(yᵢ | xᵢ): the log loss of the predictive mean."),
    "brier": ("Brier score", "(1/N) Σᵢ Σ_c (p̄ᵢc − 1[yᵢ = c])², between 0 and 2."),
    "ece": ("expected calibration error",
            "Σₘ |Bₘ|/N · |acc(Bₘ) − conf(Bₘ)|, over equal-width bins Bₘ of the confidence maxᶜ p̄ᵢc."),
    "mce": ("maximum calibration error", "maxₘ |acc(Bₘ) − conf(Bₘ)| over the non-empty confidence bins."),
    "classwise_ece": ("classwise calibration error",
                      "the mean over classes c of the calibration error of the probabilities p̄ᵢc."),
    "aurc": ("area under the risk–coverage curve",
             "(1/N) Σₖ rₖ, rₖ the error rate among the k most confident rows."),
    "excess_aurc": ("excess AURC (above an oracle)",
                    "AURC − the AURC of an oracle that ranks every error below every correct row."),
    "error_auroc": ("error detection AUROC (by entropy)",
                    "P(u_wrong > u_right): how well the predictive entropy u ranks wrong rows above right ones."),
    "error_aupr": ("error detection average precision (by entropy)",
                   "Σₖ (Rₖ − Rₖ₋₁) Pₖ with the wrong rows as positives, ranked by predictive entropy."),
    "mean_entropy": ("mean predictive entropy (nats)", "(1/N) Σᵢ −Σ_c p̄ᵢc log p̄ᵢc."),
    "mean_mutual_information": ("mean mutual information (nats)",
                                "(1/N) Σᵢ H[p̄ᵢ] − (1/T) Σₜ H[pₜᵢ]: the part of the entropy the passes disagree on."),
    "num_samples": ("passes T", "the number of stochastic forward passes averaged."),
    "rmse": ("root mean squared error", "√((1/N) Σᵢ (yᵢ − μᵢ)²)."),
    "gaussian_nll": ("Gaussian negative log-likelihood",
                     "(1/N) Σᵢ ½ log(2πσᵢ²) + (yᵢ − μᵢ)²/(2σᵢ²), with the total variance σᵢ² (moment-matched)."),
    "mixture_nll": ("mixture negative log-likelihood",
                    "−(1/N) Σᵢ log (1/T) Σₜ N(yᵢ; μₜᵢ, σₜᵢ²): the exact density of the passes' Gaussians."),
    "crps": ("continuous ranked probability score", "E|X − y| − ½ E|X − X′|, X, X′ drawn from the prediction."),
    "coverage": ("interval coverage", "(1/N) Σᵢ 1[lᵢ ≤ yᵢ ≤ uᵢ]; aim: the nominal level."),
    "coverage_error": ("coverage error", "|coverage − level|."),
    "interval_width": ("mean interval width", "(1/N) Σᵢ (uᵢ − lᵢ) at the nominal level."),
    "miscalibration_area": ("miscalibration area",
                            "the mean gap between the observed share (1/N) Σᵢ 1[Fᵢ(yᵢ) ≤ τ] and τ over levels τ."),
    "mean_std": ("mean predictive standard deviation", "(1/N) Σᵢ σᵢ."),
}


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
    ood : dict
        ``ood[model][score]`` = ``{"auroc", "aupr", "fpr_at_95_tpr"}`` (None for a score the prediction
        cannot give) and ``ood[model]["n_rows"]``; empty unless ``evaluate(ood=...)``.
    conformal : dict
        ``conformal[model][method][alpha]`` = ``{"coverage", "mean_set_size"}`` (classification) or
        ``{"coverage", "mean_width"}`` (regression), None where there were too few calibration rows;
        empty unless ``evaluate(calibration=...)``.
    """

    task: str
    n_rows: int
    metrics: dict
    options: dict
    _predictions: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)
    _y_true: Any = dataclasses.field(repr=False, compare=False, default=None)
    #: ``ood[model][score]``: auroc, aupr and fpr_at_95_tpr of each uncertainty score (``evaluate(ood=...)``).
    ood: dict = dataclasses.field(default_factory=dict)
    #: ``conformal[model][method][alpha]``: coverage and mean set size / width (``evaluate(calibration=...)``).
    conformal: dict = dataclasses.field(default_factory=dict)
    _extras: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.metrics)

    @property
    def metric_names(self) -> list[str]:
        return list(next(iter(self.metrics.values())))

    @property
    def _kind(self) -> "_Task":
        """What the report computes and draws for its task."""
        return _KINDS[self.task]

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
        return "\n".join(lines) + _sections_text(self)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: task, n_rows, options, models, metrics, directions."""
        return {
            "task": self.task,
            "n_rows": self.n_rows,
            "options": dict(self.options),
            "models": self.models,
            "metrics": {m: dict(v) for m, v in self.metrics.items()},
            "directions": {k: DIRECTIONS.get(k, 0) for k in self.metric_names},
            **({"ood": self.ood} if self.ood else {}),
            **({"conformal": self.conformal} if self.conformal else {}),
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
        out.update(self._kind.figures(self, plotting))
        out.update(_sections_figures(self))
        return out

    def to_html(self, path: str | os.PathLike, *, figures: bool = True,
                provenance: Mapping[str, Any] | None = None) -> None:
        """Write one self-contained HTML file (no JavaScript, figures embedded as PNG), atomically.

        Parameters
        ----------
        path : str or path-like
        figures : bool, default True
        provenance : dict of str to value, optional
            Shown at the top under the versions and the date, e.g. ``{"model file": "model.keras"}``.
        """
        _write_atomic(path, self._html(figures=figures, provenance=provenance))

    def _html(self, *, figures: bool = True, provenance: Mapping[str, Any] | None = None) -> str:
        from mcdrop import _html

        rows = list((provenance or {}).items()) + self._run_provenance()
        return _html.page(f"mcdrop {self.task} report", self._sections(figures=figures), provenance=rows)

    def _run_provenance(self) -> list[tuple[str, str]]:
        """T, seed and mask mode of the MC predictions: one value when they agree, else one per model;
        models without it (plain probability arrays) are named."""
        out = []
        for label, attr in (("passes T", "num_samples"), ("seed", "seed"), ("mask mode", "mask")):
            values = {m: getattr(p, attr, None) for m, p in self._predictions.items()}
            known = {m: v for m, v in values.items() if v is not None}
            if not known:
                continue
            distinct = {str(v) for v in known.values()}
            text = distinct.pop() if len(distinct) == 1 else "; ".join(f"{m}: {v}" for m, v in known.items())
            missing = [m for m in values if m not in known]
            if missing:
                text += f" (none for {', '.join(missing)})"
            out.append((label, text))
        return out

    def _sections(self, *, figures: bool = True) -> list:
        """The HTML report's sections, in order (each a heading, what its numbers mean, and a body). A new
        part of the report is one more entry here."""
        out = [self._metrics_section()]
        # out-of-distribution and conformal results, when evaluate was given `ood=` / `calibration=`
        out.extend(section for section in (_ood_section(self), _conformal_section(self)) if section is not None)
        if figures:
            out.extend(self._figure_sections())
        out.append(self._configuration_section())
        return out

    def _metrics_section(self):
        from mcdrop._html import Section, escape, table

        several = len(self.models) > 1
        rows, best = [], []
        for name in self.metric_names:
            label, formula = METRIC_INFO.get(name, (name, ""))
            direction = {1: "higher is better", -1: "lower is better"}.get(DIRECTIONS.get(name, 0), "")
            if name == "coverage" and "level" in self.options:
                direction = f"best at the level, {self.options['level']:g}"
            arrow = {1: " ↑", -1: " ↓"}.get(DIRECTIONS.get(name, 0), "")
            cell = (f"<details><summary>{escape(label)}{arrow}</summary>"
                    f'<div class="formula">{escape(formula)} <code>{escape(name)}</code></div></details>'
                    f'<span class="dir">{direction}</span>')
            rows.append([cell, *(_format(self.metrics[m][name]) for m in self.models)])
            top = self._best_models(name)
            best.append([m in top for m in self.models])
        intro = ("Each row is a metric on the same " + f"{self.n_rows} rows; ↑ means higher is better, ↓ lower. "
                 "Click a metric's name for its formula.")
        if several:
            intro += " The best value of each row is highlighted."
        headers = ["metric", *(escape(m) for m in self.models)]
        return Section("Metrics", intro, table(headers, rows, best=best))

    def _figure_sections(self) -> list:
        from mcdrop._html import Section, figure, figures, png

        intros = {
            "Risk–coverage": ("Keep only the most confident rows: the error rate (risk) among the kept share "
                              "(coverage). Lower curves are better; AURC in the legend is the area under each."),
            "Reliability": ("Accuracy against confidence in bins: on the diagonal the confidences are honest; "
                            "bars below it are over-confident. Pale bins hold few rows; the histogram shows "
                            "where the rows are."),
            "Uncertainty": ("Predictive entropy (nats) of the correct and of the wrong predictions: the wider "
                            "apart, the better the uncertainty flags mistakes."),
            "Regression calibration": ("The observed share of targets below each predicted quantile against "
                                       "the nominal level: on the diagonal is calibrated."),
            "Intervals": ("Predictions with their intervals, sorted by the prediction; the share of targets "
                          "inside should match the level."),
            "Out-of-distribution": ("The best-separating score on these rows and on the out-of-distribution "
                                    "rows: the less the histograms overlap, the better."),
            "Conformal APS sets (alpha 0.1)": ("Coverage of the prediction sets by their size: an adaptive "
                                               "method covers about 1 − alpha at every size."),
        }
        groups: dict[str, list[str]] = {}
        for title, fig in self.figures().items():
            group = title.split(":")[0]
            groups.setdefault(group, []).append(figure(png(fig), title, "" if title == group else title))
        return [Section(group, intros.get(group, ""), figures(items)) for group, items in groups.items()]

    def _configuration_section(self):
        from mcdrop._html import Section, key_value_table

        labels = {"n_bins": "calibration bins", "level": "interval level", "calibration_rows": "calibration rows"}
        rows = [("task", self.task), ("rows", self.n_rows), ("models", ", ".join(self.models))]
        rows += [(labels.get(k, k), v) for k, v in self.options.items()]
        return Section("Configuration", "The options the metrics were computed with.", key_value_table(rows))


#: Readable names of the conformal methods.
_CONFORMAL_NAMES = {"lac": "LAC (least ambiguous sets)", "aps": "APS (adaptive sets, randomised)",
                    "normalized": "std-normalised intervals", "cqr": "CQR (conformalized quantile regression)"}


def _ood_section(report):
    """The out-of-distribution table, or None when ``evaluate`` was not given ``ood=``."""
    from mcdrop._html import Section, best_cells, escape, table
    from mcdrop.plotting import _score_label

    results = getattr(report, "ood", None)
    if not results:
        return None
    columns = tuple((key, label + {1: " ↑", -1: " ↓"}[fn.direction], fn.direction) for key, label, fn in (
        ("auroc", "AUROC", metrics.ood_auroc), ("aupr", "AUPR", metrics.ood_aupr),
        ("fpr_at_95_tpr", "FPR at 95% TPR", metrics.fpr_at_95_tpr)))
    keys = [(m, s) for m, scores in results.items() for s in scores if s != "n_rows"]
    raw = [[model, score, *(None if results[model][score] is None else results[model][score][k]
                            for k, _, _ in columns)] for model, score in keys]
    rows = [[escape(model), escape(_score_label(score)), *(_format(v) for v in values)]
            for model, score, *values in raw]
    best = best_cells(raw, [0, *(direction for _, _, direction in columns)])
    sizes = sorted({str(scores.get("n_rows")) for scores in results.values()})
    intro = (f"How well each uncertainty score tells these rows from the {'/'.join(sizes)} out-of-distribution "
             "rows given: AUROC and AUPR are higher for better (0.5 AUROC is chance), the false-positive rate "
             "at 95% of the out-of-distribution rows caught is lower for better. — means the prediction "
             "cannot give that score (plain probabilities have no mutual information).")
    if len(keys) > 1:
        intro += " The best value of each column is highlighted."
    headers = ["model", "score", *(escape(label) for _, label, _ in columns)]
    return Section("Out-of-distribution detection", intro, table(headers, rows, best=best))


def _conformal_section(report):
    """The conformal coverage table, or None when ``evaluate`` was not given ``calibration=``."""
    from mcdrop._html import Section, escape, table

    results = getattr(report, "conformal", None)
    if not results:
        return None
    size, size_label, what = _KINDS[report.task].conformal_size
    rows = []
    for model, methods in results.items():
        for method, by_alpha in methods.items():
            for alpha, values in by_alpha.items():
                rows.append([escape(model), escape(_CONFORMAL_NAMES.get(method, method)), escape(str(alpha)),
                             _format(1 - float(alpha)),
                             _format(None if values is None else values["coverage"]),
                             _format(None if values is None else values[size])])
    intro = (f"Prediction {what} calibrated on the held-out rows to contain the truth with probability at "
             "least 1 − alpha: the coverage on these rows should sit at or just above its target; among "
             f"{what} that cover, smaller is better. — means too few calibration rows for that alpha.")
    headers = ["model", "method", "alpha", "target coverage", "coverage", escape(size_label)]
    return Section("Conformal prediction", intro, table(headers, rows))


def _format(value) -> str:
    from mcdrop._text import format_value

    return "—" if value is None else format_value(value)


def _write_atomic(path, text: str) -> None:
    """All-or-nothing write, through the package's one implementation (:func:`mcdrop.io.save_text`)."""
    from mcdrop.io import save_text

    save_text(path, text)


def _as_prediction(value: Any, kind: "_Task", name: str):
    """A prediction of ``kind``'s type from a prediction, probabilities (N, C) / (T, N, C) or regression
    samples (probabilities (N, C) stay an array: plain-array metrics)."""
    if is_prediction(value):
        if not isinstance(value, kind.prediction):
            raise invalid(name, f"a {kind.prediction.task} prediction", value, error=TypeError)
        return value
    return kind.from_array(np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64))


def _task_of(value: Any, y_true: Any, name: str = "prediction_or_predictions") -> "_Task":
    """The task of a prediction; for an array, read from ``y_true`` and the values, never from a shape.

    Targets that are not all integers mean regression. Integer labels mean classification, and then the
    array must hold probability vectors along its last axis: anything else (scores, logits, integer-valued
    regression targets) raises, saying how to declare the task, rather than being guessed.
    """
    for kind in _KINDS.values():
        if isinstance(value, kind.prediction):
            return kind
    try:
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
        y = np.asarray(y_true, dtype=np.float64)
    except (TypeError, ValueError):
        return _CLASSIFICATION  # let the checks name the bad argument
    labels_like = y.ndim == 1 and bool(np.all(np.isfinite(y) & (y == np.round(y))))
    if not labels_like:
        return _REGRESSION  # the targets are not class labels
    if array.ndim in (2, 3) and array.shape[-1] >= 2 and looks_like_probs(array):
        return _CLASSIFICATION
    declare = ("Pass task='classification' after applying a softmax to scores or logits, or "
               "task='regression' if these are regression samples (T, N) for integer-valued targets.")
    if array.ndim in (2, 3) and array.shape[-1] >= 2 and np.all(np.isfinite(array)):
        sums = array.sum(axis=-1)
        off = np.abs(sums - 1.0) > PROB_ATOL
        if np.any(off):
            detail = (f"With integer labels this is read as class probabilities, but {int(off.sum())} of "
                      f"{off.size} row(s) do not sum to one (first: {sums[off].ravel()[0]:.6g}). {declare}")
        else:
            detail = (f"With integer labels this is read as class probabilities, but its values range over "
                      f"[{array.min():.4g}, {array.max():.4g}]. {declare}")
    else:
        detail = f"With integer labels the task cannot be read from this array. {declare}"
    raise invalid(name, "class probabilities of shape (N, C) or (T, N, C), or a declared task", array,
                  detail=detail)


def _optional(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


def _classification_metrics(y, pred, n_bins):
    from mcdrop._stats import entropy

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
             task: str | None = None, ood: Any = None, calibration: Any = None) -> EvaluationReport:
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
    ood : prediction, array, or dict of str to prediction/array, optional
        The same model's predictions on out-of-distribution inputs (a dict keyed by model name when
        several are evaluated). Adds the ``ood`` section: AUROC, AUPR and FPR at 95% TPR of separating
        them from the evaluated rows by each uncertainty score — ``max_probability`` (scored as
        1 − max p), ``entropy``, ``mutual_information``, ``variation_ratio`` for classification (the last
        two need MC predictions), ``variance`` and ``epistemic_variance`` for regression — and a figure.
    calibration : (prediction or dict of str to prediction, y_cal), optional
        Held-out calibration rows. Adds the ``conformal`` section: split conformal sets (LAC, and APS
        randomised with seed 0) or
        intervals (std-normalised, CQR) fitted on them, with their coverage and mean set size (width) on
        the evaluated rows at alpha 0.1 and 0.05 (see :mod:`mcdrop.conformal`). A level that needs more
        calibration rows than given is reported as None, with a warning.

    Returns
    -------
    EvaluationReport

    Classification metrics: accuracy, nll, brier, ece, mce, classwise_ece, aurc, excess_aurc, error_auroc /
    error_aupr (predictive entropy as a detector of errors), mean_entropy, mean_mutual_information,
    num_samples. Regression: rmse, gaussian_nll (moment-matched), mixture_nll (exact, Gaussian head with
    kept samples), crps (of the mixture), coverage and coverage_error at ``level``, interval_width,
    miscalibration_area, mean_std, num_samples.

    The task of a bare array (``task`` not given) is read from ``y_true`` and the values, never from the
    array's shape: targets that are not all integers mean regression; integer labels mean classification,
    and the array must then hold probabilities (each row along the last axis summing to one). Any other
    array raises a ``ValueError`` saying how many rows do not sum to one and how to declare the task, so
    an (N, C) array of scores is never evaluated as regression, N == C included.
    """
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    level = check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    kind = None if task is None else _KINDS[check_choice(task, "task", TASKS)]
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
    if kind is None:
        first = next(iter(named))
        kind = _task_of(named[first], y_true, "prediction_or_predictions" if len(named) == 1 and first == "model"
                        and not isinstance(prediction_or_predictions, Mapping)
                        else f"prediction_or_predictions[{first!r}]")
    preds = {name: _as_prediction(p, kind, f"prediction_or_predictions[{name!r}]") for name, p in named.items()}
    options = kind.options(n_bins=n_bins, level=level)
    rows = {}
    for name, pred in preds.items():
        rows[name] = kind.metrics(y_true, pred, **options)
        for key, value in rows[name].items():
            if isinstance(value, float) and not math.isfinite(value):
                rows[name][key] = None
    n_rows = len(np.asarray(y_true))
    ood_rows, conformal_rows, extra_options, extras = _sections(preds, kind, y_true, ood, calibration)
    options.update(extra_options)
    return EvaluationReport(task=kind.prediction.task, n_rows=n_rows, metrics=rows, options=options,
                            _predictions=preds, _y_true=np.asarray(y_true), ood=ood_rows,
                            conformal=conformal_rows, _extras=extras)


# ------------------------------------------------------------------------ out-of-distribution and conformal

#: Miscoverage levels of the conformal section (its methods are each task's ``conformal_methods``).
CONFORMAL_ALPHAS = (0.1, 0.05)
#: APS is randomised (its sets stay small for an accurate model), with a fixed seed so the report is reproducible.
CONFORMAL_OPTIONS = {"aps": {"randomized": True, "random_state": 0}}


def _ood_score(pred, score: str) -> np.ndarray | None:
    """Per-row score, higher = more likely out of distribution; None when the prediction cannot give it
    (mutual information and variation ratio of plain probabilities)."""
    from mcdrop._stats import entropy

    if score == "max_probability":
        probs = pred.mean if is_prediction(pred) else np.asarray(pred)
        return 1.0 - probs.max(axis=1)
    if is_prediction(pred):
        return pred.uncertainty(score)
    return entropy(np.asarray(pred)) if score == "entropy" else None


def _ood_metrics(pred, pred_ood, kind: "_Task") -> dict:
    out = {}
    for score in kind.ood_scores:
        u_in, u_out = _ood_score(pred, score), _ood_score(pred_ood, score)
        if u_in is None or u_out is None:
            out[score] = None
            continue
        out[score] = {
            "auroc": metrics.ood_auroc(u_in, u_out),
            "aupr": metrics.ood_aupr(u_in, u_out),
            "fpr_at_95_tpr": metrics.fpr_at_95_tpr(u_in, u_out),
        }
    return out


def _per_model(value: Any, models: list[str], name: str) -> dict:
    """``value`` for each model: a dict keyed by (some of) the model names, or one value for a single model."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in models]
        if unknown:
            raise invalid(name, f"a dict keyed by the evaluated models ({', '.join(map(repr, models))})",
                          unknown[0])
        return dict(value)
    if len(models) > 1:
        raise invalid(name, "a dict keyed by model name when several models are evaluated", value,
                      error=TypeError)
    return {models[0]: value}


def _conformal_metrics(pred, pred_cal, y_cal, y_test, kind: "_Task") -> dict:
    """Coverage and mean set size (mean interval width) on the test rows, per method and alpha; None where
    the calibration set is too small for that alpha (with a warning)."""
    import warnings

    from mcdrop import conformal

    out = {}
    for method in kind.conformal_methods:
        fitted = kind.conformal(method, CONFORMAL_ALPHAS[0])
        rows = {}
        for alpha in CONFORMAL_ALPHAS:
            need = conformal.min_calibration_size(alpha)
            if len(np.asarray(y_cal)) < need:
                warnings.warn(f"The conformal section has no row at alpha={alpha:g}: it needs at least {need} "
                              f"calibration rows, received {len(np.asarray(y_cal))}.", UserWarning, stacklevel=4)
                rows[f"{alpha:g}"] = None
                continue
            fitted.alpha = alpha
            fitted.fit(pred_cal, y_cal)
            rows[f"{alpha:g}"] = kind.conformal_row(fitted, pred, y_test)
        out[method] = rows
    return out


def _sections(prediction_models: dict, kind: "_Task", y_true, ood, calibration):
    """The out-of-distribution and conformal sections of :func:`evaluate`, their options, and the inputs
    their figures need."""
    models = list(prediction_models)
    ood_rows, conformal_rows, options = {}, {}, {}
    extras = {"ood": {}, "calibration": {}}
    if ood is not None:
        for name, value in _per_model(ood, models, "ood").items():
            pred_ood = _as_prediction(value, kind, f"ood[{name!r}]" if isinstance(ood, Mapping) else "ood")
            ood_rows[name] = _ood_metrics(prediction_models[name], pred_ood, kind)
            extras["ood"][name] = pred_ood
            ood_rows[name]["n_rows"] = len(pred_ood)
    if calibration is not None:
        if not (isinstance(calibration, (tuple, list)) and len(calibration) == 2):
            raise invalid("calibration", "a (prediction, labels) pair of calibration rows", calibration,
                          error=TypeError)
        cal_preds, y_cal = calibration
        for name, pred_cal in _per_model(cal_preds, models, "calibration").items():
            pred_cal = _as_prediction(pred_cal, kind, "calibration")
            conformal_rows[name] = _conformal_metrics(prediction_models[name], pred_cal, y_cal, y_true, kind)
            extras["calibration"][name] = (pred_cal, y_cal)
        options["calibration_rows"] = len(np.asarray(y_cal))
    return ood_rows, conformal_rows, options, extras


def _sections_text(report) -> str:
    from mcdrop._text import format_table

    lines = []
    if report.ood:
        lines += ["", "out-of-distribution detection (OOD rows positive; higher score = more OOD)"]
        head, rows = ("model", "score", "auroc", "aupr", "fpr@95tpr"), []
        for model, scores in report.ood.items():
            for score, values in scores.items():
                if score == "n_rows":
                    continue
                cells = ("—",) * 3 if values is None else tuple(
                    _format(values[k]) for k in ("auroc", "aupr", "fpr_at_95_tpr"))
                rows.append((model, score, *cells))
        lines += format_table(head, rows, left=2).splitlines()
    if report.conformal:
        size = _KINDS[report.task].conformal_size[0]
        lines += ["", "conformal prediction (coverage on these rows; target 1 - alpha)"]
        head, rows = ("model", "method", "alpha", "coverage", size.replace("_", " ")), []
        for model, methods in report.conformal.items():
            for method, by_alpha in methods.items():
                for alpha, values in by_alpha.items():
                    cells = ("—", "—") if values is None else (_format(values["coverage"]), _format(values[size]))
                    rows.append((model, method, alpha, *cells))
        lines += format_table(head, rows, left=2).splitlines()
    return "\n".join(lines)


def _sections_figures(report) -> dict:
    from mcdrop import plotting

    out = {}
    for model, scores in report.ood.items():
        usable = {s: v["auroc"] for s, v in scores.items() if s != "n_rows" and v is not None}
        if not usable:
            continue
        best = max(usable, key=usable.get)
        pred, pred_ood = report._predictions[model], report._extras["ood"][model]
        out[f"Out-of-distribution: {model}"] = plotting.UncertaintyDisplay(
            values=(_ood_score(pred, best), _ood_score(pred_ood, best)),
            labels=("in-distribution", "out-of-distribution"), xlabel=best.replace("_", " "),
            auroc=usable[best], name=model).plot().figure_
    out.update(report._kind.conformal_figures(report, plotting))
    return out


# ------------------------------------------------------------------------ what each task adds


class _Task:
    """What the report computes and draws for one prediction type: the type carries the task, so the
    report asks this object instead of comparing task names. A new task is one more subclass."""

    prediction: type
    #: Uncertainty scores of the out-of-distribution section (read by :func:`_ood_score`).
    ood_scores: tuple[str, ...]
    #: Methods of the conformal section.
    conformal_methods: tuple[str, ...]
    #: The size column of the conformal section: its key, its label, and what the method predicts.
    conformal_size: tuple[str, str, str]

    @staticmethod
    def options(*, n_bins: int, level: float) -> dict:
        raise NotImplementedError

    def conformal_figures(self, report, plotting) -> dict:
        return {}


class _ClassificationTask(_Task):
    prediction = ClassificationPrediction
    ood_scores = ("max_probability", "entropy", "mutual_information", "variation_ratio")
    conformal_methods = ("lac", "aps")
    conformal_size = ("mean_set_size", "mean set size ↓", "sets")

    @staticmethod
    def options(*, n_bins: int, level: float) -> dict:
        return {"n_bins": n_bins}

    @staticmethod
    def metrics(y_true, pred, *, n_bins: int) -> dict:
        return _classification_metrics(y_true, pred, n_bins)

    @staticmethod
    def from_array(array: np.ndarray):
        return array if array.ndim == 2 else ClassificationPrediction.from_samples(array)

    @staticmethod
    def conformal(method: str, alpha: float):
        from mcdrop import conformal

        return conformal.ConformalClassifier(method, alpha=alpha, **CONFORMAL_OPTIONS.get(method, {}))

    @staticmethod
    def conformal_row(fitted, pred, y_test) -> dict:
        sets = fitted.predict_sets(pred)
        return {"coverage": metrics.set_coverage(y_test, sets), "mean_set_size": metrics.mean_set_size(sets)}

    @staticmethod
    def figures(report, plotting) -> dict:
        """Risk–coverage (all models on one axes), then reliability and uncertainty per model."""
        y, out, first = report._y_true, {}, None
        for name, pred in report._predictions.items():
            disp = plotting.RiskCoverageDisplay.from_predictions(y, pred, name=name,
                                                                ax=None if first is None else first.ax_)
            first = first or disp
        out["Risk–coverage"] = first.figure_
        for name, pred in report._predictions.items():
            out[f"Reliability: {name}"] = plotting.ReliabilityDisplay.from_predictions(
                y, pred, n_bins=report.options.get("n_bins", 15), name=name).figure_
            if 0 < report.metrics[name]["accuracy"] < 1:
                out[f"Uncertainty: {name}"] = plotting.UncertaintyDisplay.from_predictions(
                    y, pred, name=name).figure_
        return out

    def conformal_figures(self, report, plotting) -> dict:
        """Coverage by set size of the APS sets at alpha 0.1, per model."""
        out = {}
        for model, methods in report.conformal.items():
            if methods.get("aps", {}).get("0.1") is None:
                continue
            pred_cal, y_cal = report._extras["calibration"][model]
            sets = self.conformal("aps", 0.1).fit(pred_cal, y_cal).predict_sets(report._predictions[model])
            out[f"Conformal APS sets (alpha 0.1): {model}"] = plotting.SetCoverageDisplay.from_predictions(
                report._y_true, sets, alpha=0.1, name=model).figure_
        return out


class _RegressionTask(_Task):
    prediction = RegressionPrediction
    ood_scores = ("variance", "epistemic_variance")
    conformal_methods = ("normalized", "cqr")
    conformal_size = ("mean_width", "mean interval width ↓", "intervals")

    @staticmethod
    def options(*, n_bins: int, level: float) -> dict:
        return {"level": level}

    @staticmethod
    def metrics(y_true, pred, *, level: float) -> dict:
        return _regression_metrics(y_true, pred, level)

    @staticmethod
    def from_array(array: np.ndarray):
        return RegressionPrediction.from_samples(array)

    @staticmethod
    def conformal(method: str, alpha: float):
        from mcdrop import conformal

        return conformal.ConformalRegressor(method, alpha=alpha)

    @staticmethod
    def conformal_row(fitted, pred, y_test) -> dict:
        lower, upper = fitted.predict_interval(pred)
        y = targets(y_test).reshape(lower.shape)
        return {"coverage": metrics.interval_coverage(y, lower, upper),
                "mean_width": metrics.mean_interval_width(lower, upper)}

    @staticmethod
    def figures(report, plotting) -> dict:
        """Regression calibration (all models on one axes), then the intervals per model."""
        y, out, first = report._y_true, {}, None
        for name, pred in report._predictions.items():
            disp = plotting.RegressionCalibrationDisplay.from_predictions(
                y, pred, name=name, ax=None if first is None else first.ax_)
            first = first or disp
        out["Regression calibration"] = first.figure_
        for name, pred in report._predictions.items():
            out[f"Intervals: {name}"] = plotting.PredictionIntervalDisplay.from_predictions(
                y, pred, level=report.options.get("level", 0.95), name=name).figure_
        return out


_CLASSIFICATION, _REGRESSION = _ClassificationTask(), _RegressionTask()
#: The report's tasks by name (the names are the prediction types' ``task``).
_KINDS = {kind.prediction.task: kind for kind in (_CLASSIFICATION, _REGRESSION)}

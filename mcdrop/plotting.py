"""Display objects for calibration and uncertainty plots, in scikit-learn's manner.

Each display is built from data with ``from_predictions(...)`` (or ``from_ood``), which computes the
curve with :mod:`mcdrop.metrics` and calls ``plot``; ``plot(ax=None)`` draws on the given axes or on a
new figure. The fitted artists are kept as attributes (``ax_``, ``figure_``, ...).

matplotlib is imported inside the functions, and new figures are created as
:class:`matplotlib.figure.Figure` objects, not through ``pyplot``: nothing here needs a display or
touches pyplot's global state, so plotting is safe on headless machines and in threads. Save with
``display.figure_.savefig(path)``; in Jupyter, show it with ``display.figure_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop import metrics
from mcdrop._text import format_value
from mcdrop._validation import check_int, check_same_length
from mcdrop.metrics._common import (
    is_classification_prediction,
    is_prediction,
    is_regression_prediction,
    labels_and_probs,
    scores,
    targets,
    uncertainty_of,
)

__all__ = [
    "ReliabilityDisplay",
    "RiskCoverageDisplay",
    "UncertaintyDisplay",
    "RegressionCalibrationDisplay",
    "PredictionIntervalDisplay",
    "SetCoverageDisplay",
]

_ERROR_COLOR = "#d62728"
_MAIN_COLOR = "#1f77b4"


def _new_figure(figsize=(5.0, 4.0)):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _axes(ax, figsize=(5.0, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


#: Readable names and units of the uncertainty scores (entropies are natural-log: nats).
_SCORES = {
    "entropy": ("predictive entropy", "nats"), "mutual_information": ("mutual information", "nats"),
    "expected_entropy": ("expected entropy", "nats"), "variation_ratio": ("variation ratio", "share of passes"),
    "variance": ("predictive variance", "output units²"), "epistemic_variance": ("epistemic variance", "output units²"),
    "aleatoric_variance": ("aleatoric variance", "output units²"), "std": ("predictive std", "output units"),
    "max_probability": ("1 − max probability", ""),
}


def _score_label(measure: str | None) -> str:
    """``"mutual information (nats)"`` for a known score; the name as given otherwise."""
    if measure in _SCORES:
        name, unit = _SCORES[measure]
        return f"{name} ({unit})" if unit else name
    return (measure or "uncertainty").replace("_", " ")


def _diagonal(ax) -> None:
    """The y = x reference line, drawn once per axes however many curves share it."""
    if not any(line.get_label() == "Perfect calibration" for line in ax.get_lines()):
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="Perfect calibration")


class ReliabilityDisplay:
    """Reliability diagram with gap bars, above a histogram of the top-label confidence.

    Parameters
    ----------
    confidence, accuracy : ndarray of shape (B,)
        Per-bin mean confidence and accuracy (NaN for empty bins).
    count : ndarray of shape (B,)
        Rows per bin.
    edges : ndarray of shape (B + 1,)
        Bin edges.
    ece : float, optional
        Shown in the title.
    name : str, optional
        Model name for the title.

    Examples
    --------
    >>> import numpy as np
    >>> disp = ReliabilityDisplay.from_predictions([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], n_bins=5)
    >>> disp.ax_.get_ylabel(), disp.hist_ax_.get_xlabel()
    ('Accuracy', 'Confidence')
    """

    def __init__(self, *, confidence, accuracy, count, edges, ece=None, name=None):
        self.confidence = np.asarray(confidence)
        self.accuracy = np.asarray(accuracy)
        self.count = np.asarray(count)
        self.edges = np.asarray(edges)
        self.ece = ece
        self.name = name

    @classmethod
    def from_predictions(cls, y_true: Any, probs: Any, *, n_bins: int = 15, strategy: str = "uniform",
                         name: str | None = None, ax=None, hist_ax=None) -> "ReliabilityDisplay":
        """Compute the reliability curve of ``probs`` (array (N, C) or ClassificationPrediction) and plot it."""
        curve = metrics.reliability_curve(y_true, probs, n_bins=n_bins, strategy=strategy)
        ece = metrics.expected_calibration_error(y_true, probs, n_bins=n_bins, strategy=strategy)
        return cls(confidence=curve.confidence, accuracy=curve.accuracy, count=curve.count,
                   edges=curve.edges, ece=ece, name=name).plot(ax=ax, hist_ax=hist_ax)

    def plot(self, ax=None, *, hist_ax=None) -> "ReliabilityDisplay":
        """Draw on ``ax`` (and the histogram on ``hist_ax``); with ``ax=None`` a new two-panel figure."""
        if ax is None:
            fig = _new_figure((5.0, 5.6))
            grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
            ax = fig.add_subplot(grid[0])
            hist_ax = fig.add_subplot(grid[1], sharex=ax)
        from matplotlib.colors import to_rgba
        from matplotlib.patches import Patch

        filled = self.count > 0
        left, width = self.edges[:-1], np.diff(self.edges)
        acc = np.where(filled, self.accuracy, 0.0)
        conf = np.where(filled, self.confidence, 0.0)
        # a bin's weight shows as its opacity: full for the fullest bin, pale for a handful of rows
        weight = 0.2 + 0.8 * np.sqrt(self.count / max(self.count.max(), 1))
        main = [to_rgba(_MAIN_COLOR, a) for a in weight[filled]]
        gap = [to_rgba(_ERROR_COLOR, 0.35 * a) for a in weight[filled]]
        ax.bar(left[filled], acc[filled], width=width[filled], align="edge", color=main,
               edgecolor="black", linewidth=0.6)
        gap_bottom = np.minimum(acc, conf)[filled]
        ax.bar(left[filled], np.abs(conf - acc)[filled], bottom=gap_bottom, width=width[filled], align="edge",
               color=gap, edgecolor=_ERROR_COLOR, hatch="//", linewidth=0.6)
        _diagonal(ax)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Accuracy")
        ax.set_xlabel("Confidence")
        title = "Reliability diagram" if self.name is None else f"Reliability: {self.name}"
        if self.ece is not None:
            title += f" (ECE {self.ece:.3f})"
        ax.set_title(title)
        # legend entries drawn exactly as the bars are (the gap's hatch and edge included)
        handles = [
            ax.get_lines()[0] if ax.get_lines() else None,
            Patch(facecolor=to_rgba(_MAIN_COLOR, 1.0), edgecolor="black", linewidth=0.6,
                  label="Accuracy (paler: fewer rows)"),
            Patch(facecolor=to_rgba(_ERROR_COLOR, 0.35), edgecolor=_ERROR_COLOR, hatch="//", linewidth=0.6,
                  label="Gap to confidence"),
        ]
        ax.legend(handles=[h for h in handles if h is not None], loc="upper left", fontsize="x-small")
        self.ax_, self.hist_ax_, self.figure_ = ax, hist_ax, ax.figure
        if hist_ax is not None:
            self._histogram(hist_ax, acc, conf)
            ax.set_xlabel("")
        return self

    def _histogram(self, hist_ax, acc: np.ndarray, conf: np.ndarray) -> None:
        """The share of rows per bin under the diagram, with the mean accuracy and confidence marked."""
        left, width = self.edges[:-1], np.diff(self.edges)
        total = max(self.count.sum(), 1)
        fraction = self.count / total
        hist_ax.bar(left, fraction, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.6)
        mean_conf = np.sum(conf * self.count) / total
        mean_acc = np.sum(acc * self.count) / total
        hist_ax.axvline(mean_acc, color=_MAIN_COLOR, linestyle="-", label=f"Accuracy {mean_acc:.3f}")
        hist_ax.axvline(mean_conf, color=_ERROR_COLOR, linestyle="--", label=f"Mean conf. {mean_conf:.3f}")
        if fraction.max() >= 0.5:
            # one bar holding most rows would flatten the others to nothing on a linear axis
            hist_ax.set_yscale("log")
            hist_ax.set_ylim(0.5 / total, 1.5)
            hist_ax.set_ylabel("Fraction of rows\n(log scale)")
        else:
            hist_ax.set_ylabel("Fraction of rows")
        hist_ax.set_xlabel("Confidence")
        hist_ax.legend(loc="upper left", fontsize="x-small")


class RiskCoverageDisplay:
    """Selective risk against coverage (Geifman & El-Yaniv, 2017); call repeatedly on one ``ax`` to compare.

    Parameters
    ----------
    coverage, risk : ndarray of shape (N,)
    aurc : float, optional
    name : str, optional
    """

    def __init__(self, *, coverage, risk, aurc=None, name=None):
        self.coverage = np.asarray(coverage)
        self.risk = np.asarray(risk)
        self.aurc = aurc
        self.name = name

    @classmethod
    def from_predictions(cls, y_true: Any, probs: Any, *, uncertainty: Any = None, measure: str | None = None,
                         name: str | None = None, ax=None) -> "RiskCoverageDisplay":
        """Rank by confidence (or by ``uncertainty``) and plot the risk–coverage curve."""
        curve = metrics.risk_coverage_curve(y_true, probs, uncertainty=uncertainty, measure=measure)
        return cls(coverage=curve.coverage, risk=curve.risk, aurc=float(np.mean(curve.risk)),
                   name=name).plot(ax=ax)

    def plot(self, ax=None, *, zoom: bool = True) -> "RiskCoverageDisplay":
        """Draw the curve on ``ax`` (a new figure if None). With ``zoom``, the x axis starts a little before
        the smallest coverage at which any curve on ``ax`` has a nonzero risk, when that is above 0.3: the
        curves differ only there."""
        fig, ax = _axes(ax)
        label = self.name or "model"
        if self.aurc is not None:
            label += f" (AURC {format_value(self.aurc)})"
        ax.plot(self.coverage, self.risk, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Coverage")
        ax.set_ylabel("Selective risk (error rate)")
        ax.set_title("Risk–coverage")
        if zoom:
            _zoom_risk_coverage(ax)
        ax.legend(loc="upper left")
        self.ax_, self.figure_ = ax, fig
        return self


def _zoom_risk_coverage(ax) -> None:
    starts, tops = [], []
    for line in ax.get_lines():
        x, y = (np.asarray(v, dtype=np.float64) for v in line.get_data())
        nonzero = np.flatnonzero(y > 0)
        if nonzero.size:
            starts.append(x[nonzero[0]])
            tops.append(y.max())
    if not starts or min(starts) <= 0.3:
        return
    start = max(0.0, min(starts) - 0.05 * (1.0 - min(starts)) - 0.01)
    ax.set_xlim(start, 1.0)
    ax.set_ylim(0, 1.1 * max(tops))
    ax.set_xlabel(f"Coverage (zoomed: every curve is 0 below {min(starts):.2f})")


class UncertaintyDisplay:
    """Histograms of an uncertainty score in two groups: correct vs wrong, or in- vs out-of-distribution.

    Parameters
    ----------
    values : tuple of two ndarrays
        The scores of the two groups.
    labels : tuple of two str
        Their legend labels.
    xlabel : str
        The score's name.
    auroc : float, optional
        AUROC of the score separating the groups (second group positive), shown in the title.
    """

    def __init__(self, *, values, labels=("correct", "wrong"), xlabel="uncertainty", auroc=None, name=None):
        self.values = tuple(np.asarray(v) for v in values)
        self.labels = tuple(labels)
        self.xlabel = xlabel
        self.auroc = auroc
        self.name = name

    @classmethod
    def from_predictions(cls, y_true: Any, prediction: Any, *, measure: str | None = None,
                         n_bins: int = 30, name: str | None = None, ax=None) -> "UncertaintyDisplay":
        """Uncertainty of correct vs wrong predictions. For a ClassificationPrediction ``measure`` picks the
        score (default entropy); for probabilities (N, C) the predictive entropy is used."""
        from mcdrop._stats import entropy

        labels, probs = labels_and_probs(y_true, prediction)
        if is_classification_prediction(prediction):
            u = uncertainty_of(prediction, "prediction", measure)
            measure = measure or prediction.uncertainty_measures[0]
        else:
            u, measure = entropy(probs), "entropy"
        wrong = np.argmax(probs, axis=1) != labels
        auroc = metrics.uncertainty_auroc(wrong, u) if 0 < wrong.sum() < wrong.size else None
        return cls(values=(u[~wrong], u[wrong]), labels=("correct", "wrong"),
                   xlabel=_score_label(measure), auroc=auroc, name=name).plot(ax=ax, n_bins=n_bins)

    @classmethod
    def from_ood(cls, uncertainty_in: Any, uncertainty_out: Any, *, measure: str | None = None,
                 n_bins: int = 30, name: str | None = None, ax=None) -> "UncertaintyDisplay":
        """Uncertainty on in-distribution vs out-of-distribution inputs (arrays or predictions)."""
        u_in = uncertainty_of(uncertainty_in, "uncertainty_in", measure)
        u_out = uncertainty_of(uncertainty_out, "uncertainty_out", measure)
        if measure is None and is_prediction(uncertainty_in):
            measure = uncertainty_in.uncertainty_measures[0]  # what uncertainty_of read: the default
        return cls(values=(u_in, u_out), labels=("in-distribution", "out-of-distribution"),
                   xlabel=_score_label(measure),
                   auroc=metrics.ood_auroc(u_in, u_out), name=name).plot(ax=ax, n_bins=n_bins)

    def plot(self, ax=None, *, n_bins: int = 30) -> "UncertaintyDisplay":
        n_bins = check_int(n_bins, "n_bins", minimum=1)
        fig, ax = _axes(ax)
        nonempty = [v for v in self.values if v.size]
        lo = min(v.min() for v in nonempty)
        hi = max(v.max() for v in nonempty)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, n_bins + 1)
        for values, label, color in zip(self.values, self.labels, (_MAIN_COLOR, _ERROR_COLOR)):
            if values.size:
                ax.hist(values, bins=bins, density=True, alpha=0.45, color=color,
                        label=f"{label} (n={values.size})")
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel("Density")
        score = self.xlabel[:1].upper() + self.xlabel[1:]
        title = score if self.name is None else f"{self.name}: {self.xlabel}"
        if self.auroc is not None:
            title += f"\nAUROC {self.auroc:.3f}"
        ax.set_title(title)
        ax.legend()
        self.ax_, self.figure_ = ax, fig
        return self


class RegressionCalibrationDisplay:
    """Observed vs expected quantile levels of the predictive mixture (Kuleshov et al., 2018).

    Parameters
    ----------
    expected, observed : ndarray of shape (L,)
    area : float, optional
        Miscalibration area, shown in the legend.
    name : str, optional
    """

    def __init__(self, *, expected, observed, area=None, name=None):
        self.expected = np.asarray(expected)
        self.observed = np.asarray(observed)
        self.area = area
        self.name = name

    @classmethod
    def from_predictions(cls, y_true: Any, prediction_or_samples: Any, *, n_levels: int = 21,
                         name: str | None = None, ax=None) -> "RegressionCalibrationDisplay":
        curve = metrics.quantile_calibration_curve(y_true, prediction_or_samples, n_levels=n_levels)
        area = metrics.miscalibration_area(y_true, prediction_or_samples)
        return cls(expected=curve.expected, observed=curve.observed, area=area, name=name).plot(ax=ax)

    def plot(self, ax=None) -> "RegressionCalibrationDisplay":
        fig, ax = _axes(ax, (4.6, 4.4))
        label = self.name or "model"
        if self.area is not None:
            label += f" (area {self.area:.3f})"
        (line,) = ax.plot(self.expected, self.observed, marker="o", markersize=3, label=label)
        ax.fill_between(self.expected, self.expected, self.observed, color=line.get_color(), alpha=0.15)
        _diagonal(ax)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("Expected proportion below quantile")
        ax.set_ylabel("Observed proportion")
        ax.set_title("Regression calibration")
        ax.legend(loc="upper left")
        self.ax_, self.figure_ = ax, fig
        return self


class PredictionIntervalDisplay:
    """Central prediction intervals against the truth, rows ordered by the predictive mean (or by ``x``).

    Parameters
    ----------
    x, y_true, mean, lower, upper : ndarray of shape (M,)
        Already ordered and subsampled.
    level : float
    coverage : float, optional
    name : str, optional
    """

    def __init__(self, *, x, y_true, mean, lower, upper, level, coverage=None, name=None, xlabel="Rank"):
        self.x, self.y_true, self.mean = np.asarray(x), np.asarray(y_true), np.asarray(mean)
        self.lower, self.upper = np.asarray(lower), np.asarray(upper)
        self.level, self.coverage, self.name, self.xlabel = level, coverage, name, xlabel

    @classmethod
    def from_predictions(cls, y_true: Any, prediction: Any, *, level: float = 0.95, x: Any = None,
                         output: int = 0, max_points: int = 200, name: str | None = None,
                         ax=None) -> "PredictionIntervalDisplay":
        """Intervals of a RegressionPrediction (or samples (T, N)) at ``level``, for output ``output``.

        Without ``x`` rows are sorted by predictive mean and ``max_points`` of them, evenly spaced in that
        order, are drawn; with ``x`` (shape (N,)) they are drawn against it.
        """
        from mcdrop.predictive import RegressionPrediction

        max_points = check_int(max_points, "max_points", minimum=1)
        if not is_regression_prediction(prediction):
            prediction = RegressionPrediction.from_samples(prediction)
        y = targets(y_true)
        y = y.reshape(prediction.mean.shape)
        output = check_int(output, "output", minimum=0, maximum=prediction.mean.shape[1] - 1)
        lower, upper = prediction.interval(level)
        coverage = metrics.interval_coverage(y[:, output], lower[:, output], upper[:, output])
        mean = prediction.mean[:, output]
        if x is None:
            order, xlabel = np.argsort(mean, kind="stable"), "Rows ordered by predicted mean"
            keep = order[np.unique(np.linspace(0, order.size - 1, min(max_points, order.size)).astype(int))]
            xs = np.arange(keep.size)
        else:
            xv = scores(x, "x")
            check_same_length(y_true=y, x=xv)
            order, xlabel = np.argsort(xv, kind="stable"), "x"
            keep = order
            xs = xv[keep]
        return cls(x=xs, y_true=y[keep, output], mean=mean[keep], lower=lower[keep, output],
                   upper=upper[keep, output], level=level, coverage=coverage, name=name,
                   xlabel=xlabel).plot(ax=ax)

    def plot(self, ax=None) -> "PredictionIntervalDisplay":
        fig, ax = _axes(ax, (6.4, 4.0))
        inside = (self.lower <= self.y_true) & (self.y_true <= self.upper)
        ax.fill_between(self.x, self.lower, self.upper, color=_MAIN_COLOR, alpha=0.25, step="mid",
                        label=f"{self.level:.0%} interval")
        ax.plot(self.x, self.mean, color=_MAIN_COLOR, linewidth=1.0, label="Predicted mean")
        ax.scatter(self.x[inside], self.y_true[inside], s=9, color="black", label="Truth (inside)", zorder=3)
        ax.scatter(self.x[~inside], self.y_true[~inside], s=12, color=_ERROR_COLOR, marker="x",
                   label="Truth (outside)", zorder=3)
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel("Target")
        title = "Prediction intervals" if self.name is None else f"Prediction intervals: {self.name}"
        if self.coverage is not None:
            title += f" (coverage {self.coverage:.3f})"
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize="small")
        self.ax_, self.figure_ = ax, fig
        return self


class SetCoverageDisplay:
    """Coverage of prediction sets against their size, with the number of rows of each size.

    An adaptive method (APS, or LAC on MC-averaged probabilities) should cover about evenly across set
    sizes; a method that meets ``1 - alpha`` only on average over-covers the large sets and under-covers
    the small ones (Angelopoulos et al., 2021).

    Parameters
    ----------
    size, coverage, count : ndarray of shape (K,)
        From :func:`~mcdrop.metrics.size_stratified_coverage`.
    target : float, optional
        The promised coverage ``1 - alpha``, drawn as a line.
    overall : float, optional
        The marginal coverage, shown in the title.
    name : str, optional

    Examples
    --------
    >>> disp = SetCoverageDisplay.from_predictions([0, 1], [[True, False], [True, True]], alpha=0.1)
    >>> disp.coverage.tolist()
    [1.0, 1.0]
    """

    def __init__(self, *, size, coverage, count, target=None, overall=None, name=None):
        self.size = np.asarray(size)
        self.coverage = np.asarray(coverage)
        self.count = np.asarray(count)
        self.target = target
        self.overall = overall
        self.name = name

    @classmethod
    def from_predictions(cls, y_true: Any, sets: Any, *, alpha: float | None = None, name: str | None = None,
                         ax=None) -> "SetCoverageDisplay":
        """Stratify ``sets`` (bool, (N, C)) by size and plot; ``alpha`` draws the ``1 - alpha`` target."""
        from mcdrop._validation import check_float

        target = None
        if alpha is not None:
            target = 1.0 - check_float(alpha, "alpha", low=0.0, high=1.0, low_inclusive=False,
                                       high_inclusive=False)
        curve = metrics.size_stratified_coverage(y_true, sets)
        return cls(size=curve.size, coverage=curve.coverage, count=curve.count, target=target,
                   overall=metrics.set_coverage(y_true, sets), name=name).plot(ax=ax)

    def plot(self, ax=None) -> "SetCoverageDisplay":
        fig, ax = _axes(ax)
        bars = ax.bar(self.size, self.coverage, color=_MAIN_COLOR, alpha=0.7, width=0.8)
        for bar, n in zip(bars, self.count):
            ax.annotate(f"n={int(n)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        if self.target is not None:
            ax.axhline(self.target, linestyle="--", color="gray", label=f"target {self.target:.2f}")
            ax.legend(loc="lower right")
        ax.set_ylim(0, 1.08)
        ax.set_xticks(self.size)
        ax.set_xlabel("Set size")
        ax.set_ylabel("Coverage")
        details = [d for d in (self.name, None if self.overall is None else f"overall {self.overall:.3f}") if d]
        title = "Coverage by set size" + ("\n" + ", ".join(details) if details else "")
        ax.set_title(title)
        self.ax_, self.figure_ = ax, fig
        return self

r"""Regression metrics: proper scores, interval quality and quantile calibration.

Functions that take ``prediction_or_samples`` work on the predictive *mixture* over Monte Carlo passes,
not on a Gaussian fitted to it: a :class:`~mcdrop.predictive.RegressionPrediction` contributes its exact
mixture CDF (:meth:`~mcdrop.predictive.RegressionPrediction.cdf`), and a samples array ``(T, N)`` or
``(T, N, D)`` is read as the empirical distribution of the T pass outputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import special

from mcdrop._validation import check_array, check_float, check_int, invalid
from mcdrop.metrics._common import LOWER, NEITHER, better, is_regression_prediction, same_shape, targets

__all__ = [
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
]

_SQRT_PI = np.sqrt(np.pi)


class QuantileCalibrationCurve(NamedTuple):
    """Observed against expected frequency of ``y <= F^{-1}(p)`` (Kuleshov et al., 2018)."""

    expected: np.ndarray  # (L,) the levels p in [0, 1]
    observed: np.ndarray  # (L,) fraction of PIT values <= p


def _mean_and_spread(y_true, mean, spread, spread_name):
    """Checked targets, means and spreads of one shape; a RegressionPrediction supplies the last two."""
    y = targets(y_true)
    if is_regression_prediction(mean):
        prediction = mean
        mean = prediction.mean
        if spread is None:
            spread = prediction.variance if spread_name == "variance" else prediction.std
    mean = same_shape(y, "y_true", check_array(mean, "mean", ndim=(1, 2)), "mean")
    if spread is None:
        raise invalid(spread_name, f"an array of {spread_name}s (or a prediction as `mean`)", spread,
                      error=TypeError)
    spread = same_shape(y, "y_true", check_array(spread, spread_name, ndim=(1, 2)), spread_name)
    return y, mean, spread


@better(LOWER)
def gaussian_nll(y_true: Any, mean: Any, variance: Any = None) -> float:
    r"""Mean negative log-likelihood of the targets under independent Gaussians.

    .. math::

        \mathrm{NLL} = \frac1N \sum_i \Big[\tfrac12 \log(2\pi\sigma_i^2) + \frac{(y_i - \mu_i)^2}{2\sigma_i^2}\Big]

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    mean : array-like of the same shape, or RegressionPrediction
        Predictive means; a prediction supplies its mean and total variance (the moment-matched Gaussian).
    variance : array-like of the same shape, optional
        Predictive variances, all > 0. Required unless ``mean`` is a prediction.

    Returns
    -------
    float
        Averaged over rows and output dimensions, in nats.

    Examples
    --------
    >>> round(gaussian_nll([0.0], [0.0], [1.0]), 6)  # log(2 pi) / 2
    0.918939
    """
    y, mean, variance = _mean_and_spread(y_true, mean, variance, "variance")
    if np.any(variance <= 0):
        raise invalid("variance", "variances > 0", variance, detail=f"The smallest is {variance.min():.4g}.")
    return float(np.mean(0.5 * (np.log(2 * np.pi * variance) + (y - mean) ** 2 / variance)))


def _crps_normal(error: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E|X - y| for X ~ N(mu, std^2) at error = y - mu (std = 0 gives |error|)."""
    safe = np.where(std > 0, std, 1.0)
    z = error / safe
    value = error * (2 * special.ndtr(z) - 1) + 2 * safe * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return np.where(std > 0, value, np.abs(error))


@better(LOWER)
def crps_gaussian(y_true: Any, mean: Any, std: Any = None) -> float:
    r"""Continuous ranked probability score of Gaussian predictions, in closed form (lower is better).

    .. math::

        \mathrm{CRPS}(\mathcal N(\mu, \sigma^2), y) = \sigma\Big[z\big(2\Phi(z) - 1\big) + 2\varphi(z)
        - \frac{1}{\sqrt\pi}\Big],\qquad z = \frac{y - \mu}{\sigma}

    (Gneiting & Raftery, 2007, eq. 21), averaged over rows. ``std = 0`` gives the absolute error.

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    mean : array-like of the same shape, or RegressionPrediction
        A prediction supplies its mean and total standard deviation.
    std : array-like of the same shape, optional
        Predictive standard deviations, >= 0.

    Examples
    --------
    >>> round(crps_gaussian([0.0], [0.0], [1.0]), 6)  # (2 - sqrt 2) / sqrt(2 pi)
    0.233695
    """
    y, mean, std = _mean_and_spread(y_true, mean, std, "std")
    if np.any(std < 0):
        raise invalid("std", "standard deviations >= 0", std, detail=f"The smallest is {std.min():.4g}.")
    return float(np.mean(_crps_normal(y - mean, std) - std / _SQRT_PI))


def _samples_like(y: np.ndarray, samples: Any, name: str) -> np.ndarray:
    samples = check_array(samples, name, ndim=(2, 3))
    if samples.shape[1:] != y.shape:
        if samples.shape[1] == y.shape[0] and samples[0].size == y.size:
            return samples.reshape((samples.shape[0], *y.shape))
        raise invalid(name, f"samples of shape (T, {', '.join(map(str, y.shape))})", samples)
    return samples


def _crps_empirical(y: np.ndarray, samples: np.ndarray) -> np.ndarray:
    t = samples.shape[0]
    ordered = np.sort(samples, axis=0)
    weights = (2 * np.arange(t) - t + 1).reshape((t,) + (1,) * y.ndim)
    spread = np.sum(weights * ordered, axis=0) / t**2  # = E|X - X'| / 2
    return np.mean(np.abs(samples - y[None]), axis=0) - spread


def _crps_gaussian_mixture(y: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Exact CRPS of the equal-weight mixture of T Gaussians (Grimit et al., 2006), chunked over rows."""
    t = means.shape[0]
    std = np.sqrt(variances)
    first = np.mean(_crps_normal(y[None] - means, std), axis=0)
    second = np.empty_like(y)
    flat_m = means.reshape(t, -1)
    flat_v = variances.reshape(t, -1)
    out = second.reshape(-1)
    step = max(1, 4_000_000 // (t * t))
    for start in range(0, flat_m.shape[1], step):
        m = flat_m[:, start:start + step]
        v = flat_v[:, start:start + step]
        pair = _crps_normal(m[:, None] - m[None, :], np.sqrt(v[:, None] + v[None, :]))
        out[start:start + step] = pair.mean(axis=(0, 1))
    return first - 0.5 * second


@better(LOWER)
def crps_samples(y_true: Any, samples: Any) -> float:
    r"""CRPS of the predictive mixture over passes (lower is better).

    For samples :math:`x_1..x_T` (the empirical distribution, i.e. the mixture of point masses):

    .. math::

        \mathrm{CRPS}(\hat F, y) = \frac1T\sum_t |x_t - y| - \frac{1}{2T^2}\sum_{t,s} |x_t - x_s|

    computed in :math:`O(T \log T)` per row from the sorted samples (Gneiting & Raftery, 2007, eq. 20).
    For a :class:`~mcdrop.predictive.RegressionPrediction` with a Gaussian head and kept samples, the
    mixture :math:`\frac1T\sum_t \mathcal N(\mu_t, \sigma_t^2)` is scored exactly with
    :math:`\mathbb E|X - y| - \tfrac12 \mathbb E|X - X'|` in closed form (Grimit et al., 2006); without
    kept samples the moment-matched Gaussian is used (:func:`crps_gaussian`).

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    samples : array-like of shape (T, N) or (T, N, D), or RegressionPrediction

    Returns
    -------
    float
        Averaged over rows and output dimensions.

    Examples
    --------
    >>> crps_samples([0.0], [[1.0], [-1.0]])  # E|X - y| = 1, E|X - X'| = 1
    0.5
    """
    y = targets(y_true)
    if is_regression_prediction(samples):
        prediction = samples
        if not prediction.has_mixture:
            return crps_gaussian(y, prediction)
        means = _samples_like(y, prediction.samples, "samples")
        if prediction.heteroscedastic:
            variances = _samples_like(y, prediction.sample_variances, "samples")
            return float(np.mean(_crps_gaussian_mixture(y, means, variances)))
        return float(np.mean(_crps_empirical(y, means)))
    return float(np.mean(_crps_empirical(y, _samples_like(y, samples, "samples"))))


def _interval(lower, upper, level):
    if is_regression_prediction(lower):
        if upper is not None:
            raise invalid("upper", "None when `lower` is a prediction", upper, error=TypeError)
        level = check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        lower, upper = lower.interval(level)
    lower = check_array(lower, "lower", ndim=(1, 2))
    if upper is None:
        raise invalid("upper", "an array of upper bounds (or a prediction as `lower`)", upper, error=TypeError)
    upper = same_shape(lower, "lower", check_array(upper, "upper", ndim=(1, 2)), "upper")
    if np.any(lower > upper):
        raise invalid("upper", "upper bounds >= the lower bounds", upper,
                      detail=f"{int(np.sum(lower > upper))} interval(s) have lower > upper.")
    return lower, upper


@better(NEITHER)
def interval_coverage(y_true: Any, lower: Any, upper: Any = None, *, level: float = 0.95) -> float:
    r"""Fraction of targets inside their prediction interval (closed at both ends).

    .. math::

        \mathrm{coverage} = \frac1N \sum_i \mathbb 1[\ell_i \le y_i \le u_i]

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    lower : array-like of the same shape, or RegressionPrediction
        Lower bounds; a prediction gives its central interval at ``level`` (mixture quantiles when its
        samples were kept).
    upper : array-like of the same shape
        Upper bounds; omit with a prediction.
    level : float, default 0.95
        Only used with a prediction.

    Examples
    --------
    >>> interval_coverage([0.0, 2.0], [-1.0, -1.0], [1.0, 1.0])
    0.5
    """
    lower, upper = _interval(lower, upper, level)
    y = same_shape(lower, "lower", targets(y_true), "y_true")
    return float(np.mean((lower <= y) & (y <= upper)))


@better(LOWER)
def mean_interval_width(lower: Any, upper: Any = None, *, level: float = 0.95) -> float:
    r"""Mean width :math:`\frac1N\sum_i (u_i - \ell_i)` of prediction intervals (sharpness).

    Parameters
    ----------
    lower : array-like of shape (N,) or (N, D), or RegressionPrediction
    upper : array-like of the same shape; omit with a prediction
    level : float, default 0.95
        Only used with a prediction.

    Examples
    --------
    >>> mean_interval_width([-1.0, 0.0], [1.0, 1.0])
    1.5
    """
    lower, upper = _interval(lower, upper, level)
    return float(np.mean(upper - lower))


@better(NEITHER)
def pit_values(y_true: Any, prediction_or_samples: Any) -> np.ndarray:
    r"""Probability integral transform :math:`u_i = F_i(y_i)` under the predictive mixture, shape of ``y_true``.

    For a prediction: :meth:`~mcdrop.predictive.RegressionPrediction.cdf` (the exact Gaussian mixture for
    a Gaussian head). For samples ``(T, N[, D])``: the empirical CDF :math:`\frac1T\#\{t : x_t \le y\}`,
    which only takes the values k/T — use many passes.

    Examples
    --------
    >>> pit_values([0.5], [[0.0], [1.0]]).tolist()
    [0.5]
    """
    y = targets(y_true)
    if is_regression_prediction(prediction_or_samples):
        u = np.asarray(prediction_or_samples.cdf(y.reshape(prediction_or_samples.mean.shape)))
        return u.reshape(y.shape)
    samples = _samples_like(y, prediction_or_samples, "prediction_or_samples")
    return np.mean(samples <= y[None], axis=0)


@better(NEITHER)
def quantile_calibration_curve(y_true: Any, prediction_or_samples: Any, *,
                               n_levels: int = 21) -> QuantileCalibrationCurve:
    r"""Regression calibration curve (Kuleshov, Fenner & Ermon, 2018).

    For each expected level :math:`p`, the observed frequency of targets at or below the predictive
    :math:`p`-quantile, read from the PIT values :math:`u_i = F_i(y_i)` of the predictive mixture:

    .. math::

        \hat P(p) = \frac1N \sum_i \mathbb 1[u_i \le p]

    A calibrated model has :math:`\hat P(p) = p`.

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    prediction_or_samples : RegressionPrediction, or array-like of shape (T, N) or (T, N, D)
    n_levels : int, default 21
        Number of levels, evenly spaced on [0, 1] (>= 2).

    Returns
    -------
    QuantileCalibrationCurve
        ``expected`` (L,), ``observed`` (L,).

    Examples
    --------
    >>> quantile_calibration_curve([0.5], [[0.0], [1.0]], n_levels=3).observed.tolist()
    [0.0, 1.0, 1.0]
    """
    n_levels = check_int(n_levels, "n_levels", minimum=2)
    u = np.sort(pit_values(y_true, prediction_or_samples).ravel())
    expected = np.linspace(0.0, 1.0, n_levels)
    observed = np.searchsorted(u, expected, side="right") / u.size
    return QuantileCalibrationCurve(expected, observed)


@better(LOWER)
def miscalibration_area(y_true: Any, prediction_or_samples: Any) -> float:
    r"""Area between the regression calibration curve and the diagonal, computed exactly.

    With :math:`G(p) = \frac1N\#\{i : u_i \le p\}` the empirical CDF of the PIT values,

    .. math::

        A = \int_0^1 \big| G(p) - p \big|\, dp \in [0, \tfrac12]

    integrated segment by segment between the sorted :math:`u_{(k)}` (on each, :math:`G = k/N`), so no
    grid of levels is involved (Kuleshov et al., 2018; the area form as in Chung et al., 2021).

    Examples
    --------
    >>> miscalibration_area([0.5], [[0.0], [1.0]])
    0.25
    """
    u = np.sort(pit_values(y_true, prediction_or_samples).ravel())
    m = u.size
    a = np.r_[0.0, u]
    b = np.r_[u, 1.0]
    c = np.arange(m + 1) / m

    def primitive(x):  # integral of |c - p| over [0, x]
        return np.where(x <= c, c * x - 0.5 * x * x, 0.5 * c * c + 0.5 * (x - c) ** 2)

    return float(np.sum(primitive(b) - primitive(a)))


@better(LOWER)
def rmse(y_true: Any, mean: Any) -> float:
    r"""Root mean squared error of the predictive mean.

    .. math::

        \mathrm{RMSE} = \Big(\frac1N \sum_i (y_i - \mu_i)^2\Big)^{1/2}

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, D)
    mean : array-like of the same shape, or RegressionPrediction

    Examples
    --------
    >>> rmse([0.0, 0.0], [3.0, -3.0])
    3.0
    """
    y = targets(y_true)
    if is_regression_prediction(mean):
        mean = mean.mean
    mean = same_shape(y, "y_true", check_array(mean, "mean", ndim=(1, 2)), "mean")
    return float(np.sqrt(np.mean((y - mean) ** 2)))

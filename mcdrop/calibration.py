r"""Post-hoc recalibration fitted on held-out data: temperature and vector scaling for classifiers,
variance scaling for regression.

Monte Carlo predictions are recalibrated *pass by pass*: the map is applied to the logits of every pass
and the calibrated probabilities are the average of the per-pass softmaxes,

.. math::

    \bar p(x) = \frac1T \sum_{t=1}^T \operatorname{softmax}\big(g(z_t(x))\big),

so the fitted map sees (and is fitted against) the same averaging the prediction uses. Per-pass
probabilities stand in for logits through :math:`z_t = \log p_t`, which is exact up to a per-row
constant that softmax ignores.

Every fit minimises the negative log-likelihood on the data it is given and keeps the identity map
whenever the identity scores at least as well, so the NLL on the fitting data never rises.

References: Guo, Pleiss, Sun & Weinberger (2017), *On calibration of modern neural networks*, ICML
(temperature and vector scaling); Laves, Ihler, Fast, Kahrs & Ortmaier (2020), *Well-calibrated regression
uncertainty in medical imaging with deep learning*, MIDL (σ scaling); Kuleshov, Fenner & Ermon (2018).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
from scipy import optimize

from mcdrop._validation import (
    check_array,
    check_choice,
    check_float,
    check_int,
    check_labels,
    check_probs,
    check_same_length,
    invalid,
)
from mcdrop.metrics._common import (
    is_classification_prediction,
    is_prediction,
    is_regression_prediction,
    looks_like_probs,
)

__all__ = ["TemperatureScaling", "VectorScaling", "VarianceScaling", "CalibrationWarning"]


class CalibrationWarning(UserWarning):
    """A recalibration map was fitted, but the validation data could not identify it well: the optimum
    sits on a search bound, or the set has too few errors (or too few correct rows) to pin it down."""


INPUTS = ("auto", "logits", "probs")

#: Log-scale search interval for temperature and variance factors: [1e-4, 1e4], 33 grid points
#: (neighbours a factor of about 1.8 apart).
_LOG_BOUNDS = (np.log(1e-4), np.log(1e4))
_GRID = 33


def _minimise_log_scale(objective, bounds: tuple[float, float] = _LOG_BOUNDS) -> tuple[float, float]:
    """Minimise a 1-D objective of log(scale) over ``bounds`` (in logs): coarse grid (robust to poor
    starts), then bounded Brent."""
    grid = np.linspace(*bounds, _GRID)
    values = np.array([objective(u) for u in grid])
    values = np.where(np.isfinite(values), values, np.inf)
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    result = optimize.minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                                      options={"xatol": 1e-6})
    if np.isfinite(result.fun) and result.fun <= values[i]:
        return float(result.x), float(result.fun)
    return float(grid[i]), float(values[i])


# --- classification ------------------------------------------------------------------------------

def _pass_logits(x: Any, inputs: str, name: str = "x") -> np.ndarray:
    """Per-pass logits of shape (T, N, C), float64, from a prediction or an (N, C) / (T, N, C) array."""
    inputs = check_choice(inputs, "inputs", INPUTS)
    if is_classification_prediction(x):
        if x.samples is None:
            raise invalid(name, "a prediction with per-pass samples (or its `mean` as an (N, C) array)", x,
                          detail="MC recalibration scales every pass; predict with the samples kept.")
        probs = check_probs(x.samples, name, ndim=3)
        return np.log(np.maximum(probs, np.finfo(np.float64).tiny))
    if is_prediction(x):
        raise invalid(name, "classification outputs", x, error=TypeError)
    array = check_array(x, name, ndim=(2, 3))
    if array.shape[-1] < 2:
        raise invalid(name, "at least two classes on the last axis", array)
    if array.ndim == 2:
        array = array[None]
    if inputs == "probs" or (inputs == "auto" and looks_like_probs(array)):
        array = check_probs(array, name, ndim=3)
        return np.log(np.maximum(array, np.finfo(np.float64).tiny))
    return array


def _logsumexp(z: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(z))) along ``axis``, stable; plain numpy (several times faster than scipy's here)."""
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - _logsumexp(z, axis=-1, keepdims=True)


def _mc_nll(scaled: np.ndarray, labels: np.ndarray) -> float:
    """NLL of the average over passes of softmax(scaled), scaled of shape (T, N, C)."""
    t, n, _ = scaled.shape
    picked = scaled[:, np.arange(n), labels] - _logsumexp(scaled, axis=-1)  # (T, N) log p_t(y)
    return float(-np.mean(_logsumexp(picked, axis=0) - np.log(t)))


class _LogitScaler:
    """Shared fit / transform for maps applied to each pass's logits."""

    def _apply(self, logits: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit(self, logits: np.ndarray, labels: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet; call `fit` first.")

    def fit(self, x: Any, y_true: Any, *, inputs: str = "auto"):
        """Fit on validation data by minimising the NLL of the pass-averaged calibrated probabilities.

        Parameters
        ----------
        x : ClassificationPrediction with samples, or array-like of shape (N, C) or (T, N, C)
            Logits or probabilities, per pass for MC predictions.
        y_true : array-like of shape (N,)
            Integer labels.
        inputs : {"auto", "logits", "probs"}, default "auto"
            How to read an array: ``"auto"`` treats it as probabilities when every row is a probability
            vector, as logits otherwise.

        Returns
        -------
        self
        """
        logits = _pass_logits(x, inputs)
        labels = check_labels(y_true, "y_true", n_classes=logits.shape[-1])
        check_same_length(y_true=labels, x=logits[0])
        self.n_classes_ = logits.shape[-1]
        self.nll_before_ = _mc_nll(logits, labels)
        self._fit(logits, labels)
        self.nll_after_ = _mc_nll(self._apply(logits), labels)
        self.fitted_ = True
        return self

    def transform(self, x: Any, *, inputs: str = "auto") -> np.ndarray:
        """Calibrated probabilities of shape (N, C): each pass scaled, then averaged over passes.

        Parameters
        ----------
        x : ClassificationPrediction with samples, or array-like of shape (N, C) or (T, N, C)
        inputs : {"auto", "logits", "probs"}, default "auto"

        Returns
        -------
        ndarray of shape (N, C)
        """
        self._check_fitted()
        logits = _pass_logits(x, inputs)
        if logits.shape[-1] != self.n_classes_:
            raise invalid("x", f"{self.n_classes_} classes on the last axis, as in `fit`", logits)
        return np.exp(_log_softmax(self._apply(logits))).mean(axis=0)

    def fit_transform(self, x: Any, y_true: Any, *, inputs: str = "auto") -> np.ndarray:
        """``fit(x, y_true)`` then ``transform(x)``."""
        return self.fit(x, y_true, inputs=inputs).transform(x, inputs=inputs)

    def transform_prediction(self, prediction: Any):
        """A new :class:`~mcdrop.predictive.ClassificationPrediction` built from the calibrated passes,
        so that entropy, mutual information and votes reflect the recalibration."""
        from mcdrop.predictive import ClassificationPrediction

        self._check_fitted()
        logits = _pass_logits(prediction, "auto", "prediction")
        passes = np.exp(_log_softmax(self._apply(logits)))
        return ClassificationPrediction.from_samples(passes, mask=prediction.mask, seed=prediction.seed)


class TemperatureScaling(_LogitScaler):
    r"""One temperature :math:`\tau > 0` dividing every logit of every pass (Guo et al., 2017).

    .. math::

        \bar p_\tau(x) = \frac1T\sum_{t=1}^T \operatorname{softmax}(z_t(x) / \tau),\qquad
        \hat\tau = \arg\min_{\tau_{\min} \le \tau \le \tau_{\max}}
        -\frac1N \sum_i \log \bar p_\tau(x_i)_{y_i} + \frac{(\log\tau)^2}{2 s^2 N}

    The penalty is a log-normal prior on :math:`\tau` centred on 1 with scale :math:`s` (``prior_scale``):
    the fit is the maximum a posteriori temperature. On a large validation set it is negligible; on a few
    rows, or a set with no errors — where the NLL of MC passes keeps falling as :math:`\tau \to 0`, each
    pass turning one-hot and the average a vote share — it keeps the temperature near 1 instead of letting
    it run to the bound. The search runs over :math:`\log\tau` in ``bounds`` on a coarse grid, then bounded
    Brent; :math:`\tau = 1` is kept when it is at least as good, so the penalised NLL on the fitting data
    never rises. Temperature scaling preserves each pass's argmax; the argmax of the pass average can
    change.

    A :class:`CalibrationWarning` says when the fit is weaker than it looks: the optimum sits on a bound,
    or the validation set has fewer than ``min_errors`` misclassified rows (or fewer than ``min_errors``
    correct ones) to identify a temperature. With fewer than ``min_errors`` misclassified rows no
    temperature is fitted at all (it stays 1): on such a set the NLL keeps falling as every pass is
    sharpened, and the fitted temperature makes held-out predictions worse (the demo measured it).

    Parameters
    ----------
    bounds : tuple of two floats, default (0.05, 20.0)
        The search interval :math:`[\tau_{\min}, \tau_{\max}]`, with :math:`0 < \tau_{\min} < 1 <
        \tau_{\max}`.
    prior_scale : float or None, default 0.5
        Standard deviation :math:`s` of the prior on :math:`\log\tau`; None fits the plain maximum
        likelihood temperature.
    min_errors : int, default 20
        Fewest misclassified (and fewest correctly classified) validation rows for a fit without a warning;
        with fewer misclassified rows the temperature stays 1. ``min_errors=0`` always fits.

    Attributes
    ----------
    temperature_ : float
        The fitted temperature; > 1 softens overconfident predictions.
    nll_before_, nll_after_ : float
        NLL on the fitting data at :math:`\tau = 1` and at the fitted temperature.
    n_errors_ : int
        Misclassified validation rows (argmax of the pass average at :math:`\tau = 1`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(5000, 4)) * 3
    >>> p = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)
    >>> y = (rng.random((5000, 1)) > p.cumsum(1)).sum(1)   # labels drawn at temperature 2
    >>> round(TemperatureScaling().fit(logits, y).temperature_, 1)
    2.0
    """

    #: The default search interval for the temperature.
    DEFAULT_BOUNDS = (0.05, 20.0)

    def __init__(self, *, bounds: tuple[float, float] = DEFAULT_BOUNDS, prior_scale: float | None = 0.5,
                 min_errors: int = 20):
        expected = "two temperatures 0 < low < 1 < high, as a (low, high) tuple"
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise invalid("bounds", expected, bounds) from None
        if not (np.isfinite(high) and 0 < low < 1 < high):
            raise invalid("bounds", expected, bounds)
        self.bounds = (low, high)
        self.prior_scale = None if prior_scale is None else check_float(
            prior_scale, "prior_scale", low=0.0, low_inclusive=False)
        self.min_errors = check_int(min_errors, "min_errors", minimum=0)

    def _apply(self, logits):
        return logits / self.temperature_

    def _fit(self, logits, labels):
        t, n, _ = logits.shape
        # max_c(z / tau) = max_c(z) / tau for tau > 0: shift once, then each evaluation is one
        # multiply, exp and sum over a preallocated buffer
        shifted = logits - logits.max(axis=-1, keepdims=True)  # (T, N, C), <= 0
        picked = shifted[:, np.arange(n), labels]  # (T, N)
        buffer = np.empty_like(shifted)
        weight = 0.0 if self.prior_scale is None else 1.0 / (2.0 * self.prior_scale ** 2 * n)

        def objective(u):
            k = np.exp(-u)
            np.multiply(shifted, k, out=buffer)
            np.exp(buffer, out=buffer)
            log_p = k * picked - np.log(buffer.sum(axis=-1))  # (T, N) per-pass log p_t(y)
            return float(-np.mean(_logsumexp(log_p, axis=0) - np.log(t))) + weight * u * u

        log_bounds = (float(np.log(self.bounds[0])), float(np.log(self.bounds[1])))
        mean = np.exp(_log_softmax(logits)).mean(axis=0)
        self.n_errors_ = int(np.sum(mean.argmax(axis=-1) != labels))
        if self.n_errors_ < self.min_errors:
            # too few errors to identify a temperature: a fit would follow the degenerate direction
            # (sharper passes always look better on a set the model gets right), so none is applied
            self.temperature_, log_t = 1.0, 0.0
        else:
            log_t, best = _minimise_log_scale(objective, log_bounds)
            self.temperature_ = float(np.exp(log_t)) if best < self.nll_before_ else 1.0
        self._warn(n, log_t, log_bounds)

    def _warn(self, n: int, log_t: float, log_bounds: tuple[float, float]) -> None:
        rows = f"{n} validation row{'s' if n != 1 else ''}"
        fitted = f"temperature {self.temperature_:.4g}"
        few = [f"{count} {what}" for count, what in ((self.n_errors_, "misclassified"),
                                                   (n - self.n_errors_, "correctly classified"))
               if count < self.min_errors]
        if few:
            if self.n_errors_ < self.min_errors:
                outcome = ("no temperature was fitted: it stays 1 (pass min_errors=0 to fit one anyway, and "
                           "compare the NLL on held-out data with and without it)")
            else:
                held = " (held near 1 by its prior)" if self.prior_scale is not None else ""
                outcome = (f"{fitted}{held} may not help on new data; compare the NLL on held-out data with and "
                           "without it")
            warnings.warn(
                f"TemperatureScaling was fitted on {rows} with {' and '.join(few)}: fewer than "
                f"min_errors={self.min_errors} are too few to identify a temperature; {outcome}. Fit on a "
                "larger validation set.", CalibrationWarning, stacklevel=4)
        for side, bound, value in (("lower", log_bounds[0], self.bounds[0]),
                                   ("upper", log_bounds[1], self.bounds[1])):
            if self.temperature_ != 1.0 and abs(log_t - bound) < 1e-3:
                warnings.warn(
                    f"TemperatureScaling's optimum sits on its {side} bound {value:g} ({fitted}, fitted on "
                    f"{rows}): the best temperature may lie beyond it. Check the inputs are logits or "
                    "probabilities as declared, or widen `bounds`.", CalibrationWarning, stacklevel=4)


class VectorScaling(_LogitScaler):
    r"""Per-class scale and bias on every pass's logits (Guo et al., 2017).

    .. math::

        \bar p(x) = \frac1T\sum_{t=1}^T \operatorname{softmax}\big(w \odot z_t(x) + b\big),
        \qquad w, b \in \mathbb R^C

    fitted by L-BFGS from the identity (:math:`w = 1, b = 0`) with the analytic gradient of the NLL of
    the pass average; the identity is kept when it scores at least as well. It can change the predicted
    class, unlike temperature scaling.

    Attributes
    ----------
    scale_ : ndarray of shape (C,)
    bias_ : ndarray of shape (C,)
    nll_before_, nll_after_ : float
    """

    def _apply(self, logits):
        return logits * self.scale_ + self.bias_

    def _fit(self, logits, labels):
        t, n, c = logits.shape
        rows = np.arange(n)

        def objective(theta):
            w, b = theta[:c], theta[c:]
            logp = _log_softmax(logits * w + b)
            picked = logp[:, rows, labels]  # (T, N)
            mix = _logsumexp(picked, axis=0)
            value = -np.mean(mix - np.log(t))
            resp = np.exp(picked - mix)  # (T, N) responsibility of each pass for the true class
            delta = -np.exp(logp) * resp[..., None]
            delta[:, rows, labels] += resp
            delta *= -1.0 / n  # d value / d scaled logits
            return value, np.r_[np.sum(delta * logits, axis=(0, 1)), np.sum(delta, axis=(0, 1))]

        start = np.r_[np.ones(c), np.zeros(c)]
        result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                   options={"maxiter": 500})
        if np.isfinite(result.fun) and result.fun < self.nll_before_:
            self.scale_, self.bias_ = result.x[:c].copy(), result.x[c:].copy()
        else:
            self.scale_, self.bias_ = np.ones(c), np.zeros(c)


# --- regression ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Components:
    """The predictive distribution as equal-weight Gaussian components about a center."""

    center: np.ndarray  # (N, D)
    means: np.ndarray  # (K, N, D)
    stds: np.ndarray  # (K, N, D)


def _components(prediction: Any) -> _Components:
    if is_regression_prediction(prediction):
        center = prediction.mean
        if prediction.has_mixture and prediction.heteroscedastic:
            return _Components(center, prediction.samples, np.sqrt(prediction.sample_variances))
        # a point-mass mixture has no density: fit on its moment-matched Gaussian
        return _Components(center, center[None], prediction.std[None])
    if isinstance(prediction, tuple) and len(prediction) == 2:
        mean = check_array(prediction[0], "mean", ndim=(1, 2))
        std = check_array(prediction[1], "std", ndim=(1, 2))
        if std.shape != mean.shape:
            raise invalid("std", f"an array of the mean's shape {mean.shape}", std)
        if np.any(std < 0):
            raise invalid("std", "standard deviations >= 0", std)
        mean2, std2 = (mean[:, None], std[:, None]) if mean.ndim == 1 else (mean, std)
        return _Components(mean2, mean2[None], std2[None])
    raise invalid("prediction", "a RegressionPrediction or a (mean, std) tuple of arrays", prediction,
                  error=TypeError)


def _mixture_nll(comp: _Components, y: np.ndarray, scale: float) -> float:
    means = comp.center[None] + scale * (comp.means - comp.center[None])
    stds = np.maximum(scale * comp.stds, 1e-300)
    z = (y[None] - means) / stds
    logpdf = -0.5 * z * z - np.log(stds) - 0.5 * np.log(2 * np.pi)
    k = comp.means.shape[0]
    return float(-np.mean(_logsumexp(logpdf, axis=0) - np.log(k)))


class VarianceScaling:
    r"""One factor :math:`s > 0` on the predictive spread of a regression model (σ scaling).

    Every component of the predictive mixture is stretched about the predictive mean :math:`\mu`:

    .. math::

        \mu_t \mapsto \mu + s(\mu_t - \mu),\qquad \sigma_t \mapsto s\,\sigma_t,

    which maps the whole predictive CDF to :math:`F_s(y) = F\big(\mu + (y - \mu)/s\big)`: the mean is
    unchanged, the epistemic and aleatoric variances are multiplied by :math:`s^2`, and the shape of the
    mixture is kept. :math:`\hat s` minimises the NLL of the validation targets,

    .. math::

        \hat s = \arg\min_s -\frac1N\sum_i \log \frac1T \sum_t
        \mathcal N\big(y_i;\ \mu_i + s(\mu_{t,i} - \mu_i),\ s^2\sigma_{t,i}^2\big),

    searched in :math:`\log s` on :math:`[10^{-4}, 10^4]`; :math:`s = 1` is kept when it is at least as
    good. For a single Gaussian this is :math:`\hat s^2 = \frac1N\sum_i (y_i-\mu_i)^2/\sigma_i^2`.

    Which density is fitted:

    * a :class:`~mcdrop.predictive.RegressionPrediction` with a Gaussian head and kept samples — the exact
      mixture of the T per-pass Gaussians;
    * a plain head (per-pass means only) or a prediction without samples — the moment-matched Gaussian
      :math:`\mathcal N(\mu, \sigma^2)` (point masses have no density); :meth:`transform` still stretches
      the kept pass means, so the empirical mixture is scaled exactly;
    * a ``(mean, std)`` tuple of arrays — that Gaussian.

    Attributes
    ----------
    scale_ : float
        The fitted factor on standard deviations (variances scale by ``scale_ ** 2``).
    nll_before_, nll_after_ : float
    """

    def fit(self, prediction: Any, y_true: Any):
        """Fit on validation data.

        Parameters
        ----------
        prediction : RegressionPrediction, or tuple (mean, std) of arrays of shape (N,) or (N, D)
        y_true : array-like of shape (N,) or (N, D)

        Returns
        -------
        self
        """
        comp = _components(prediction)
        y = check_array(y_true, "y_true", ndim=(1, 2))
        if y.ndim == 1:
            y = y[:, None]
        check_same_length(y_true=y, prediction=comp.center)
        if y.shape != comp.center.shape:
            raise invalid("y_true", f"targets of shape {comp.center.shape}", y)
        self.nll_before_ = _mixture_nll(comp, y, 1.0)
        log_s, best = _minimise_log_scale(lambda u: _mixture_nll(comp, y, float(np.exp(u))))
        self.scale_ = float(np.exp(log_s)) if best < self.nll_before_ else 1.0
        self.nll_after_ = _mixture_nll(comp, y, self.scale_)
        self.fitted_ = True
        return self

    def transform(self, prediction: Any):
        """The rescaled prediction: a new RegressionPrediction, or ``(mean, scale_ * std)`` for a tuple."""
        if not getattr(self, "fitted_", False):
            raise RuntimeError("This VarianceScaling is not fitted yet; call `fit` first.")
        s = self.scale_
        if is_regression_prediction(prediction):
            center = prediction.mean
            return dataclasses.replace(
                prediction,
                epistemic_variance=prediction.epistemic_variance * s * s,
                aleatoric_variance=prediction.aleatoric_variance * s * s,
                samples=None if prediction.samples is None
                else center[None] + s * (prediction.samples - center[None]),
                sample_variances=None if prediction.sample_variances is None
                else prediction.sample_variances * s * s,
                includes_aleatoric=True,  # the spread is fitted to observed targets, noise and all
            )
        _components(prediction)  # validates the tuple
        mean, std = prediction
        return np.asarray(mean, dtype=np.float64), s * np.asarray(std, dtype=np.float64)

    def fit_transform(self, prediction: Any, y_true: Any):
        """``fit(prediction, y_true)`` then ``transform(prediction)``."""
        return self.fit(prediction, y_true).transform(prediction)

r"""Split conformal prediction sets and intervals from Monte Carlo predictions.

A model's spread is not a coverage guarantee. Split conformal prediction turns any score of how badly
a candidate answer fits into a set (classification) or an interval (regression) that contains the truth
with probability at least :math:`1 - \alpha`, averaged over calibration and test data, provided the
calibration rows and the test row are exchangeable (Vovk et al., 2005; Angelopoulos & Bates, 2023,
*Conformal prediction: a gentle introduction*). Monte Carlo dropout supplies the scores: the averaged
probabilities for sets, the predictive standard deviation or the predictive mixture's quantiles for
intervals, which makes the sets and intervals adapt to how uncertain the model is about each row.

Both estimators follow scikit-learn: ``fit(calibration_prediction, y_cal)`` computes the calibration
scores, then ``predict_sets`` / ``predict_interval`` apply the threshold. ``alpha`` is set on the
object and can be overridden per call; fitted attributes end in ``_``. Predictions from
:class:`~mcdrop.MCDropout` or plain arrays are accepted: probabilities ``(N, C)`` or per-pass
probabilities ``(T, N, C)`` for classification, per-pass outputs ``(T, N)`` or ``(T, N, D)`` for
regression.

The threshold is the :math:`k`-th smallest of the :math:`n` calibration scores,

.. math::

    \hat q = s_{(k)}, \qquad k = \lceil (n + 1)(1 - \alpha) \rceil,

which needs :math:`k \le n`, i.e. :math:`n \ge (1 - \alpha)/\alpha` calibration rows (9 at
:math:`\alpha = 0.1`, 19 at 0.05). With continuous scores the coverage on a fresh row is then between
:math:`1 - \alpha` and :math:`1 - \alpha + 1/(n + 1)`.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np

from mcdrop._validation import (
    check_array,
    check_choice,
    check_float,
    check_int,
    check_labels,
    check_same_length,
    invalid,
)
from mcdrop.metrics._common import is_classification_prediction, is_regression_prediction, probs_of

__all__ = [
    "ConformalClassifier",
    "ConformalRegressor",
    "conformal_quantile",
    "min_calibration_size",
    "CLASSIFICATION_METHODS",
    "REGRESSION_METHODS",
]

#: Conformity scores for classification sets.
CLASSIFICATION_METHODS = ("lac", "aps", "raps")
#: Conformity scores for regression intervals.
REGRESSION_METHODS = ("normalized", "cqr")
#: Smallest predictive standard deviation a normalised score divides by (MAPIE's ``EPSILON``).
STD_FLOOR = 1e-8


def _check_alpha(alpha: Any, name: str = "alpha") -> float:
    return check_float(alpha, name, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)


def min_calibration_size(alpha: float) -> int:
    r"""The fewest calibration rows for which the split conformal threshold at ``alpha`` is finite.

    .. math::

        n_{\min} = \Big\lceil \frac{1 - \alpha}{\alpha} \Big\rceil,
        \qquad\text{the smallest } n \text{ with } \lceil (n + 1)(1 - \alpha) \rceil \le n

    Computed in exact rational arithmetic on the binary value of ``alpha``.

    Examples
    --------
    >>> min_calibration_size(0.1), min_calibration_size(0.05)
    (9, 19)
    """
    a = Fraction(_check_alpha(alpha))
    return max(1, math.ceil((1 - a) / a))


def _rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)) in exact rational arithmetic (no float rounding up past an integer)."""
    return math.ceil((n + 1) * (1 - Fraction(alpha)))


def conformal_quantile(scores: Any, alpha: float, *, name: str = "scores") -> np.ndarray:
    r"""The split conformal threshold: the :math:`\lceil (n+1)(1-\alpha) \rceil`-th smallest score.

    .. math::

        \hat q = s_{(k)},\qquad k = \lceil (n + 1)(1 - \alpha) \rceil

    Parameters
    ----------
    scores : array-like of shape (n,) or (n, D)
        Calibration conformity scores (higher means a worse fit); one threshold per column.
    alpha : float in (0, 1)
        Miscoverage level.
    name : str
        The argument named in the error when there are too few rows.

    Returns
    -------
    ndarray of shape () or (D,)

    Raises
    ------
    ValueError
        When :math:`k > n`: the set or interval would have to be everything. The message says how many
        rows ``alpha`` needs.

    Examples
    --------
    >>> float(conformal_quantile(np.arange(1.0, 20.0), 0.1))  # n = 19: k = ceil(20 * 0.9) = 18
    18.0
    """
    alpha = _check_alpha(alpha)
    scores = check_array(scores, name, ndim=(1, 2), finite=False)
    if np.any(np.isnan(scores)):
        raise invalid(name, "scores without NaN", scores)
    n = scores.shape[0]
    k = _rank(n, alpha)
    if k > n:
        raise invalid(
            name, f"at least {min_calibration_size(alpha)} calibration rows for alpha={alpha:g}", n,
            detail="With fewer the threshold is infinite (the set or interval would be everything); "
                   "add calibration rows or raise alpha.",
        )
    return np.partition(scores, k - 1, axis=0)[k - 1]


def _random_state(seed):
    from sklearn.utils import check_random_state

    try:
        return check_random_state(seed)
    except ValueError:
        raise invalid("random_state", "None, an int or a numpy RandomState", seed, error=TypeError) from None


# --------------------------------------------------------------------------------------------- classification


def _class_probs(value: Any, name: str) -> np.ndarray:
    """Probabilities (N, C) from a ClassificationPrediction, probabilities (N, C) or samples (T, N, C)."""
    if is_regression_prediction(value):
        raise invalid(name, "a classification prediction or probabilities", value, error=TypeError)
    if is_classification_prediction(value):
        return probs_of(value, name)
    array = check_array(value, name, ndim=(2, 3))
    if array.ndim == 3:
        from mcdrop.predictive import ClassificationPrediction

        return ClassificationPrediction.from_samples(array, keep_samples=False).mean
    return probs_of(array, name)


def _sorted_cumsum(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the 1-based rank in decreasing probability and the cumulative probability up to and
    including it. Ties are ranked by class index (a stable sort), as MAPIE does."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cumsum_sorted = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, probs.shape[1] + 1)[None, :], axis=1)
    return rank, np.take_along_axis(cumsum_sorted, np.argsort(order, axis=1), axis=1)


class ConformalClassifier:
    r"""Split conformal prediction sets for a classifier.

    The score of class :math:`c` for a row with averaged probabilities :math:`\hat p` is

    .. math::

        \text{LAC:}\quad s(x, c) = 1 - \hat p_c

    .. math::

        \text{APS:}\quad s(x, c) = \sum_{j\,:\,\hat p_j \ge \hat p_c} \hat p_j \;-\; u\,\hat p_c

    .. math::

        \text{RAPS:}\quad s(x, c) = \sum_{j\,:\,\hat p_j \ge \hat p_c} \hat p_j \;-\; u\,\hat p_c
            + \lambda\,(o_c - k_{reg})^+

    where :math:`o_c` is the rank of :math:`c` (1 for the most probable class), :math:`u \sim U(0, 1)`
    per row with ``randomized=True`` and :math:`u = 0` otherwise (Sadinle et al., 2019; Romano et al.,
    2020; Angelopoulos et al., 2021). The set is :math:`\{c : s(x, c) \le \hat q\}` with
    :math:`\hat q` from :func:`conformal_quantile` on the true-class scores of the calibration rows; with
    ``class_conditional=True`` (Mondrian conformal) each class gets its own threshold from the calibration
    rows of that class, which guarantees :math:`1 - \alpha` coverage within every class.

    Sets can be empty (LAC when no class is probable enough; randomised APS/RAPS), which is part of the
    exact guarantee; :attr:`ConformalClassifier.predict_sets` never pads them.

    Parameters
    ----------
    method : {"lac", "aps", "raps"}, default "lac"
    alpha : float in (0, 1), default 0.1
        Miscoverage: sets contain the true class with probability at least ``1 - alpha``.
    randomized : bool, default False
        Randomised APS/RAPS (exact coverage :math:`\approx 1 - \alpha`, smaller sets); not for LAC.
    k_reg : int >= 0, default 1
        RAPS: ranks beyond ``k_reg`` are penalised.
    lambda_reg : float >= 0, default 0.01
        RAPS: the penalty per rank.
    class_conditional : bool, default False
        One threshold per class (Mondrian).
    random_state : None, int or numpy.random.RandomState
        The draws of :math:`u` (randomised methods only), scikit-learn's convention: the generator is
        made at ``fit`` and each ``predict_sets`` call continues its stream.

    Attributes
    ----------
    n_classes_ : int
    n_calibration_ : int
    scores_ : ndarray of shape (n,)
        The calibration rows' true-class scores.
    labels_ : ndarray of shape (n,)
        The calibration labels (for class-conditional thresholds).
    threshold_ : float or ndarray of shape (C,)
        :math:`\hat q` at the object's ``alpha`` (per class with ``class_conditional``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(3), size=200)
    >>> labels = np.array([rng.choice(3, p=p) for p in probs])
    >>> cp = ConformalClassifier("lac", alpha=0.1).fit(probs[:100], labels[:100])
    >>> cp.predict_sets(probs[100:]).shape
    (100, 3)
    """

    def __init__(self, method: str = "lac", *, alpha: float = 0.1, randomized: bool = False, k_reg: int = 1,
                 lambda_reg: float = 0.01, class_conditional: bool = False, random_state=None):
        self.method = method
        self.alpha = alpha
        self.randomized = randomized
        self.k_reg = k_reg
        self.lambda_reg = lambda_reg
        self.class_conditional = class_conditional
        self.random_state = random_state

    def _check_params(self) -> None:
        check_choice(self.method, "method", CLASSIFICATION_METHODS)
        _check_alpha(self.alpha)
        if not isinstance(self.randomized, (bool, np.bool_)):
            raise invalid("randomized", "a bool", self.randomized, error=TypeError)
        if self.randomized and self.method == "lac":
            raise invalid("randomized", "False for method 'lac' (its score has no ties to break)",
                          self.randomized)
        check_int(self.k_reg, "k_reg", minimum=0)
        check_float(self.lambda_reg, "lambda_reg", low=0.0)
        if not isinstance(self.class_conditional, (bool, np.bool_)):
            raise invalid("class_conditional", "a bool", self.class_conditional, error=TypeError)

    def _score_matrix(self, probs: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """s(x, c) for every row and class, (N, C)."""
        if self.method == "lac":
            return 1.0 - probs
        rank, cumsum = _sorted_cumsum(probs)
        scores = cumsum if u is None else cumsum - u[:, None] * probs
        if self.method == "raps":
            scores = scores + self.lambda_reg * np.maximum(rank - self.k_reg, 0)
        return scores

    def _draws(self, n: int) -> np.ndarray | None:
        return self._rng.uniform(size=n) if self.randomized else None

    def fit(self, calibration_prediction: Any, y_cal: Any) -> "ConformalClassifier":
        """Compute the calibration scores.

        Parameters
        ----------
        calibration_prediction : ClassificationPrediction or array-like of shape (n, C) or (T, n, C)
            Predictions on calibration rows the model was not trained on.
        y_cal : array-like of shape (n,)
            Their integer labels, in ``[0, C)``.

        Returns
        -------
        self
        """
        self._check_params()
        probs = _class_probs(calibration_prediction, "calibration_prediction")
        labels = check_labels(y_cal, "y_cal", n_classes=probs.shape[1])
        check_same_length(calibration_prediction=probs, y_cal=labels)
        self._rng = _random_state(self.random_state)
        matrix = self._score_matrix(probs, self._draws(len(labels)))
        self.n_classes_ = probs.shape[1]
        self.n_calibration_ = len(labels)
        self.scores_ = matrix[np.arange(len(labels)), labels]
        self.labels_ = labels
        self.threshold_ = self.threshold()
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet: call fit(calibration_prediction, "
                               "y_cal) first.")

    def threshold(self, alpha: float | None = None) -> float | np.ndarray:
        r"""The threshold :math:`\hat q` at ``alpha`` (the object's by default): a float, or an array of
        shape (C,) with ``class_conditional``.

        Raises ``ValueError`` naming ``y_cal`` when there are too few calibration rows (in some class, for
        class-conditional thresholds) for ``alpha``.
        """
        self._check_fitted()
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        if not self.class_conditional:
            return float(conformal_quantile(self.scores_, alpha, name="y_cal"))
        out = np.empty(self.n_classes_)
        need = min_calibration_size(alpha)
        counts = np.bincount(self.labels_, minlength=self.n_classes_)
        short = np.nonzero(counts < need)[0]
        if short.size:
            listed = ", ".join(f"class {c}: {counts[c]}" for c in short[:10])
            raise invalid("y_cal", f"at least {need} calibration rows in every class for alpha={alpha:g} "
                          "with class_conditional=True", int(counts[short].min()),
                          detail=f"Too few in {listed}. Add calibration rows, raise alpha, or use "
                                 "class_conditional=False.")
        for c in range(self.n_classes_):
            out[c] = conformal_quantile(self.scores_[self.labels_ == c], alpha, name="y_cal")
        return out

    def predict_sets(self, prediction: Any, *, alpha: float | None = None) -> np.ndarray:
        """Prediction sets as a boolean mask.

        Parameters
        ----------
        prediction : ClassificationPrediction or array-like of shape (N, C) or (T, N, C)
        alpha : float in (0, 1), optional
            Overrides the object's ``alpha`` for this call.

        Returns
        -------
        ndarray of bool, shape (N, C)
            ``sets[i, c]`` is True when class ``c`` is in row ``i``'s set.
        """
        self._check_fitted()
        q = self.threshold(alpha)
        probs = _class_probs(prediction, "prediction")
        if probs.shape[1] != self.n_classes_:
            raise invalid("prediction", f"probabilities over the {self.n_classes_} calibrated classes", probs)
        matrix = self._score_matrix(probs, self._draws(len(probs)))
        return matrix <= q  # q: a float, or (C,) per class broadcast over rows


# ------------------------------------------------------------------------------------------------- regression


def _regression_prediction(value: Any, name: str):
    from mcdrop.predictive import RegressionPrediction

    if is_classification_prediction(value):
        raise invalid(name, "a regression prediction or per-pass outputs", value, error=TypeError)
    if is_regression_prediction(value):
        return value
    samples = check_array(value, name, ndim=(2, 3))
    if samples.ndim == 2 and samples.shape[1] == 1 and samples.shape[0] > 1:
        # (N, 1) predictive means would otherwise be read as N passes of one row: refuse, never guess
        raise invalid(name, "per-pass outputs of shape (T, N) or (T, N, D), or a RegressionPrediction", samples,
                      detail="An (N, 1) array looks like means; for one row, pass shape (T, 1, 1).")
    return RegressionPrediction.from_samples(samples)


class ConformalRegressor:
    r"""Split conformal prediction intervals from the Monte Carlo predictive distribution.

    ``method="normalized"`` scales the residual by the predictive standard deviation, so the interval
    is wide where the model is uncertain (Papadopoulos et al., 2008; Lei et al., 2018):

    .. math::

        s_i = \frac{|y_i - \mu_i|}{\max(\sigma_i, \epsilon)}, \qquad
        C(x) = \big[\mu - \hat q\,\sigma,\; \mu + \hat q\,\sigma\big]

    with :math:`\sigma` the total predictive standard deviation (``spread="total"``: aleatoric +
    epistemic for a Gaussian head, epistemic only for a plain head) or the epistemic part
    (``spread="epistemic"``) and :math:`\epsilon = 10^{-8}`. ``method="cqr"`` conformalises the
    predictive mixture's quantiles :math:`\ell = F^{-1}(\alpha/2)`, :math:`h = F^{-1}(1 - \alpha/2)`
    (conformalized quantile regression, Romano et al., 2019):

    .. math::

        s_i = \max(\ell_i - y_i,\; y_i - h_i), \qquad C(x) = [\ell - \hat q,\; h + \hat q]

    Each output dimension gets its own threshold (marginal coverage per output).

    Parameters
    ----------
    method : {"normalized", "cqr"}, default "normalized"
    alpha : float in (0, 1), default 0.1
    spread : {"total", "epistemic"}, default "total"
        The standard deviation of ``"normalized"``.

    Attributes
    ----------
    n_calibration_ : int
    n_outputs_ : int
    scores_ : ndarray of shape (n, D)
        Calibration scores at the object's ``alpha`` (CQR scores depend on ``alpha``).
    threshold_ : ndarray of shape (D,)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> samples = rng.normal(size=(20, 60))          # (T, N) pass outputs
    >>> y = rng.normal(size=60)
    >>> cr = ConformalRegressor(alpha=0.2).fit(samples[:, :30], y[:30])
    >>> lower, upper = cr.predict_interval(samples[:, 30:])
    >>> lower.shape
    (30, 1)
    """

    def __init__(self, method: str = "normalized", *, alpha: float = 0.1, spread: str = "total"):
        self.method = method
        self.alpha = alpha
        self.spread = spread

    def _std(self, pred) -> np.ndarray:
        std = pred.std if self.spread == "total" else np.sqrt(pred.epistemic_variance)
        if np.any(std < STD_FLOOR):
            warnings.warn(
                f"{int(np.sum(std < STD_FLOOR))} row(s) have a predictive standard deviation below "
                f"{STD_FLOOR:g}; it is floored there, so their normalised intervals are about zero wide "
                "(in calibration, their scores are huge).", UserWarning, stacklevel=3)
        return np.maximum(std, STD_FLOOR)

    def _cqr_bounds(self, pred, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        from mcdrop.predictive import EpistemicOnlyWarning

        # conformalizing is what corrects an epistemic-only mixture's quantiles: no warning about them here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EpistemicOnlyWarning)
            return pred.quantile(alpha / 2), pred.quantile(1 - alpha / 2)

    def _scores(self, alpha: float) -> np.ndarray:
        if self.method == "normalized":
            return self.scores_
        cached = self._cqr_cache.get(alpha)
        if cached is None:
            lo, hi = self._cqr_bounds(self._calibration, alpha)
            cached = self._cqr_cache[alpha] = np.maximum(lo - self._y, self._y - hi)
        return cached

    def fit(self, calibration_prediction: Any, y_cal: Any) -> "ConformalRegressor":
        """Compute the calibration scores.

        Parameters
        ----------
        calibration_prediction : RegressionPrediction or array-like of shape (T, n) or (T, n, D)
            Predictions on calibration rows the model was not trained on (per-pass outputs as arrays).
        y_cal : array-like of shape (n,) or (n, D)

        Returns
        -------
        self
        """
        check_choice(self.method, "method", REGRESSION_METHODS)
        alpha = _check_alpha(self.alpha)
        check_choice(self.spread, "spread", ("total", "epistemic"))
        pred = _regression_prediction(calibration_prediction, "calibration_prediction")
        y = check_array(y_cal, "y_cal", ndim=(1, 2))
        check_same_length(calibration_prediction=pred.mean, y_cal=y)
        if y.ndim == 1:
            y = y[:, None]
        if y.shape != pred.mean.shape:
            raise invalid("y_cal", f"targets of shape {pred.mean.shape}", y)
        self._calibration, self._y, self._cqr_cache = pred, y, {}
        self.n_calibration_, self.n_outputs_ = y.shape
        if self.method == "normalized":
            self.scores_ = np.abs(y - pred.mean) / self._std(pred)
        else:
            self.scores_ = self._scores(alpha)
        self.threshold_ = self.threshold()
        return self

    def threshold(self, alpha: float | None = None) -> np.ndarray:
        r"""The threshold :math:`\hat q` per output dimension at ``alpha`` (the object's by default), (D,)."""
        if not hasattr(self, "scores_"):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet: call fit(calibration_prediction, "
                               "y_cal) first.")
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        return np.atleast_1d(conformal_quantile(self._scores(alpha), alpha, name="y_cal"))

    def predict_interval(self, prediction: Any, *, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Prediction intervals with coverage at least ``1 - alpha``.

        Parameters
        ----------
        prediction : RegressionPrediction or array-like of shape (T, N) or (T, N, D)
        alpha : float in (0, 1), optional
            Overrides the object's ``alpha`` for this call.

        Returns
        -------
        lower, upper : ndarray of shape (N, D)
        """
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        q = self.threshold(alpha)
        pred = _regression_prediction(prediction, "prediction")
        if pred.mean.shape[1] != self.n_outputs_:
            raise invalid("prediction", f"predictions with {self.n_outputs_} output(s), as calibrated",
                          pred.mean)
        if self.method == "normalized":
            std = self._std(pred)
            return pred.mean - q * std, pred.mean + q * std
        lo, hi = self._cqr_bounds(pred, alpha)
        return lo - q, hi + q

"""Prediction objects: immutable numpy results of T stochastic passes.

Samples are always shaped ``(T, N, ...)``: passes first. Derived statistics are
computed on first access and cached. Nothing here imports TensorFlow except the
``distribution`` views, which import tensorflow-probability lazily.

Two result types:

* :class:`ClassificationPrediction` — averaged class probabilities and the
  entropy decomposition (total = aleatoric + epistemic).
* :class:`RegressionPrediction` — the predictive mixture over passes, with
  aleatoric (mean of the per-pass variances of a Gaussian head) and epistemic
  (variance of the per-pass means) parts.

Both can be built without a model from a samples array (``from_samples``), which
is how downstream code and tests use them, or from the plain statistics an accumulator
returns (``from_statistics``), which is how the engine builds them. The statistics
themselves are the pure functions of :mod:`mcdrop._stats`.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Sequence

import numpy as np
from scipy import special

from mcdrop import _stats
from mcdrop._validation import check_choice, check_float, check_samples, invalid
from mcdrop.accumulators import (
    ClassificationAccumulator,
    ClassificationStatistics,
    RegressionAccumulator,
    RegressionStatistics,
)

__all__ = [
    "ClassificationPrediction",
    "RegressionPrediction",
    "Prediction",
    "concatenate",
    "MASK_MODES",
    "EpistemicOnlyWarning",
    "PREDICTION_TYPES",
    "from_arrays",
    "FORMAT_VERSION",
]

#: How the noise of a pass relates across inputs: one draw of the network shared by
#: every input ("consistent"), or independent per input as Keras does ("per_example").
MASK_MODES = ("consistent", "per_example")


class EpistemicOnlyWarning(UserWarning):
    """A regression prediction's intervals or CDF leave out the noise in the targets (no variance head)."""


#: Predictions already warned about (each warns once).
_WARNED: "weakref.WeakSet" = weakref.WeakSet()


def _standard_error(variance: np.ndarray, num_samples: int) -> np.ndarray:
    r"""MC standard error of a mean over T passes: :math:`\sqrt{s^2 / T}` with the
    unbiased :math:`s^2 = \frac{T}{T-1}\,\mathrm{Var}`. Undefined (NaN) for T = 1."""
    if num_samples < 2:
        return np.full_like(variance, np.nan)
    return np.sqrt(variance / (num_samples - 1))


def _sample_member(members):
    return None if members is None else np.repeat(np.arange(len(members)), members)


def _take(value, index):
    return None if value is None else value[index]


def _shape(value) -> str:
    return "None" if value is None else str(tuple(value.shape))


def _uncertainty(prediction, measure: str | None) -> np.ndarray:
    """``measure`` of ``prediction`` per row (N,), averaged over output dimensions; the first of its
    ``uncertainty_measures`` when None."""
    choices = prediction.uncertainty_measures
    measure = check_choice(choices[0] if measure is None else measure, "measure", choices)
    values = np.asarray(getattr(prediction, measure), dtype=np.float64)
    return values.mean(axis=1) if values.ndim == 2 else values


def _one_line(prediction, **extra) -> str:
    """``Name(mean=(N, C), num_samples=T, seed=.., mask=.., ..., samples=(T, N, C) or None)``: shapes and
    provenance, never the arrays (a repr of 10,000 rows should not fill the screen)."""
    fields = {"mean": _shape(prediction.mean), "num_samples": prediction.num_samples,
              "seed": prediction.seed, "mask": repr(prediction.mask), **extra,
              "samples": _shape(prediction.samples)}
    return f"{type(prediction).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"


# --------------------------------------------------------------------------- the codec

#: The version of the arrays-plus-metadata format of :meth:`~ClassificationPrediction.to_arrays`, written as
#: ``metadata["format"]``. Metadata without it is version 1: what the store and ``mcdrop predict`` wrote
#: before the version was recorded (the same fields).
FORMAT_VERSION = 1

#: Per task, each array field and how its shape follows ``mean``'s: ``"mean"`` the same shape, ``"row"``
#: ``mean``'s without its last axis, ``"passes"`` (T, *mean.shape) (optional: kept samples only).
_ARRAYS = {
    "classification": {"mean": "mean", "variance": "mean", "expected_entropy": "row", "votes": "mean",
                       "samples": "passes"},
    "regression": {"mean": "mean", "epistemic_variance": "mean", "aleatoric_variance": "mean",
                   "samples": "passes", "sample_variances": "passes"},
}
#: Per task, each metadata field and its default when absent (None where it is required).
_METADATA = {
    "classification": {"num_samples": None, "mask": "consistent", "seed": None, "outputs": "probs",
                       "members": None},
    "regression": {"num_samples": None, "heteroscedastic": False, "mask": "consistent", "seed": None,
                   "includes_aleatoric": None, "members": None},
}
#: Every metadata key a prediction's metadata may hold, for formats that keep it beside the arrays.
METADATA_KEYS = ("format", "task", *dict.fromkeys(k for spec in _METADATA.values() for k in spec))


class _Codec:
    """The one codec of the prediction types: arrays plus metadata, both directions."""

    def to_arrays(self, *, rows_first: bool = False) -> tuple[dict[str, np.ndarray], dict]:
        """The prediction as arrays plus metadata: what every file format of mcdrop stores.

        Parameters
        ----------
        rows_first : bool, default False
            Give the per-pass arrays (``samples``, ``sample_variances``) as (N, T, ...) instead of
            (T, N, ...), for formats that store or send rows in blocks.

        Returns
        -------
        arrays : dict of str to ndarray
            The prediction's array fields (``mean`` ...; the per-pass ones only when kept), not copied.
        metadata : dict
            Plain JSON-ready values: ``format`` (:data:`FORMAT_VERSION`), ``task``, ``num_samples``,
            ``mask``, ``seed``, ``members`` (a list) and the type's own (``outputs``; ``heteroscedastic``,
            ``includes_aleatoric``). :func:`from_arrays` rebuilds the prediction from both.
        """
        arrays, metadata = {}, {"format": FORMAT_VERSION, "task": self.task}
        for name, kind in _ARRAYS[self.task].items():
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.moveaxis(value, 0, 1) if rows_first and kind == "passes" else value
        for name in _METADATA[self.task]:
            value = getattr(self, name)
            metadata[name] = [int(m) for m in value] if name == "members" and value is not None else (
                value.item() if isinstance(value, np.generic) else value)
        return arrays, metadata

    @classmethod
    def from_arrays(cls, arrays, metadata, *, rows_first: bool = False, name: str = "arrays",
                    source=None):
        """The prediction :meth:`to_arrays` gave, after checking every field (see :func:`from_arrays`)."""
        prediction = from_arrays(arrays, metadata, rows_first=rows_first, name=name, source=source)
        if not isinstance(prediction, cls):
            raise invalid(name, f"a {cls.task} prediction", str(source) if source is not None else metadata,
                          detail=f"It holds a {prediction.task} prediction.")
        return prediction


@dataclass(frozen=True, eq=False, repr=False)
class ClassificationPrediction(_Codec):
    """Predictive statistics of a classifier over T Monte Carlo passes.

    Attributes
    ----------
    mean : ndarray of shape (N, C)
        Class probabilities averaged over passes, :math:`\\bar p = \\frac1T \\sum_t p_t`.
    variance : ndarray of shape (N, C)
        Variance of the class probabilities over passes (population variance, divisor T).
    expected_entropy : ndarray of shape (N,)
        Mean over passes of the per-pass entropy (aleatoric part), in nats.
    votes : ndarray of shape (N, C)
        How many passes put each class first.
    num_samples : int
        T, the number of passes.
    samples : ndarray of shape (T, N, C) or None
        Per-pass probabilities, kept only when asked for.
    mask : {"consistent", "per_example"}
        How the noise was drawn; consistent masks make every pass one network.
    seed : int or None
        The seed the passes were drawn with, if any.
    outputs : {"probs", "logits"}
        What the model returned before probabilities were formed.
    members : tuple of int or None
        For an ensemble (:class:`mcdrop.Ensemble`): the passes of each member, in member-major
        sample order (``sample_member`` gives each sample's member). None for one model.
    """

    mean: np.ndarray
    variance: np.ndarray
    expected_entropy: np.ndarray
    votes: np.ndarray
    num_samples: int
    samples: np.ndarray | None = None
    mask: str = "consistent"
    seed: int | None = None
    outputs: str = "probs"
    members: tuple | None = None

    #: The task's name, for messages and saved files; behaviour hangs on the type, never on this string.
    task: ClassVar[str] = "classification"
    #: Per-row uncertainty measures :meth:`uncertainty` reads; the first is the default.
    uncertainty_measures: ClassVar[tuple[str, ...]] = (
        "entropy", "mutual_information", "expected_entropy", "variation_ratio")
    #: The per-row statistics a one-line-per-row view shows (``mcdrop predict``'s table).
    row_statistics: ClassVar[tuple[str, ...]] = ("predicted_class", "confidence", "entropy", "mutual_information")
    #: Whether the per-pass outputs are kept when ``return_samples`` is not given: not for a classifier
    #: (its statistics are complete without them).
    keeps_samples_by_default: ClassVar[bool] = False

    sample_member = property(lambda self: _sample_member(self.members),
                             doc="(T,) int: the ensemble member each sample came from (None for one model).")

    @classmethod
    def from_samples(cls, samples, *, mask: str = "consistent", seed: int | None = None,
                     keep_samples: bool = True) -> "ClassificationPrediction":
        """Build a prediction from per-pass probabilities of shape (T, N, C).

        >>> import numpy as np
        >>> p = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])  # two passes that disagree
        >>> pred = ClassificationPrediction.from_samples(p)
        >>> round(float(pred.mutual_information[0]), 4)
        0.3681
        """
        samples = check_samples(samples, "samples", probs=True)
        check_choice(mask, "mask", MASK_MODES)
        acc = ClassificationAccumulator(keep_samples=keep_samples, validate=False)
        acc.update(samples)
        return cls.from_statistics(acc.result(), mask=mask, seed=seed)

    @classmethod
    def from_statistics(cls, statistics: ClassificationStatistics, **provenance) -> "ClassificationPrediction":
        """The prediction of the statistics a :class:`~mcdrop.accumulators.ClassificationAccumulator` returned,
        with provenance (``mask``, ``seed``, ``outputs``, ``members``) as keywords."""
        return cls(**statistics._asdict(), **provenance)

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __repr__(self) -> str:
        return _one_line(self, outputs=repr(self.outputs))

    @property
    def num_classes(self) -> int:
        return self.mean.shape[-1]

    def uncertainty(self, measure: str | None = None) -> np.ndarray:
        """Per-row uncertainty (N,): ``measure``, one of :attr:`uncertainty_measures` (default: entropy).

        >>> import numpy as np
        >>> pred = ClassificationPrediction.from_samples(np.array([[[0.9, 0.1]], [[0.1, 0.9]]]))
        >>> pred.uncertainty("variation_ratio")
        array([0.5])
        """
        return _uncertainty(self, measure)

    def summary(self) -> dict:
        """Headline numbers, as Python scalars: task, rows, passes, classes, and the means of the
        confidence, entropy and mutual information, and the largest MC standard error (NaN for T = 1)."""
        return {"task": self.task, "rows": len(self), "num_samples": self.num_samples,
                "classes": self.num_classes, "mean_confidence": float(np.mean(self.confidence)),
                "mean_entropy": float(np.mean(self.entropy)),
                "mean_mutual_information": float(np.mean(self.mutual_information)),
                "max_standard_error": float(np.max(self.standard_error))}

    @cached_property
    def entropy(self) -> np.ndarray:
        r"""Total predictive entropy (N,): :math:`H[\bar p] = -\sum_c \bar p_c \log \bar p_c`."""
        return _stats.entropy(self.mean)

    @cached_property
    def mutual_information(self) -> np.ndarray:
        r"""Epistemic part (N,): :math:`I = H[\bar p] - \frac1T\sum_t H[p_t]` (BALD), clipped at 0
        against rounding, and exactly 0 where every pass agreed (zero variance)."""
        return _stats.mutual_information(self.mean, self.expected_entropy, self.variance)

    @cached_property
    def variation_ratio(self) -> np.ndarray:
        r"""(N,): :math:`1 - \max_c \frac{\#\{t : \arg\max p_t = c\}}{T}`."""
        return _stats.variation_ratio(self.votes, self.num_samples)

    @cached_property
    def predicted_class(self) -> np.ndarray:
        """(N,): the class of highest mean probability."""
        return np.argmax(self.mean, axis=-1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """(N,): the highest mean probability."""
        return np.max(self.mean, axis=-1)

    @cached_property
    def std(self) -> np.ndarray:
        """(N, C): standard deviation of the class probabilities over passes."""
        return np.sqrt(self.variance)

    @cached_property
    def standard_error(self) -> np.ndarray:
        r"""(N, C): Monte Carlo standard error of ``mean``, :math:`\sqrt{s^2/T}` with the
        unbiased pass variance; shrinks as :math:`1/\sqrt T`."""
        return _standard_error(self.variance, self.num_samples)

    @property
    def distribution(self):
        """The predictive distribution: ``tfp.distributions.Categorical(probs=mean)``, batch shape (N,)."""
        from mcdrop._distributions import categorical

        return categorical(self.mean)

    def subset(self, index) -> "ClassificationPrediction":
        """The prediction for a subset of rows (index array, mask or slice)."""
        return dataclasses.replace(
            self, mean=self.mean[index], variance=self.variance[index],
            expected_entropy=self.expected_entropy[index], votes=self.votes[index],
            samples=None if self.samples is None else self.samples[:, index],
        )

    def without_samples(self) -> "ClassificationPrediction":
        """The same prediction without its per-pass outputs (``samples`` None)."""
        return self if self.samples is None else dataclasses.replace(self, samples=None)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Per-row statistics, derived ones included, keyed by name: a table for other tools (pandas, the
        ``.npz`` of ``mcdrop predict``, Parquet rows). To save and read back a prediction, use
        :meth:`to_arrays` and :func:`from_arrays`."""
        out = {
            "mean": self.mean, "variance": self.variance, "entropy": self.entropy,
            "expected_entropy": self.expected_entropy, "mutual_information": self.mutual_information,
            "variation_ratio": self.variation_ratio, "predicted_class": self.predicted_class,
            "confidence": self.confidence, "standard_error": self.standard_error, "votes": self.votes,
        }
        if self.samples is not None:
            out["samples"] = self.samples
        if self.members is not None:
            out["sample_member"] = self.sample_member  # (T,), not per row
        return out


@dataclass(frozen=True, eq=False, repr=False)
class RegressionPrediction(_Codec):
    """Predictive statistics of a regression model over T Monte Carlo passes.

    Attributes
    ----------
    mean : ndarray of shape (N, D)
        Mean over passes of the predicted means.
    epistemic_variance : ndarray of shape (N, D)
        Variance over passes of the predicted means (divisor T).
    aleatoric_variance : ndarray of shape (N, D)
        Mean over passes of the predicted variances of a Gaussian head; zeros otherwise.
    num_samples : int
        T, the number of passes.
    heteroscedastic : bool
        Whether the model has a Gaussian head (per-pass mean and variance).
    samples : ndarray of shape (T, N, D) or None
        Per-pass predicted means, kept by default for regression (the mixture needs them).
    sample_variances : ndarray of shape (T, N, D) or None
        Per-pass predicted variances of a Gaussian head, kept with ``samples``.
    mask, seed
        Provenance, as for :class:`ClassificationPrediction`.
    includes_aleatoric : bool
        Whether the predictive spread includes the noise in the targets: True for a Gaussian head
        (the default follows ``heteroscedastic``) and after
        :class:`~mcdrop.calibration.VarianceScaling`, which fits the spread to observed targets.
        When False the spread is the model's (epistemic) uncertainty alone, and :meth:`interval`,
        :meth:`cdf` and :meth:`quantile` warn once (:class:`EpistemicOnlyWarning`): such intervals
        under-cover the targets, often far below their nominal level.
    """

    mean: np.ndarray
    epistemic_variance: np.ndarray
    aleatoric_variance: np.ndarray
    num_samples: int
    heteroscedastic: bool = False
    samples: np.ndarray | None = None
    sample_variances: np.ndarray | None = None
    mask: str = "consistent"
    seed: int | None = None
    includes_aleatoric: bool | None = None
    members: tuple | None = None  # passes per ensemble member, member-major (see ClassificationPrediction)

    #: The task's name, for messages and saved files (see :class:`ClassificationPrediction`).
    task: ClassVar[str] = "regression"
    #: Per-row uncertainty measures :meth:`uncertainty` reads (averaged over the D outputs); the first
    #: is the default.
    uncertainty_measures: ClassVar[tuple[str, ...]] = ("variance", "epistemic_variance", "aleatoric_variance", "std")
    #: The per-row statistics a one-line-per-row view shows (``mcdrop predict``'s table).
    row_statistics: ClassVar[tuple[str, ...]] = ("mean", "std", "epistemic_variance", "aleatoric_variance")
    #: Whether the per-pass outputs are kept when ``return_samples`` is not given: yes for regression,
    #: whose predictive mixture (intervals, CDF, CRPS) needs them.
    keeps_samples_by_default: ClassVar[bool] = True

    sample_member = property(lambda self: _sample_member(self.members),
                             doc="(T,) int: the ensemble member each sample came from (None for one model).")

    def __post_init__(self):
        if self.includes_aleatoric is None:
            object.__setattr__(self, "includes_aleatoric", bool(self.heteroscedastic))
        elif not isinstance(self.includes_aleatoric, (bool, np.bool_)):
            raise invalid("includes_aleatoric", "True, False or None", self.includes_aleatoric, error=TypeError)
        else:
            object.__setattr__(self, "includes_aleatoric", bool(self.includes_aleatoric))

    def _warn_epistemic_only(self, what: str) -> None:
        if self.includes_aleatoric or self in _WARNED:
            return
        _WARNED.add(self)
        warnings.warn(
            f"This regression prediction's {what} covers the model's (epistemic) uncertainty only: without a "
            "variance head the noise in the targets is left out, so its intervals under-cover, often far below "
            "their nominal level. Recalibrate the spread on held-out data with "
            "mcdrop.calibration.VarianceScaling, use split-conformal intervals "
            "(mcdrop.conformal.ConformalRegressor), or train a Gaussian head (heteroscedastic=...).",
            EpistemicOnlyWarning, stacklevel=3)

    @classmethod
    def from_samples(cls, samples, variances=None, *, mask: str = "consistent", seed: int | None = None,
                     keep_samples: bool = True, includes_aleatoric: bool | None = None) -> "RegressionPrediction":
        """Build a prediction from per-pass means (T, N, D) and, for a Gaussian head,
        per-pass variances of the same shape. A (T, N) array is read as D = 1.

        ``includes_aleatoric`` says whether the samples' spread already includes the noise in the
        targets (say, samples of a posterior predictive); by default it does exactly when
        ``variances`` are given.

        >>> import numpy as np
        >>> pred = RegressionPrediction.from_samples(np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]]))
        >>> float(pred.epistemic_variance[0, 0]), float(pred.aleatoric_variance[0, 0])
        (1.0, 1.0)
        """
        samples = check_samples(samples, "samples", ndim=(2, 3))
        if samples.ndim == 2:
            samples = samples[..., None]
        if variances is not None:
            variances = check_samples(variances, "variances", ndim=(2, 3))
            if variances.ndim == 2:
                variances = variances[..., None]
        check_choice(mask, "mask", MASK_MODES)
        provenance = {"mask": mask, "seed": seed}
        if includes_aleatoric is not None:
            provenance["includes_aleatoric"] = includes_aleatoric
        acc = RegressionAccumulator(heteroscedastic=variances is not None, keep_samples=keep_samples)
        acc.update(samples, variances)
        return cls.from_statistics(acc.result(), **provenance)

    @classmethod
    def from_statistics(cls, statistics: RegressionStatistics, **provenance) -> "RegressionPrediction":
        """The prediction of the statistics a :class:`~mcdrop.accumulators.RegressionAccumulator` returned,
        with provenance (``mask``, ``seed``, ``includes_aleatoric``, ``members``) as keywords."""
        return cls(**statistics._asdict(), **provenance)

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __repr__(self) -> str:
        return _one_line(self, heteroscedastic=self.heteroscedastic)

    @cached_property
    def variance(self) -> np.ndarray:
        """(N, D): total predictive variance = epistemic + aleatoric (law of total variance)."""
        return self.epistemic_variance + self.aleatoric_variance

    @cached_property
    def std(self) -> np.ndarray:
        """(N, D): total predictive standard deviation."""
        return np.sqrt(self.variance)

    @cached_property
    def standard_error(self) -> np.ndarray:
        """(N, D): Monte Carlo standard error of ``mean``."""
        return _standard_error(self.epistemic_variance, self.num_samples)

    def uncertainty(self, measure: str | None = None) -> np.ndarray:
        """Per-row uncertainty (N,): ``measure``, one of :attr:`uncertainty_measures` (default: the total
        variance), averaged over the D outputs."""
        return _uncertainty(self, measure)

    def summary(self) -> dict:
        """Headline numbers, as Python scalars: task, rows, passes, outputs D, and the means of the
        predictive standard deviation and of the epistemic and aleatoric variances."""
        return {"task": self.task, "rows": len(self), "num_samples": self.num_samples,
                "targets": int(self.mean.shape[-1]), "mean_std": float(np.mean(self.std)),
                "mean_epistemic_variance": float(np.mean(self.epistemic_variance)),
                "mean_aleatoric_variance": float(np.mean(self.aleatoric_variance))}

    @property
    def has_mixture(self) -> bool:
        """Whether the per-pass outputs were kept, so the exact predictive mixture is available."""
        return self.samples is not None and (not self.heteroscedastic or self.sample_variances is not None)

    def cdf(self, y) -> np.ndarray:
        r"""Predictive CDF at ``y`` (N, D) or (N,).

        With the mixture: :math:`F(y) = \frac1T\sum_t \Phi\big((y-\mu_t)/\sigma_t\big)` for a Gaussian
        head, the empirical CDF of the pass means otherwise. Without kept samples, the moment-matched
        Gaussian :math:`\Phi((y-\mu)/\sigma)`.
        """
        y = self._check_targets(y)
        self._warn_epistemic_only("cdf")
        if self.has_mixture:
            return self._mixture_cdf(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (y - self.mean) / self.std
        return np.where(self.std > 0, special.ndtr(z), (y >= self.mean).astype(float))

    def _mixture_cdf(self, y: np.ndarray) -> np.ndarray:
        mu = self.samples
        if self.heteroscedastic:
            sd = np.sqrt(self.sample_variances)
            with np.errstate(divide="ignore", invalid="ignore"):
                comp = np.where(sd > 0, special.ndtr((y[None] - mu) / sd), (y[None] >= mu).astype(float))
            return comp.mean(axis=0)
        return (mu <= y[None]).mean(axis=0)

    def interval(self, level: float = 0.95, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Central prediction interval with coverage ``level``: (lower, upper), each (N, D).

        ``method="mixture"`` takes the quantiles of the predictive mixture over passes (bisection on
        :meth:`cdf` for a Gaussian head, empirical quantiles of the pass means otherwise);
        ``"gaussian"`` uses ``mean ± z·std``; ``"auto"`` (default) uses the mixture when the samples
        were kept, the Gaussian otherwise.
        """
        level = check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        method = check_choice(method, "method", ("auto", "mixture", "gaussian"))
        self._warn_epistemic_only("interval")
        if method == "auto":
            method = "mixture" if self.has_mixture else "gaussian"
        alpha = (1.0 - level) / 2.0
        if method == "gaussian":
            z = special.ndtri(1.0 - alpha)
            return self.mean - z * self.std, self.mean + z * self.std
        if not self.has_mixture:
            raise invalid("method", "'gaussian' or 'auto' when the samples were not kept", method,
                          detail="Predict with return_samples=True for mixture intervals.")
        return self.quantile(alpha), self.quantile(1.0 - alpha)

    def quantile(self, q: float) -> np.ndarray:
        """The ``q``-quantile of the predictive mixture, (N, D)."""
        q = check_float(q, "q", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        self._warn_epistemic_only("quantile")
        if not self.has_mixture:
            return self.mean + special.ndtri(q) * self.std
        if not self.heteroscedastic:
            # the mixture of point masses: its generalised inverse CDF
            return np.quantile(self.samples, q, axis=0, method="inverted_cdf")
        sd = np.sqrt(self.sample_variances)
        spread = special.ndtri(max(q, 1 - q)) + 1.0
        lo = (self.samples - spread * sd).min(axis=0)
        hi = (self.samples + spread * sd).max(axis=0)
        for _ in range(64):  # bisection: the bracket halves to float precision
            mid = 0.5 * (lo + hi)
            below = self._mixture_cdf(mid) < q
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def distribution(self):
        """The predictive distribution as a tensorflow-probability distribution, batch shape (N, D).

        A Gaussian head gives ``MixtureSameFamily`` of the T per-pass Normals (equal weights); a plain
        head gives ``Empirical`` over the pass means; without kept samples, a moment-matched ``Normal``.
        """
        from mcdrop import _distributions

        if self.has_mixture and self.heteroscedastic:
            return _distributions.gaussian_mixture(self.samples, np.sqrt(self.sample_variances))
        if self.has_mixture:
            return _distributions.empirical(self.samples)
        return _distributions.normal(self.mean, self.std)

    def subset(self, index) -> "RegressionPrediction":
        """The prediction for a subset of rows."""
        return dataclasses.replace(
            self, mean=self.mean[index], epistemic_variance=self.epistemic_variance[index],
            aleatoric_variance=self.aleatoric_variance[index],
            samples=_take(self.samples, (slice(None), index)),
            sample_variances=_take(self.sample_variances, (slice(None), index)),
        )

    def without_samples(self) -> "RegressionPrediction":
        """The same prediction without its per-pass outputs (``samples`` and ``sample_variances`` None): the
        moment-matched Gaussian then stands in for the mixture."""
        if self.samples is None and self.sample_variances is None:
            return self
        return dataclasses.replace(self, samples=None, sample_variances=None)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Per-row statistics, derived ones included, keyed by name, and ``includes_aleatoric`` as a 0-d bool
        array: a table for other tools. To save and read back a prediction, use :meth:`to_arrays` and
        :func:`from_arrays`."""
        out = {
            "mean": self.mean, "variance": self.variance, "std": self.std,
            "epistemic_variance": self.epistemic_variance, "aleatoric_variance": self.aleatoric_variance,
            "standard_error": self.standard_error, "includes_aleatoric": np.array(self.includes_aleatoric),
        }
        if self.samples is not None:
            out["samples"] = self.samples
        if self.sample_variances is not None:
            out["sample_variances"] = self.sample_variances
        if self.members is not None:
            out["sample_member"] = self.sample_member  # (T,), not per row
        return out

    def _check_targets(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1 and self.mean.ndim == 2 and self.mean.shape[1] == 1:
            y = y[:, None]
        if y.shape != self.mean.shape:
            raise invalid("y", f"targets of shape {self.mean.shape}", y)
        return y


Prediction = ClassificationPrediction | RegressionPrediction
#: The prediction type of each task, by its name (the ``task`` the types carry): where a task named by a
#: user or a file becomes a type, which then carries the behaviour.
PREDICTION_TYPES = {cls.task: cls for cls in (ClassificationPrediction, RegressionPrediction)}


def from_arrays(arrays, metadata, *, rows_first: bool = False, name: str = "arrays", source=None) -> Prediction:
    """Rebuild a prediction from :meth:`~ClassificationPrediction.to_arrays`' arrays and metadata.

    Every field is checked, because the arrays often come from a file: the task and format version are
    known, every required array and metadata field is present, the arrays are numeric and their shapes
    agree with ``mean``'s and with ``num_samples`` (and ``members``). Unknown keys are ignored (files keep
    provenance and derived statistics beside the prediction). Arrays are not copied (memory maps stay
    memory maps).

    Parameters
    ----------
    arrays : mapping of str to ndarray
    metadata : mapping
        Without ``format``, version 1; without ``task``, the error says so.
    rows_first : bool, default False
        The per-pass arrays are stored (N, T, ...), as :meth:`to_arrays` gives them with ``rows_first``.
    name : str, default "arrays"
        The argument (or command-line) name that errors name.
    source : str or path, optional
        Where the arrays came from (a file or folder), shown in errors as the value received.

    Raises
    ------
    ValueError
        Naming ``name``, the source and the field at fault.

    Examples
    --------
    >>> import numpy as np
    >>> pred = ClassificationPrediction.from_samples(np.array([[[0.9, 0.1]], [[0.1, 0.9]]]), seed=3)
    >>> arrays, metadata = pred.to_arrays()
    >>> back = from_arrays(arrays, metadata)
    >>> back.seed, float(back.mutual_information[0]) == float(pred.mutual_information[0])
    (3, True)
    """
    received = str(source) if source is not None else "arrays of shapes " + ", ".join(
        f"{k} {getattr(v, 'shape', '?')}" for k, v in arrays.items())

    def bad(expected, detail):
        return invalid(name, expected, received, detail=detail)

    version = metadata.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 1 <= version <= FORMAT_VERSION:
        raise bad(f"a prediction of format version 1 to {FORMAT_VERSION}",
                  f"Its format version is {version!r}; a newer mcdrop wrote it: upgrade mcdrop to read it.")
    task = metadata.get("task")
    if task not in PREDICTION_TYPES:
        raise bad("a prediction of task 'classification' or 'regression'", f"Its `task` is {task!r}.")
    values = {key: _metadata_value(key, metadata.get(key, default), task, bad)
              for key, default in _METADATA[task].items()}
    values.update(_checked_arrays(arrays, task, values, rows_first, bad))
    return PREDICTION_TYPES[task](**values)


def _metadata_value(key, value, task, bad):
    """One metadata field, checked and as the prediction holds it."""
    what = f"a {task} prediction whose `{key}` is "
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if key == "num_samples":
        if value is None:
            raise bad(f"a {task} prediction with its metadata `num_samples`", "It has no `num_samples`.")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(what + "an integer >= 1", f"Its `num_samples` is {value!r}.")
    elif key == "seed" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad(what + "an integer or None", f"Its `seed` is {value!r}.")
    elif key in ("mask", "outputs"):
        choices = MASK_MODES if key == "mask" else ("probs", "logits")
        if value not in choices:
            raise bad(what + f"one of {list(choices)}", f"Its `{key}` is {value!r}.")
    elif key in ("heteroscedastic", "includes_aleatoric") and not (
            isinstance(value, bool) or (value is None and key == "includes_aleatoric")):
        raise bad(what + "True or False", f"Its `{key}` is {value!r}.")
    elif key == "members" and value is not None:
        members = list(np.ravel(value)) if isinstance(value, np.ndarray) else value
        if (not isinstance(members, (list, tuple)) or not members
                or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in members)):
            raise bad(what + "a list of integers >= 1 (passes per ensemble member)", f"Its `members` is {value!r}.")
        value = tuple(int(m) for m in members)
    return value


def _checked_arrays(arrays, task, meta, rows_first, bad) -> dict:
    """The task's arrays, checked against ``mean``'s shape, ``num_samples`` and ``members``."""
    spec = _ARRAYS[task]
    required = [k for k, kind in spec.items() if kind != "passes"]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise bad(f"a {task} prediction with the arrays {', '.join(required)}",
                  f"It has no `{'`, `'.join(missing)}`.")
    mean = arrays["mean"]
    if getattr(mean, "ndim", 0) < 2:
        raise bad(f"a {task} prediction whose `mean` has shape (N, ...)",
                  f"Its `mean` has shape {getattr(mean, 'shape', None)}.")
    t = meta["num_samples"]
    shapes = {"mean": mean.shape, "row": mean.shape[:-1],
              "passes": (mean.shape[0], t, *mean.shape[1:]) if rows_first else (t, *mean.shape)}
    out = {}
    for key, kind in spec.items():
        if key not in arrays:
            continue
        value = arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise bad(f"a {task} prediction whose `{key}` is a numeric array",
                      f"Its `{key}` is {getattr(value, 'dtype', type(value).__name__)}.")
        if value.shape != shapes[kind]:
            detail = f"Its `{key}` has shape {value.shape}" + (" (passes, not num_samples)" if kind == "passes"
                                                                 else "") + "."
            raise bad(f"a {task} prediction whose `{key}` has shape {shapes[kind]} (`mean` {mean.shape}, "
                      f"num_samples {t})", detail)
        out[key] = np.moveaxis(value, 1, 0) if rows_first and kind == "passes" else value
    if "sample_variances" in out and not meta["heteroscedastic"]:
        raise bad("a regression prediction with `sample_variances` only for a Gaussian head",
                  "Its `heteroscedastic` is False.")
    if meta["members"] is not None and sum(meta["members"]) != t:
        raise bad(f"a {task} prediction whose `members` sum to num_samples {t}",
                  f"Its `members` are {list(meta['members'])}.")
    return out


def keeps_samples(kind, return_samples: bool | None) -> bool:
    """Whether the per-pass outputs are kept: as ``return_samples`` asks, else ``kind``'s default (a head or
    a prediction, whose ``keeps_samples_by_default`` says whether its statistics need the passes)."""
    return kind.keeps_samples_by_default if return_samples is None else return_samples


def concatenate(predictions: Sequence[Prediction]) -> Prediction:
    """Join predictions of consecutive row blocks (same task, passes, mask and seed) into one."""
    predictions = list(predictions)
    if not predictions:
        raise invalid("predictions", "a non-empty sequence of predictions", predictions)
    first = predictions[0]
    kind = type(first)
    for p in predictions[1:]:
        if (type(p) is not kind or p.num_samples != first.num_samples or p.mask != first.mask
                or p.members != first.members):
            raise invalid("predictions", "predictions of one task, number of passes and mask", p)
        if getattr(p, "includes_aleatoric", None) != getattr(first, "includes_aleatoric", None):
            raise invalid("predictions", "regression predictions that all include the targets' noise or all "
                          "leave it out (`includes_aleatoric`)", p)
    values = {}
    for field in dataclasses.fields(first):
        items = [getattr(p, field.name) for p in predictions]
        if isinstance(items[0], np.ndarray):
            axis = 1 if field.name in ("samples", "sample_variances") else 0
            values[field.name] = np.concatenate(items, axis=axis)
        elif items[0] is None and field.name in ("samples", "sample_variances"):
            values[field.name] = None
        else:
            values[field.name] = items[0]
    return kind(**values)

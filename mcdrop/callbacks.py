"""Keras callbacks: Monte Carlo dropout metrics on validation data during ``model.fit``.

:class:`MCDropoutMetrics` evaluates the model with :class:`~mcdrop.MCDropout` at the end of chosen
epochs and adds the metrics to the epoch's logs as ``val_mc_<metric>``, so ``History``,
``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau`` and ``TensorBoard`` see them like any
other validation metric:

>>> history = model.fit(x, y, epochs=20, callbacks=[                                  # doctest: +SKIP
...     mcdrop.callbacks.MCDropoutMetrics((x_val, y_val), num_samples=20),
...     keras.callbacks.EarlyStopping(monitor="val_mc_nll", patience=3),
... ])
>>> history.history["val_mc_nll"]                                                      # doctest: +SKIP

The module is named ``callbacks``, after ``keras.callbacks``, rather than ``keras``: ``from mcdrop import
keras`` would shadow the Keras package in the user's namespace. It imports Keras (and so TensorFlow) when
it is imported; ``import mcdrop`` alone does not.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Sequence

import keras
import numpy as np

from mcdrop._validation import check_choice, check_float, check_int, describe, invalid
from mcdrop.engine import MCDropout
from mcdrop.engine.mc_dropout import _count_rows
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["MCDropoutMetrics", "CLASSIFICATION_METRICS", "REGRESSION_METRICS", "DEFAULT_METRICS"]

#: Metrics the callback can log for a classifier (the names of :func:`mcdrop.evaluate`'s table).
CLASSIFICATION_METRICS = (
    "nll", "ece", "brier", "aurc", "accuracy", "mce", "classwise_ece", "excess_aurc", "error_auroc",
    "error_aupr", "mean_entropy", "mean_mutual_information",
)
#: Metrics the callback can log for a regression model.
REGRESSION_METRICS = (
    "gaussian_nll", "mixture_nll", "crps", "rmse", "coverage", "coverage_error", "interval_width",
    "miscalibration_area", "mean_std",
)
#: What is logged when ``metrics`` is not given, per task (keyed by the prediction types' ``task``).
DEFAULT_METRICS = {
    ClassificationPrediction.task: ("nll", "ece", "brier", "aurc"),
    RegressionPrediction.task: ("gaussian_nll", "crps", "rmse"),
}
_TASK_METRICS = {ClassificationPrediction.task: CLASSIFICATION_METRICS, RegressionPrediction.task: REGRESSION_METRICS}


def _is_dataset(value) -> bool:
    return all(hasattr(value, name) for name in ("as_numpy_iterator", "cardinality", "element_spec"))


def _read_dataset(dataset) -> tuple:
    """(x, y) of a finite dataset of (x, y) batches, concatenated along the rows."""
    if int(dataset.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise invalid("validation_data", "a finite dataset", dataset,
                      detail="It repeats forever: take the validation batches once (no .repeat()).")
    xs, ys = [], []
    for element in dataset.as_numpy_iterator():
        if not isinstance(element, tuple) or len(element) != 2:
            raise invalid("validation_data", "a dataset of (x, y) batches", dataset,
                          detail=f"An element has {len(element) if isinstance(element, tuple) else 1} "
                                 "part(s); sample weights are not supported.")
        if np.ndim(element[1]) == 0:
            raise invalid("validation_data", "a dataset of (x, y) batches", dataset,
                          detail="Its elements are single rows: call .batch() on it.")
        xs.append(element[0])
        ys.append(element[1])
    if not xs:
        raise invalid("validation_data", "a dataset with at least one batch", dataset)
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *xs), np.concatenate(ys)


class MCDropoutMetrics(keras.callbacks.Callback):
    r"""Log Monte Carlo dropout metrics of validation data at the end of training epochs.

    At the end of every ``every``-th epoch (and of the last one), the model's current weights are run
    through T stochastic passes on ``validation_data`` (dropout on, BatchNormalization in inference
    mode, as :class:`~mcdrop.MCDropout` does) and each metric is added to the epoch's logs as
    ``f"{prefix}{metric}"`` — by default ``val_mc_nll``, ``val_mc_ece``, ``val_mc_brier``,
    ``val_mc_aurc``. The values are those :func:`mcdrop.evaluate` reports for the same weights, T and
    seed.

    Training is not touched: the passes draw their noise from stateless streams keyed by ``seed``, so
    the weights, the optimiser's state and the random state training uses are the same with or without
    the callback. One compiled engine is built on the first evaluation and reused: the traced function
    reads the model's variables, so every epoch sees the current weights without retracing.

    Put the callback *before* the callbacks that read its values (``EarlyStopping``,
    ``ModelCheckpoint``, ``TensorBoard``): Keras calls callbacks in list order with one logs dict.
    ``History`` and the progress bar always come last.

    Parameters
    ----------
    validation_data : tuple (x, y) or tf.data.Dataset
        ``x`` as :meth:`mcdrop.MCDropout.predict` takes it (an array of shape (N, ...), or a list/dict of
        arrays for a multi-input model); ``y`` of shape (N,): integer labels for a classifier, or targets
        of shape (N,) or (N, D) for a regression model. A finite dataset of ``(x, y)`` batches is read
        once, when the callback is made, and held in memory (the labels must stay aligned with the
        passes); sample weights are not supported.
    num_samples : int, default 20
        T, the passes per evaluation. The cost is T forward passes over ``x``.
    metrics : sequence of str, optional
        Names among :data:`CLASSIFICATION_METRICS` or :data:`REGRESSION_METRICS` (the rows of
        :func:`mcdrop.evaluate`'s table). Default :data:`DEFAULT_METRICS` of the model's task:
        NLL, ECE, Brier score and AURC for a classifier; for a regression model the Gaussian NLL of
        the predictive mean and variance, the CRPS of the predictive mixture, and the RMSE of the
        mean. A regression model has no plain ``"nll"``: ask for ``"gaussian_nll"`` (moment-matched)
        or ``"mixture_nll"`` (exact, Gaussian heads only).
    every : int, default 1
        Evaluate after every ``every``-th epoch (epochs ``every``, ``2 * every``, ... counted from 1),
        and after the last epoch of ``fit``. Other epochs log nothing (Keras' ``EarlyStopping`` then
        warns that the metric is missing and skips that epoch); a stale value is never repeated.
    seed : int or None, default 0
        The seed of the passes. A fixed seed draws the same dropout masks at every evaluation, so
        epoch-to-epoch changes come from the weights, not from a new draw. None draws fresh masks
        each time.
    n_bins : int, default 15
        Bins of the calibration errors.
    level : float, default 0.95
        Level of the regression prediction intervals (``coverage``, ``interval_width``).
    prefix : str, default "val_mc_"
        Prefix of the logged names. Keras' ``TensorBoard`` callback files names starting with ``val_``
        under its validation run.
    **mc_options
        Further arguments of :class:`~mcdrop.MCDropout` (``task``, ``outputs``, ``heteroscedastic``,
        ``batch_size``, ``mask``, ...).

    Notes
    -----
    A metric that cannot be computed for these predictions (``mixture_nll`` without a Gaussian head,
    ``error_auroc`` when every row is classified correctly, a non-finite value) is logged as NaN with a
    warning, never as a made-up number. Models with several outputs are refused.

    .. math::

        \text{val\_mc\_nll} = -\frac1N \sum_{n} \log \bar p_{n, y_n}, \qquad
        \bar p_n = \frac1T \sum_{t} p_t(\cdot \mid x_n)
    """

    def __init__(self, validation_data, *, num_samples: int = 20, metrics: Sequence[str] | None = None,
                 every: int = 1, seed: int | None = 0, n_bins: int = 15, level: float = 0.95,
                 prefix: str = "val_mc_", **mc_options):
        super().__init__()
        if _is_dataset(validation_data):
            validation_data = _read_dataset(validation_data)
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise invalid("validation_data", "a tuple (x, y)", validation_data, error=TypeError)
        x, y = validation_data
        n_x, y_array = _count_rows(x), np.asarray(y)
        if n_x is None:
            raise invalid("validation_data", "x as an array, or a list/dict of arrays, with a row axis", x,
                          error=TypeError)
        if y_array.ndim == 0 or y_array.shape[0] != n_x:
            raise invalid("validation_data", f"y with one row per row of x ({n_x})", y_array)
        self.x, self.y = x, y_array
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.every = check_int(every, "every", minimum=1)
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        self.n_bins = check_int(n_bins, "n_bins", minimum=1)
        self.level = check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        if not isinstance(prefix, str):
            raise invalid("prefix", "a string", prefix, error=TypeError)
        self.prefix = prefix
        if metrics is not None:
            if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
                raise invalid("metrics", "a non-empty sequence of metric names", metrics, error=TypeError)
            for name in metrics:
                check_choice(name, "metrics", CLASSIFICATION_METRICS + REGRESSION_METRICS)
            metrics = tuple(dict.fromkeys(metrics))
        self.metrics = metrics
        accepted = set(inspect.signature(MCDropout).parameters) - {"model", "num_samples", "seed", "verbose"}
        for name, value in mc_options.items():
            if name not in accepted:
                raise invalid(name, f"an option of MCDropout ({', '.join(sorted(accepted))})", value,
                              detail="The callback sets model, num_samples, seed and verbose itself.",
                              error=TypeError)
        self.mc_options = mc_options
        self._engine = None
        self._warned: set[str] = set()

    # -- the engine -----------------------------------------------------------------------------
    @property
    def engine(self):
        """The :class:`~mcdrop.MCDropout` engine reused across epochs (None until training begins)."""
        return self._engine

    def _engine_for(self, model):
        if self._engine is None or self._engine.model is not model:
            self._engine = MCDropout(model, self.num_samples, self.seed, verbose=0, **self.mc_options)
        return self._engine

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model=None) -> dict[str, float]:
        """The metrics of ``model`` (default: the model being trained) with its current weights, keyed
        by their logged names. NaN where a metric cannot be computed."""
        from mcdrop.report import evaluate

        model = self.model if model is None else model
        prediction = self._engine_for(model).predict(self.x)
        if isinstance(prediction, (list, dict)):
            raise invalid("validation_data", "data for a model with a single output", self.x,
                          detail=f"The model has {len(prediction)} outputs; MCDropoutMetrics evaluates one.")
        task = prediction.task
        names = self.metrics if self.metrics is not None else DEFAULT_METRICS[task]
        for name in names:
            if name not in _TASK_METRICS[task]:
                hint = " (use 'gaussian_nll' or 'mixture_nll')" if name == "nll" else ""
                raise invalid("metrics", f"{task} metrics among {', '.join(map(repr, _TASK_METRICS[task]))}"
                              f"{hint}, as the model is read as a {task} model", name)
        report = evaluate(prediction, self.y, n_bins=self.n_bins, level=self.level, task=task)
        values = report.metrics["model"]
        out = {}
        for name in names:
            value = values[name]
            if value is None or not math.isfinite(value):
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"MCDropoutMetrics: {name} cannot be computed for these predictions "
                                  f"(received {describe(value)}); logging {self.prefix}{name} as NaN.",
                                  UserWarning, stacklevel=2)
                value = math.nan
            out[f"{self.prefix}{name}"] = float(value)
        return out

    def _due(self, epoch: int) -> bool:
        last = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def on_train_begin(self, logs=None):
        # build the engine now, so a model without dropout or a bad option fails before an epoch is spent
        # (a subclassed model that is not built yet is wrapped at the first evaluation instead)
        if self.model is not None and self.model.built:
            self._engine_for(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        values = self.evaluate()
        if logs is not None:
            logs.update(values)

    def __repr__(self) -> str:
        return (f"MCDropoutMetrics(rows={len(self.y)}, num_samples={self.num_samples}, "
                f"metrics={self.metrics if self.metrics is not None else 'default'}, every={self.every}, "
                f"seed={self.seed}, prefix={self.prefix!r})")

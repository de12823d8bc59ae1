"""mcdrop — Monte Carlo dropout uncertainty for Keras 3.

Wrap a trained Keras model with :class:`MCDropout`; its ``predict`` runs T stochastic
passes (dropout on, everything else in inference mode) in one compiled function and
returns a prediction object with the predictive mean, variance and the uncertainty
decomposition. Downstream modules work on those predictions or on plain arrays:

``mcdrop.metrics``       calibration and uncertainty-quality metrics
``mcdrop.calibration``   post-hoc recalibration
``mcdrop.acquisition``   acquisition functions for active learning
``mcdrop.active``        the labeling loop
``mcdrop.conformal``     conformal prediction sets and intervals
``mcdrop.plotting``      Display objects (matplotlib, imported lazily)
``mcdrop.store``         predictions streamed to disk (``predict(x, out=...)``)
``mcdrop.distributed``   scoring huge pools on a Ray cluster
``mcdrop.callbacks``     MC dropout metrics in Keras training logs (``MCDropoutMetrics``)
``mcdrop.tuning``        choosing the dropout rate at inference (``tune_rate``)

Attributes are imported on first use, so ``import mcdrop`` does not load TensorFlow.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ATTRIBUTES = {
    "MCDropout": "mcdrop.engine",
    "KerasCompatibilityError": "mcdrop.engine",
    "Ensemble": "mcdrop.engine.ensemble",
    "ClassificationPrediction": "mcdrop.predictive",
    "RegressionPrediction": "mcdrop.predictive",
    "EpistemicOnlyWarning": "mcdrop.predictive",
    "evaluate": "mcdrop.report",
    "tune_rate": "mcdrop.tuning",
    "MCDropoutMetrics": "mcdrop.callbacks",
}
_SUBMODULES = (
    "engine", "predictive", "accumulators", "heads", "store", "metrics", "calibration", "acquisition",
    "active", "plotting", "report", "distributed", "io", "cli", "conformal", "callbacks", "tuning",
)

__all__ = [*_ATTRIBUTES, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"mcdrop.{name}")
    else:
        raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)

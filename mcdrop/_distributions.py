"""tensorflow-probability views of predictions (imported lazily: TFP loads TensorFlow).

Batch shapes follow the prediction: (N,) for classes, (N, D) for regression. The pass
axis T of the samples becomes the mixture's component axis.
"""

from __future__ import annotations

import numpy as np


def _tfd():
    import tensorflow_probability as tfp

    return tfp.distributions


def categorical(probs: np.ndarray):
    """Categorical over averaged class probabilities (N, C)."""
    return _tfd().Categorical(probs=np.asarray(probs, dtype=np.float64))


def gaussian_mixture(means: np.ndarray, stds: np.ndarray):
    """Equal-weight mixture of the T per-pass Normals; inputs (T, N, D)."""
    tfd = _tfd()
    loc = np.moveaxis(np.asarray(means, dtype=np.float64), 0, -1)
    scale = np.moveaxis(np.asarray(stds, dtype=np.float64), 0, -1)
    weights = tfd.Categorical(logits=np.zeros(loc.shape, dtype=np.float64))
    return tfd.MixtureSameFamily(weights, tfd.Normal(loc=loc, scale=scale))


def empirical(samples: np.ndarray):
    """The mixture of point masses at the T pass outputs (T, N, D)."""
    return _tfd().Empirical(np.moveaxis(np.asarray(samples, dtype=np.float64), 0, -1), event_ndims=0)


def normal(mean: np.ndarray, std: np.ndarray):
    """Moment-matched Normal, when the per-pass outputs were not kept."""
    return _tfd().Normal(loc=np.asarray(mean, dtype=np.float64), scale=np.asarray(std, dtype=np.float64))

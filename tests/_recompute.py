"""Helpers for tests that check an example's numbers against independent recomputations."""

from __future__ import annotations

import numpy as np

import mcdrop


def spy_on_predict(monkeypatch) -> list:
    """Record ``(engine, x, prediction)`` for every ``MCDropout.predict`` made while the test runs.

    With a seed, ``engine.sample(x)`` afterwards gives the same passes bit for bit, from which a
    test recomputes the statistics itself.
    """
    calls = []
    original = mcdrop.MCDropout.predict

    def spy(self, x, *args, **kwargs):
        prediction = original(self, x, *args, **kwargs)
        calls.append((self, np.asarray(x), prediction))
        return prediction

    monkeypatch.setattr(mcdrop.MCDropout, "predict", spy)
    return calls


def entropy(p, axis=-1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``, with 0 log 0 = 0, in float64."""
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)

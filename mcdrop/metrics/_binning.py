"""Binning of confidences for calibration metrics (vectorised, O(N log B))."""

from __future__ import annotations

import numpy as np

from mcdrop._validation import check_choice, check_int

STRATEGIES = ("uniform", "quantile")


def bin_edges(values: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """Edges (n_bins + 1,) on [0, 1]: equal widths, or the quantiles of ``values``."""
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    strategy = check_choice(strategy, "strategy", STRATEGIES)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return np.maximum.accumulate(edges)


def assign(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: bins are right-closed, ``(e_{b-1}, e_b]``, the first also holds 0.

    This is Guo et al.'s :math:`I_m = ((m-1)/M, m/M]` and scikit-learn's ``calibration_curve``.
    """
    return np.searchsorted(edges[1:-1], values, side="left")


def bin_sums(index: np.ndarray, n_bins: int, *weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Counts per bin followed by the sum of each weight array per bin."""
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    return (counts, *(np.bincount(index, weights=w, minlength=n_bins) for w in weights))

"""SetCoverageDisplay: coverage against set size."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest

from mcdrop import metrics, plotting

matplotlib.use("Agg")


def test_set_coverage_display():
    rng = np.random.default_rng(0)
    sets = rng.uniform(size=(300, 5)) < 0.4
    y = rng.integers(0, 5, size=300)
    disp = plotting.SetCoverageDisplay.from_predictions(y, sets, alpha=0.1, name="APS")
    expected = metrics.size_stratified_coverage(y, sets)
    np.testing.assert_allclose(disp.coverage, expected.coverage)
    assert [p.get_height() for p in disp.ax_.patches] == pytest.approx(expected.coverage.tolist())
    assert disp.target == pytest.approx(0.9)
    assert disp.ax_.get_lines()[0].get_ydata()[0] == pytest.approx(0.9)
    assert "APS" in disp.ax_.get_title() and f"{metrics.set_coverage(y, sets):.3f}" in disp.ax_.get_title()
    buffer = io.BytesIO()
    disp.figure_.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and len(buffer.getvalue()) > 5000


def test_set_coverage_display_bad_alpha():
    with pytest.raises(ValueError, match=r"argument `alpha`: expected a number in \(0.0, 1.0\), received 1.5"):
        plotting.SetCoverageDisplay.from_predictions([0], [[True, False]], alpha=1.5)

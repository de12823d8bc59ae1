"""What the figures must show a reader (issue 15): sparse reliability bins paler than full ones, a
confidence histogram still readable when one bar holds 90% of the rows, a gap legend drawn as the gap
bars are, risk-coverage zoomed to where the curves differ with AURC digits that tell close values apart,
and uncertainty panels titled with their score and unit. Each figure is rendered headless to PNG."""

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from mcdrop import metrics, plotting
from mcdrop.predictive import ClassificationPrediction

matplotlib.use("Agg")


def render(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return data


@pytest.fixture(scope="module")
def confident():
    """90% of the rows above 0.95 confidence, a few spread below: the shape of a good classifier's output."""
    rng = np.random.default_rng(0)
    n = 1000
    top = np.where(rng.random(n) < 0.9, rng.uniform(0.96, 0.999, n), rng.uniform(0.4, 0.95, n))
    probs = np.stack([top, 1 - top], axis=1)
    y = np.where(rng.random(n) < top, 0, 1)
    return y, probs


def bar_patches(ax):
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_sparse_bins_are_paler(confident):
    y, probs = confident
    disp = plotting.ReliabilityDisplay.from_predictions(y, probs, n_bins=10)
    curve = metrics.reliability_curve(y, probs, n_bins=10)
    filled = curve.count[curve.count > 0]
    accuracy_bars = bar_patches(disp.ax_)[:filled.size]
    alphas = np.array([bar.get_facecolor()[3] for bar in accuracy_bars])
    assert alphas[np.argmax(filled)] == pytest.approx(1.0)
    # opacity grows with the count: 0.2 + 0.8 sqrt(count / max)
    np.testing.assert_allclose(alphas, 0.2 + 0.8 * np.sqrt(filled / filled.max()), rtol=1e-6)
    assert alphas[np.argmin(filled)] < 0.5
    render(disp.figure_)


def test_histogram_log_scale_when_one_bar_dominates(confident):
    y, probs = confident
    disp = plotting.ReliabilityDisplay.from_predictions(y, probs, n_bins=10)
    assert disp.hist_ax_.get_yscale() == "log"
    heights = [p.get_height() for p in bar_patches(disp.hist_ax_) if p.get_height() > 0]
    lo, hi = disp.hist_ax_.get_ylim()
    assert max(heights) > 0.5 and lo <= min(heights) and hi >= max(heights)  # every bar visible
    # a spread-out histogram stays linear
    rng = np.random.default_rng(1)
    top = rng.uniform(0.34, 1.0, 600)
    probs = np.stack([top, (1 - top) / 2, (1 - top) / 2], axis=1)
    flat = plotting.ReliabilityDisplay.from_predictions(rng.integers(0, 3, 600), probs, n_bins=10)
    assert flat.hist_ax_.get_yscale() == "linear"


def test_gap_legend_matches_gap_bars(confident):
    y, probs = confident
    disp = plotting.ReliabilityDisplay.from_predictions(y, probs, n_bins=10)
    legend = disp.ax_.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    handle = legend.legend_handles[labels.index("Gap to confidence")]
    gap_bars = [p for p in bar_patches(disp.ax_) if p.get_hatch()]
    assert gap_bars and all(p.get_hatch() == handle.get_hatch() == "//" for p in gap_bars)
    assert all(np.allclose(p.get_edgecolor(), handle.get_edgecolor()) for p in gap_bars)
    assert np.allclose(handle.get_facecolor()[:3], to_rgba(gap_bars[0].get_facecolor())[:3])


def test_risk_coverage_zooms_where_curves_differ():
    # 200 rows, errors only among the 30 least confident: every curve is 0 up to coverage 0.85
    rng = np.random.default_rng(3)
    n = 200
    confidence = np.sort(rng.uniform(0.5, 1.0, n))[::-1]
    y = np.zeros(n, dtype=int)
    y[n - 30 + rng.choice(30, 8, replace=False)] = 1
    probs = np.stack([confidence, 1 - confidence], axis=1)
    disp = plotting.RiskCoverageDisplay.from_predictions(y, probs, name="a")
    first_error = np.flatnonzero(y)[0] + 1  # coverage at which the risk leaves 0
    lo, hi = disp.ax_.get_xlim()
    assert hi == 1.0 and 0.7 < lo < first_error / n
    assert "zoomed" in disp.ax_.get_xlabel()
    # the AURC in the legend is the mean selective risk, with digits enough to tell it apart
    risk = np.cumsum(y != 0) / np.arange(1, n + 1)
    label = disp.ax_.get_legend().get_texts()[0].get_text()
    assert label == f"a (AURC {np.mean(risk):.5f})"
    render(disp.figure_)


def test_risk_coverage_not_zoomed_when_errors_start_early(confident):
    y, probs = confident
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, len(y))
    disp = plotting.RiskCoverageDisplay.from_predictions(y, probs)
    assert disp.ax_.get_xlim() == (0.0, 1.0) and disp.ax_.get_xlabel() == "Coverage"


@pytest.mark.parametrize("aurc, text", [(0.00150, "0.00150"), (0.00146, "0.00146"), (0.00148, "0.00148"),
                                        (0.1816, "0.1816"), (0.0, "0.0000")])
def test_aurc_digits(aurc, text):
    disp = plotting.RiskCoverageDisplay(coverage=[0.5, 1.0], risk=[0.0, aurc * 2], aurc=aurc, name="m").plot()
    assert disp.ax_.get_legend().get_texts()[0].get_text() == f"m (AURC {text})"


@pytest.mark.parametrize("measure, title", [("entropy", "predictive entropy (nats)"),
                                            ("mutual_information", "mutual information (nats)"),
                                            ("variation_ratio", "variation ratio (share of passes)")])
def test_uncertainty_titles_name_score_and_unit(measure, title):
    rng = np.random.default_rng(5)
    passes = rng.dirichlet(np.full(3, 0.5), size=(4, 300))
    pred = ClassificationPrediction.from_samples(passes)
    disp = plotting.UncertaintyDisplay.from_ood(pred, ClassificationPrediction.from_samples(passes[:, :50] ** 0.2
                                                / (passes[:, :50] ** 0.2).sum(-1, keepdims=True)),
                                                measure=measure, name="MC dropout")
    assert disp.ax_.get_title().startswith(f"MC dropout: {title}")
    assert disp.ax_.get_xlabel() == title
    render(disp.figure_)

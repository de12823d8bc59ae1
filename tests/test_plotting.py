import io

import matplotlib
import numpy as np
import pytest

from mcdrop import plotting
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def classification():
    rng = np.random.default_rng(0)
    passes = rng.dirichlet(np.full(4, 0.4), size=(6, 400))
    pred = ClassificationPrediction.from_samples(passes)
    y = np.array([rng.choice(4, p=p) for p in pred.mean])
    return y, pred


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(1, 300)) + 0.3 * rng.normal(size=(8, 300))
    variances = rng.uniform(0.1, 0.4, size=(8, 300))
    pred = RegressionPrediction.from_samples(means, variances)
    y = pred.mean[:, 0] + pred.std[:, 0] * rng.normal(size=300)
    return y, pred


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def check_png(figure):
    data = png_bytes(figure)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000  # a blank canvas of this size compresses to far less


def test_reliability_display(classification):
    y, pred = classification
    disp = plotting.ReliabilityDisplay.from_predictions(y, pred, n_bins=10, name="mc")
    assert len(disp.figure_.axes) == 2
    assert disp.ax_.get_ylabel() == "Accuracy"
    assert disp.hist_ax_.get_ylabel().startswith("Fraction of rows")
    assert "ECE" in disp.ax_.get_title() and "mc" in disp.ax_.get_title()
    n_filled = int((disp.count > 0).sum())
    assert len(disp.ax_.patches) == 2 * n_filled  # accuracy bars and gap bars
    check_png(disp.figure_)


def test_reliability_on_given_axes(classification):
    from matplotlib.figure import Figure

    y, pred = classification
    fig = Figure()
    ax = fig.add_subplot()
    disp = plotting.ReliabilityDisplay.from_predictions(y, pred.mean, ax=ax)
    assert disp.ax_ is ax and disp.hist_ax_ is None
    assert len(fig.axes) == 1


def test_risk_coverage_display_overlays(classification):
    y, pred = classification
    first = plotting.RiskCoverageDisplay.from_predictions(y, pred, name="confidence")
    second = plotting.RiskCoverageDisplay.from_predictions(y, pred, uncertainty=pred, measure="mutual_information",
                                                           name="MI", ax=first.ax_)
    assert second.ax_ is first.ax_
    assert len(first.ax_.get_lines()) == 2
    assert first.ax_.get_xlabel() == "Coverage"
    check_png(first.figure_)


def test_uncertainty_display(classification):
    y, pred = classification
    disp = plotting.UncertaintyDisplay.from_predictions(y, pred, measure="mutual_information")
    assert disp.ax_.get_xlabel() == "mutual information (nats)"
    assert disp.ax_.get_title().startswith("Mutual information (nats)")
    assert [t.get_text().split(" ")[0] for t in disp.ax_.get_legend().get_texts()] == ["correct", "wrong"]
    check_png(disp.figure_)


def test_uncertainty_display_ood():
    rng = np.random.default_rng(2)
    disp = plotting.UncertaintyDisplay.from_ood(rng.gamma(2, 0.2, 500), rng.gamma(4, 0.3, 200))
    assert "AUROC" in disp.ax_.get_title()
    assert disp.labels == ("in-distribution", "out-of-distribution")
    check_png(disp.figure_)


def test_regression_calibration_display(regression):
    y, pred = regression
    disp = plotting.RegressionCalibrationDisplay.from_predictions(y, pred, name="mc")
    assert disp.ax_.get_xlabel() == "Expected proportion below quantile"
    assert disp.expected.shape == disp.observed.shape == (21,)
    check_png(disp.figure_)


def test_prediction_interval_display(regression):
    y, pred = regression
    disp = plotting.PredictionIntervalDisplay.from_predictions(y, pred, level=0.9, max_points=100)
    assert disp.x.size == 100
    assert np.all(np.diff(disp.mean) >= 0)
    assert "coverage" in disp.ax_.get_title()
    check_png(disp.figure_)
    with_x = plotting.PredictionIntervalDisplay.from_predictions(y, pred, x=np.linspace(0, 1, 300))
    assert with_x.ax_.get_xlabel() == "x"


def test_plot_does_not_use_pyplot(classification):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    y, pred = classification
    plotting.ReliabilityDisplay.from_predictions(y, pred)
    assert plt.get_fignums() == before


def test_error_n_bins_in_histogram(classification):
    y, pred = classification
    with pytest.raises(ValueError, match=r"`n_bins`: expected an integer >= 1, received 0"):
        plotting.UncertaintyDisplay.from_predictions(y, pred, n_bins=0)


def test_error_output_index(regression):
    y, pred = regression
    with pytest.raises(ValueError, match=r"`output`: expected an integer >= 0 and <= 0, received 1"):
        plotting.PredictionIntervalDisplay.from_predictions(y, pred, output=1)

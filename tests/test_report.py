import base64
import json
import os
import re

import numpy as np
import pytest
from scipy import special

import mcdrop
from mcdrop import metrics
from mcdrop.calibration import TemperatureScaling
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction
from mcdrop.report import evaluate


@pytest.fixture(scope="module")
def classification():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(600, 3)) * 3
    passes = np.exp(special.log_softmax(logits[None] + rng.normal(size=(5, 600, 3)), axis=-1))
    y = (rng.random((600, 1)) > np.exp(special.log_softmax(logits / 2, axis=-1)).cumsum(1)).sum(1).clip(0, 2)
    mc = ClassificationPrediction.from_samples(passes)
    deterministic = np.exp(special.log_softmax(logits, axis=-1))
    scaled = TemperatureScaling().fit(mc, y).transform_prediction(mc)
    return y, {"deterministic": deterministic, "mc": mc, "mc+temperature": scaled}


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(1, 200)) + 0.3 * rng.normal(size=(6, 200))
    variances = rng.uniform(0.1, 0.3, size=(6, 200))
    pred = RegressionPrediction.from_samples(means, variances)
    y = pred.mean[:, 0] + 1.3 * pred.std[:, 0] * rng.normal(size=200)
    return y, pred


def test_single_classification_matches_metrics(classification):
    y, preds = classification
    report = evaluate(preds["mc"], y, n_bins=10)
    row = report.metrics["model"]
    mc = preds["mc"]
    assert report.task == "classification" and report.n_rows == 600
    assert row["accuracy"] == np.mean(mc.mean.argmax(1) == y)
    assert row["nll"] == metrics.negative_log_likelihood(y, mc)
    assert row["ece"] == metrics.expected_calibration_error(y, mc, n_bins=10)
    assert row["aurc"] == metrics.aurc(y, mc)
    assert row["error_auroc"] == metrics.uncertainty_auroc(mc.mean.argmax(1) != y, mc.entropy)
    assert row["mean_mutual_information"] == pytest.approx(mc.mutual_information.mean())
    assert row["num_samples"] == 5


def test_top_level_lazy_export(classification):
    y, preds = classification
    assert mcdrop.evaluate is evaluate


def test_side_by_side(classification):
    y, preds = classification
    report = evaluate(preds, y)
    assert report.models == ["deterministic", "mc", "mc+temperature"]
    assert report.metrics["deterministic"]["mean_mutual_information"] is None
    assert report.metrics["mc+temperature"]["nll"] <= report.metrics["mc"]["nll"]
    nlls = {m: report.metrics[m]["nll"] for m in report.models}
    assert report.best("nll") == min(nlls, key=nlls.get)
    text = str(report)
    assert text.splitlines()[1].split() == ["metric", *report.models]
    nll_line = next(line for line in text.splitlines() if line.startswith("nll"))
    assert nll_line.count("*") == 1
    assert f"{report.metrics[report.best('nll')]['nll']:.4f}*" in nll_line


def test_to_dict_and_json(classification, tmp_path):
    y, preds = classification
    report = evaluate(preds, y)
    path = tmp_path / "report.json"
    report.to_json(path)
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert loaded["metrics"]["mc"]["brier"] == report.metrics["mc"]["brier"]
    assert loaded["directions"]["ece"] == -1 and loaded["directions"]["accuracy"] == 1
    assert os.listdir(tmp_path) == ["report.json"]


def test_to_html_is_self_contained(classification, tmp_path):
    y, preds = classification
    report = evaluate({"mc": preds["mc"], "mc+temperature": preds["mc+temperature"]}, y)
    path = tmp_path / "report.html"
    report.to_html(path)
    text = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # one shared risk-coverage figure, then a reliability diagram and an uncertainty plot per model
    assert len(images) == 1 + 2 * 2
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from outside
    assert "mc+temperature" in text and 'class="best"' in text
    assert os.listdir(tmp_path) == ["report.html"]


def test_atomic_write_keeps_old_file_on_failure(classification, tmp_path, monkeypatch):
    y, preds = classification
    report = evaluate(preds["mc"], y)
    path = tmp_path / "report.json"
    path.write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        report.to_json(path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_regression_report(regression, tmp_path):
    y, pred = regression
    report = evaluate({"mc": pred, "mc (pass means only)": pred.samples}, y, level=0.9)
    row = report.metrics["mc"]
    assert report.task == "regression"
    assert row["rmse"] == metrics.rmse(y, pred)
    assert row["crps"] == metrics.crps_samples(y, pred)
    assert row["coverage"] == metrics.interval_coverage(y, pred, level=0.9)
    assert row["coverage_error"] == pytest.approx(abs(row["coverage"] - 0.9))
    assert row["miscalibration_area"] == metrics.miscalibration_area(y, pred)
    # the exact mixture NLL is available only with a Gaussian head
    from scipy import stats
    dens = stats.norm.pdf(y[None], pred.samples[..., 0], np.sqrt(pred.sample_variances[..., 0])).mean(0)
    assert row["mixture_nll"] == pytest.approx(-np.mean(np.log(dens)), rel=1e-10)
    assert report.metrics["mc (pass means only)"]["mixture_nll"] is None
    report.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 1 + 2
    assert "rmse" in str(report)


def test_error_empty_dict():
    with pytest.raises(ValueError, match=r"`prediction_or_predictions`: expected a non-empty dict"):
        evaluate({}, [0, 1])


def test_error_non_string_name():
    with pytest.raises(TypeError, match=r"`prediction_or_predictions`: expected a dict keyed by model names"):
        evaluate({1: np.eye(2)}, [0, 1])


def test_error_task():
    with pytest.raises(ValueError, match=r"`task`: expected one of 'classification', 'regression'"):
        evaluate(np.eye(2), [0, 1], task="ranking")


def test_error_level():
    with pytest.raises(ValueError, match=r"`level`: expected a number in \(0.0, 1.0\), received 1.0"):
        evaluate(np.eye(2), [0, 1], level=1.0)


def test_error_mixed_tasks(regression):
    y, pred = regression
    with pytest.raises(TypeError, match=r"`prediction_or_predictions\['r'\]`: expected a classification prediction"):
        evaluate({"c": np.full((200, 2), 0.5), "r": pred}, np.zeros(200, dtype=int))


def test_error_bad_labels_propagate():
    with pytest.raises(ValueError, match=r"`y_true`: expected labels >= 0 and < 2"):
        evaluate(np.eye(2), [0, 2])


def test_task_read_from_arrays():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert evaluate(probs, np.array([0.0, 1.0])).task == "classification"  # float labels, e.g. from a CSV
    samples = np.array([[0.1, 0.9], [0.3, 0.5], [0.2, 0.7]])  # (T, N) regression samples
    assert evaluate(samples, np.array([0.25, 0.6])).task == "regression"
    assert evaluate(np.array([[0.5, 0.5], [0.5, 0.5]]), [0.3, 0.7]).task == "regression"


def test_ties_are_all_marked_best(regression):
    from mcdrop.calibration import VarianceScaling

    y, pred = regression
    scaled = VarianceScaling().fit(pred, y).transform(pred)  # same mean, so the same RMSE
    report = evaluate({"mc": pred, "scaled": scaled}, y)
    rmse_line = next(line for line in str(report).splitlines() if line.startswith("rmse"))
    assert rmse_line.count("*") == 2
    crps_line = next(line for line in str(report).splitlines() if line.startswith("crps"))
    assert crps_line.count("*") == 1


def test_overlaid_calibration_curves_share_one_diagonal(regression):
    from mcdrop import plotting

    y, pred = regression
    first = plotting.RegressionCalibrationDisplay.from_predictions(y, pred, name="a")
    plotting.RegressionCalibrationDisplay.from_predictions(y, pred.samples, name="b", ax=first.ax_)
    labels = [t.get_text() for t in first.ax_.get_legend().get_texts()]
    assert labels.count("Perfect calibration") == 1 and len(labels) == 3


def test_html_explains_itself(classification, tmp_path):
    from importlib import metadata

    from mcdrop.report import METRIC_INFO

    y, preds = classification
    report = evaluate({"mc": preds["mc"], "mc+temperature": preds["mc+temperature"]}, y)
    path = tmp_path / "report.html"
    report.to_html(path, provenance={"model file": "models/digits.keras"})
    text = path.read_text()
    # provenance at the top, before the metrics: versions from the package metadata, the date, the run
    top = text[:text.index("<h2>Metrics</h2>")]
    for dist, label in (("keras", "Keras"), ("tensorflow", "TensorFlow")):
        assert f"<th>{label} version</th><td>{metadata.version(dist)}</td>" in top
    assert re.search(r"<th>date</th><td>\d{4}-\d\d-\d\d \d\d:\d\d UTC</td>", top)
    assert "<th>model file</th><td>models/digits.keras</td>" in top
    assert "<th>passes T</th><td>5</td>" in top and "<th>mask mode</th><td>consistent</td>" in top
    # readable names, each with its formula one click away, and the direction in words
    for name in report.metric_names:
        label, formula = METRIC_INFO[name]
        assert f"<summary>{label}" in text.replace("&#x27;", "'"), name
    assert "expected calibration error ↓</summary>" in text and "lower is better" in text
    # a section says what its numbers mean; the configuration is a table, not a JSON block
    assert "The best value of each row is highlighted." in text and 'class="best"' in text
    assert "<h2>Configuration</h2>" in text and "<pre" not in text
    assert "<th>calibration bins</th><td>15</td>" in text


def test_html_single_model_highlights_nothing(classification, tmp_path):
    y, preds = classification
    path = tmp_path / "one.html"
    evaluate(preds["mc"], y).to_html(path, figures=False)
    text = path.read_text()
    assert 'class="best"' not in text and "highlighted" not in text
    assert "<th>seed</th>" not in text  # the fixture's prediction has no seed: nothing invented


def test_html_provenance_names_models_without_passes(classification, tmp_path):
    y, preds = classification
    path = tmp_path / "mixed.html"
    evaluate({"deterministic": preds["deterministic"], "mc": preds["mc"]}, y).to_html(path, figures=False)
    assert "<th>passes T</th><td>5 (none for deterministic)</td>" in path.read_text()


def test_html_report_does_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np; from mcdrop.report import evaluate; "
            "evaluate(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 1]).to_html(sys.argv[1], figures=False); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.html")], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.split() == ["False", "False"]
    assert "TensorFlow version" in (tmp_path / "r.html").read_text()


def test_html_regression_coverage_states_its_aim(regression, tmp_path):
    y, pred = regression
    path = tmp_path / "reg.html"
    evaluate(pred, y, level=0.9).to_html(path, figures=False)
    text = path.read_text()
    assert "<summary>interval coverage</summary>" in text
    assert '<span class="dir">best at the level, 0.9</span>' in text
    assert "<th>interval level</th><td>0.9</td>" in text


def test_html_ood_and_conformal_sections_are_tables():
    """The out-of-distribution and conformal results (``evaluate(ood=..., calibration=...)``) render as
    sections with their reading and real tables; a report without them has neither."""
    from types import SimpleNamespace

    from mcdrop.report import _conformal_section, _ood_section

    ood = {"mc": {"entropy": {"auroc": 0.9, "aupr": 0.8, "fpr_at_95_tpr": 0.3},
                  "mutual_information": {"auroc": 0.95, "aupr": 0.7, "fpr_at_95_tpr": 0.2}, "n_rows": 50},
           "det": {"entropy": {"auroc": 0.8, "aupr": 0.85, "fpr_at_95_tpr": 0.4}, "mutual_information": None,
                   "n_rows": 50}}
    conformal = {"mc": {"lac": {"0.1": {"coverage": 0.91, "mean_set_size": 1.2}, "0.05": None}}}
    report = SimpleNamespace(task="classification", ood=ood, conformal=conformal)
    html = _ood_section(report).render()
    assert "<h2>Out-of-distribution detection</h2>" in html and "higher for better" in html
    assert "mutual information (nats)" in html and "predictive entropy (nats)" in html
    assert html.count('class="best"') == 3  # 0.95 AUROC, 0.85 AUPR, 0.2 FPR
    assert '<td class="best">0.9500</td>' in html and '<td class="best">0.8500</td>' in html
    assert "<td>—</td>" in html and "<pre" not in html
    html = _conformal_section(report).render()
    assert "<h2>Conformal prediction</h2>" in html and "LAC (least ambiguous sets)" in html
    assert "<td>0.9000</td><td>0.9100</td><td>1.2000</td>" in html  # target, coverage, size
    assert "<td>0.05</td><td>0.9500</td><td>—</td><td>—</td>" in html  # too few calibration rows
    empty = SimpleNamespace(task="classification", ood={}, conformal={})
    assert _ood_section(empty) is None and _conformal_section(empty) is None

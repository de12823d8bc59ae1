"""evaluate(..., ood=..., calibration=...): the out-of-distribution and conformal sections of the report,
checked against scikit-learn and a hand-computed split conformal threshold."""

from __future__ import annotations

import json
import math
import warnings

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import mcdrop
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

matplotlib.use("Agg")


def _classification(rng, n, concentration):
    return ClassificationPrediction.from_samples(rng.dirichlet(np.full(4, concentration), size=(5, n)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    pred, pred_ood, pred_cal = _classification(rng, 200, 0.3), _classification(rng, 100, 2.0), _classification(rng, 60, 0.3)
    y = np.array([rng.choice(4, p=p) for p in pred.mean])
    y_cal = np.array([rng.choice(4, p=p) for p in pred_cal.mean])
    return pred, y, pred_ood, pred_cal, y_cal


def _sklearn_ood(u_in, u_out):
    score = np.r_[u_in, u_out]
    is_out = np.r_[np.zeros(len(u_in)), np.ones(len(u_out))]
    fpr, tpr, _ = roc_curve(is_out, score)
    return roc_auc_score(is_out, score), average_precision_score(is_out, score), fpr[np.argmax(tpr >= 0.95)]


def test_ood_section_matches_scikit_learn(data):
    pred, y, pred_ood, _, _ = data
    report = mcdrop.evaluate(pred, y, ood=pred_ood)
    section = report.ood["model"]
    assert section["n_rows"] == 100
    scores = {
        "max_probability": (1 - pred.mean.max(axis=1), 1 - pred_ood.mean.max(axis=1)),
        "entropy": (pred.entropy, pred_ood.entropy),
        "mutual_information": (pred.mutual_information, pred_ood.mutual_information),
        "variation_ratio": (pred.variation_ratio, pred_ood.variation_ratio),
    }
    for name, (u_in, u_out) in scores.items():
        auroc, aupr, fpr95 = _sklearn_ood(u_in, u_out)
        assert section[name]["auroc"] == pytest.approx(auroc, abs=1e-12), name
        assert section[name]["aupr"] == pytest.approx(aupr, abs=1e-12), name
        assert section[name]["fpr_at_95_tpr"] == pytest.approx(fpr95, abs=1e-12), name
    assert section["entropy"]["auroc"] > 0.7  # flatter OOD probabilities: a real signal
    text = str(report)
    assert "out-of-distribution detection" in text and "mutual_information" in text
    assert "Out-of-distribution: model" in report.figures()


def test_ood_section_for_plain_probabilities_and_regression(data):
    pred, y, pred_ood, _, _ = data
    report = mcdrop.evaluate(pred.mean, y, ood=pred_ood.mean)
    assert report.ood["model"]["mutual_information"] is None and report.ood["model"]["variation_ratio"] is None
    auroc, _, _ = _sklearn_ood(1 - pred.mean.max(axis=1), 1 - pred_ood.mean.max(axis=1))
    assert report.ood["model"]["max_probability"]["auroc"] == pytest.approx(auroc)
    rng = np.random.default_rng(1)
    reg = RegressionPrediction.from_samples(rng.normal(size=(6, 80)), rng.uniform(0.5, 1, size=(6, 80)))
    reg_ood = RegressionPrediction.from_samples(3 * rng.normal(size=(6, 40)), rng.uniform(0.5, 1, size=(6, 40)))
    report = mcdrop.evaluate(reg, rng.normal(size=80), ood=reg_ood)
    for name in ("variance", "epistemic_variance"):
        auroc, aupr, fpr95 = _sklearn_ood(getattr(reg, name)[:, 0], getattr(reg_ood, name)[:, 0])
        assert report.ood["model"][name]["auroc"] == pytest.approx(auroc)
        assert report.ood["model"][name]["fpr_at_95_tpr"] == pytest.approx(fpr95)


def test_conformal_section_by_hand(data):
    pred, y, _, pred_cal, y_cal = data
    report = mcdrop.evaluate(pred, y, calibration=(pred_cal, y_cal))
    section = report.conformal["model"]
    assert set(section) == {"lac", "aps"} and set(section["lac"]) == {"0.1", "0.05"}
    for alpha in (0.1, 0.05):
        scores = np.sort(1 - pred_cal.mean[np.arange(60), y_cal])
        q = scores[math.ceil(61 * (1 - alpha)) - 1]
        sets = (1 - pred.mean) <= q
        row = section["lac"][f"{alpha:g}"]
        assert row["coverage"] == pytest.approx(np.mean(sets[np.arange(200), y]))
        assert row["mean_set_size"] == pytest.approx(sets.sum(axis=1).mean())
    assert report.options["calibration_rows"] == 60
    assert section["aps"]["0.05"]["mean_set_size"] >= section["aps"]["0.1"]["mean_set_size"]
    # APS in the report is the randomised form with seed 0 (the class itself is checked against MAPIE)
    from mcdrop.conformal import ConformalClassifier

    sets = ConformalClassifier("aps", alpha=0.1, randomized=True, random_state=0).fit(pred_cal, y_cal).predict_sets(pred)
    assert section["aps"]["0.1"]["mean_set_size"] == pytest.approx(sets.sum(axis=1).mean())
    assert "conformal prediction" in str(report)
    assert "Conformal APS sets (alpha 0.1): model" in report.figures()


def test_conformal_section_regression():
    rng = np.random.default_rng(2)
    reg = RegressionPrediction.from_samples(rng.normal(size=(6, 100)))
    cal = RegressionPrediction.from_samples(rng.normal(size=(6, 40)))
    y, y_cal = rng.normal(size=100), rng.normal(size=40)
    report = mcdrop.evaluate(reg, y, calibration=(cal, y_cal))
    scores = np.sort(np.abs(y_cal - cal.mean[:, 0]) / cal.std[:, 0])
    q = scores[math.ceil(41 * 0.9) - 1]
    inside = np.abs(y - reg.mean[:, 0]) <= q * reg.std[:, 0]
    row = report.conformal["model"]["normalized"]["0.1"]
    assert row["coverage"] == pytest.approx(inside.mean())
    assert row["mean_width"] == pytest.approx(np.mean(2 * q * reg.std))
    assert set(report.conformal["model"]) == {"normalized", "cqr"}


def test_too_few_calibration_rows_leave_a_gap_and_warn(data):
    pred, y, _, pred_cal, y_cal = data
    with pytest.warns(UserWarning, match=r"no row at alpha=0.05: it needs at least 19 calibration rows, received 12"):
        report = mcdrop.evaluate(pred, y, calibration=(pred_cal.subset(slice(0, 12)), y_cal[:12]))
    assert report.conformal["model"]["lac"]["0.05"] is None
    assert report.conformal["model"]["lac"]["0.1"] is not None


def test_sections_in_json_and_html(data, tmp_path):
    pred, y, pred_ood, pred_cal, y_cal = data
    report = mcdrop.evaluate({"mc": pred, "plain": pred.mean}, y, ood={"mc": pred_ood},
                             calibration=({"mc": pred_cal, "plain": pred_cal.mean}, y_cal))
    report.to_json(tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(saved["ood"]) == {"mc"} and set(saved["conformal"]) == {"mc", "plain"}
    assert saved["conformal"]["mc"]["aps"]["0.1"]["coverage"] == pytest.approx(
        report.conformal["mc"]["aps"]["0.1"]["coverage"])
    report.to_html(tmp_path / "r.html", figures=False)
    page = (tmp_path / "r.html").read_text()
    assert "<h2>out-of-distribution detection" in page.lower() and "<h2>conformal prediction" in page.lower()
    plain = mcdrop.evaluate(pred, y)
    assert "ood" not in plain.to_dict() and "conformal" not in plain.to_dict()


def test_section_errors(data):
    pred, y, pred_ood, pred_cal, y_cal = data
    with pytest.raises(TypeError, match=r"argument `calibration`: expected a \(prediction, labels\) pair"):
        mcdrop.evaluate(pred, y, calibration=pred_cal)
    with pytest.raises(ValueError, match=r"argument `ood`: expected a dict keyed by the evaluated models \('a', 'b'\), "
                                         r"received 'c'"):
        mcdrop.evaluate({"a": pred, "b": pred}, y, ood={"c": pred_ood})
    with pytest.raises(TypeError, match=r"argument `ood`: expected a dict keyed by model name when several"):
        mcdrop.evaluate({"a": pred, "b": pred}, y, ood=pred_ood)
    reg = RegressionPrediction.from_samples(np.ones((3, 10)))
    with pytest.raises(TypeError, match=r"argument `ood`: expected a classification prediction"):
        mcdrop.evaluate(pred, y, ood=reg)
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected labels >= 0 and < 4"):
        mcdrop.evaluate(pred, y, calibration=(pred_cal, y_cal + 4))


def test_calibration_of_the_wrong_task_names_the_argument(data):
    pred, y, _, _, _ = data
    reg = RegressionPrediction.from_samples(np.ones((3, 30)))
    with pytest.raises(TypeError, match=r"argument `calibration`: expected a classification prediction"):
        mcdrop.evaluate(pred, y, calibration=(reg, np.zeros(30, int)))

"""The examples this package ships, each run end to end in its fast mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from tests._recompute import entropy, spy_on_predict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def top_label_ece(y, probs, n_bins=15):
    """Expected calibration error, top label, equal-width bins on [0, 1] (Guo et al. 2017), by hand."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)  # bins (k/B, (k+1)/B]
    gap = 0.0
    for k in range(n_bins):
        rows = index == k
        if rows.any():
            gap += rows.sum() * abs(np.mean(predicted[rows] == y[rows]) - confidence[rows].mean())
    return gap / len(y)


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path.name


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 passes, summed to 1e-7
def test_calibration_digits(tmp_path, capsys, monkeypatch):
    calls = spy_on_predict(monkeypatch)
    example = load("calibration_digits")
    out = tmp_path / "cal"
    assert example.main(["--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MC dropout + TS" in printed and "fitted temperatures" in printed
    assert {p.name for p in out.iterdir()} == {"reliability.png", "report.html", "metrics.json"}
    check_png(out / "reliability.png")
    results = json.loads((out / "metrics.json").read_text())
    assert [row["passes"] for row in results["by_passes"]] == [1, 2, 5, 10]
    errors = [row["max_standard_error"] for row in results["by_passes"][1:]]
    assert errors[-1] < errors[0]  # the MC standard error shrinks as passes are added (about 1/sqrt(T))

    # the by-passes table, recomputed from the first t raw passes with scikit-learn and by hand
    _, _, x_val, y_val, x_test, y_test = example.load_split(0)
    (engine, x_seen_val, _), (_, x_seen_test, _) = calls
    np.testing.assert_array_equal(x_seen_test, x_test)
    samples = engine.sample(x_test).astype(np.float64)  # same seed: the example's passes, bit for bit
    for row in results["by_passes"]:
        t = row["passes"]
        probs = samples[:t].mean(axis=0)
        assert row["accuracy"] == accuracy_score(y_test, probs.argmax(axis=1))
        np.testing.assert_allclose(row["nll"], log_loss(y_test, probs, labels=range(10)), rtol=1e-6)
        np.testing.assert_allclose(row["ece"], top_label_ece(y_test, probs), rtol=1e-6, atol=1e-12)
        if t > 1:
            standard_error = np.sqrt(samples[:t].var(axis=0, ddof=1) / t)
            np.testing.assert_allclose(row["max_standard_error"], standard_error.max(), rtol=1e-5)

    # the deterministic temperature minimises the validation NLL of softmax(log p / T) plus the documented
    # log-normal prior (log T)^2 / (2 * 0.5^2 * N) (scipy's own search)
    np.testing.assert_array_equal(x_seen_val, x_val)
    log_p = np.log(np.clip(engine.model.predict(x_val, verbose=0).astype(np.float64), 1e-300, None))

    def nll(temperature):
        fit = -np.mean(log_softmax(log_p / temperature, axis=1)[np.arange(len(y_val)), y_val])
        return fit + np.log(temperature) ** 2 / (2 * 0.5**2 * len(y_val))

    best = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-8}).x
    np.testing.assert_allclose(results["temperature"]["deterministic"], best, rtol=1e-3)
    assert nll(results["temperature"]["deterministic"]) <= nll(1.0)


def test_regression_diabetes(tmp_path, capsys, monkeypatch):
    calls = spy_on_predict(monkeypatch)
    example = load("regression_diabetes")
    out = tmp_path / "reg"
    results = example.run(fast=True, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {"uncertainty.png", "intervals.png", "report.html", "metrics.json"}
    check_png(out / "uncertainty.png")
    check_png(out / "intervals.png")
    assert results["metrics"]  # the evaluation report, as a dict
    sweep = results["bmi_sweep"]
    assert len(sweep["bmi"]) == len(sweep["epistemic_std"]) == len(sweep["aleatoric_std"]) == 121

    # the decomposition, recomputed from the raw passes (mean, log-variance) by the law of total variance:
    # aleatoric = E_t[exp(log-variance_t)], epistemic = Var_t[mean_t]
    _, _, x_test, _, _ = example.load_split(0)
    (engine, x_seen, _), (_, probe, _) = calls
    np.testing.assert_array_equal(x_seen, x_test)

    def stds(x):
        raw = engine.sample(x).astype(np.float64)  # (T, N, 2): the example's passes (same seed)
        return np.sqrt(np.exp(raw[..., 1]).mean(axis=0)), np.sqrt(raw[..., 0].var(axis=0))

    aleatoric, epistemic = stds(x_test)
    np.testing.assert_allclose(results["mean_aleatoric_std"], aleatoric.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["mean_epistemic_std"], epistemic.mean(), rtol=1e-5)
    np.testing.assert_array_equal(probe[:, example.BMI], np.linspace(-6.0, 6.0, 121, dtype=np.float32))
    aleatoric_line, epistemic_line = stds(probe)
    np.testing.assert_allclose(sweep["aleatoric_std"], aleatoric_line, rtol=1e-5)
    np.testing.assert_allclose(sweep["epistemic_std"], epistemic_line, rtol=1e-5, atol=1e-7)
    assert "aleatoric" in capsys.readouterr().out


def test_regression_diabetes_loss_is_the_gaussian_nll():
    keras = pytest.importorskip("keras")
    example = load("regression_diabetes")
    y = np.array([[1.0], [0.0]], np.float32)
    output = np.array([[0.0, 0.0], [2.0, np.log(4.0)]], np.float32)  # (mean, log-variance) per row
    loss = keras.ops.convert_to_numpy(example.gaussian_nll_loss(y, output))
    expected = [0.5 * (0.0 + 1.0), 0.5 * (np.log(4.0) + 4.0 / 4.0)]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_ood_detection(tmp_path, capsys, monkeypatch):
    calls = spy_on_predict(monkeypatch)
    example = load("ood_detection")
    out = tmp_path / "ood"
    results = example.run(fast=True, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {"ood.png", "metrics.json"}
    check_png(out / "ood.png")
    assert set(results["auroc"]) == set(example.SCORES)
    for score, row in results["auroc"].items():
        assert set(row) == {"unseen digits", "inverted", "noise"}, score

    # every AUROC recomputed with scikit-learn from scores computed here with numpy
    _, _, x_test, y_test, ood = example.load_sets(0)
    sets = {"in-distribution": x_test, **ood}
    assert [x.shape for _, x, _ in calls] == [x.shape for x in sets.values()]
    engine = calls[0][0]
    scores = {}
    for name, x in sets.items():
        samples = engine.sample(x).astype(np.float64)  # (T, N, 6): the example's passes (same seed)
        deterministic = engine.model.predict(x, verbose=0).astype(np.float64)
        mean = samples.mean(axis=0)
        votes = np.stack([np.bincount(row, minlength=6) for row in samples.argmax(axis=2).T])
        scores[name] = {
            "deterministic 1 - max prob": 1.0 - deterministic.max(axis=1),
            "deterministic entropy": entropy(deterministic),
            "MC entropy": entropy(mean),
            "MC mutual information": entropy(mean) - entropy(samples).mean(axis=0),
            "MC variation ratio": 1.0 - votes.max(axis=1) / samples.shape[0],
        }
        if name == "in-distribution":
            assert results["in_distribution_accuracy"] == accuracy_score(y_test, mean.argmax(axis=1))
    for score, row in results["auroc"].items():
        for shift, value in row.items():
            inside, outside = scores["in-distribution"][score], scores[shift][score]
            expected = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside])
            # a near-tie resolved differently by float rounding moves one pair: 1 / (n_in * n_out) < 1e-5
            np.testing.assert_allclose(value, expected, atol=1e-4, err_msg=f"{score}, {shift}")
    assert results["in_distribution_accuracy"] > 0.5  # six classes: chance is about 0.17
    assert "MC mutual information" in capsys.readouterr().out

"""The examples this package ships, each run end to end in its fast mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path.name


def test_calibration_digits(tmp_path, capsys):
    example = load("calibration_digits")
    out = tmp_path / "cal"
    assert example.main(["--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MC dropout + TS" in printed and "fitted temperatures" in printed
    assert {p.name for p in out.iterdir()} == {"reliability.png", "report.html", "metrics.json"}
    check_png(out / "reliability.png")
    results = json.loads((out / "metrics.json").read_text())
    assert [row["passes"] for row in results["by_passes"]] == [1, 2, 5, 10]
    assert all(t > 0 for t in results["temperature"].values())
    errors = [row["max_standard_error"] for row in results["by_passes"][1:]]
    assert errors[-1] < errors[0]  # the MC standard error shrinks as passes are added (about 1/sqrt(T))


def test_regression_diabetes(tmp_path, capsys):
    example = load("regression_diabetes")
    out = tmp_path / "reg"
    results = example.run(fast=True, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {"uncertainty.png", "intervals.png", "report.html", "metrics.json"}
    check_png(out / "uncertainty.png")
    check_png(out / "intervals.png")
    assert results["mean_aleatoric_std"] > 0 and results["mean_epistemic_std"] > 0
    assert results["metrics"]  # the evaluation report, as a dict
    sweep = results["bmi_sweep"]
    assert len(sweep["bmi"]) == len(sweep["epistemic_std"]) == len(sweep["aleatoric_std"]) == 121
    assert "aleatoric" in capsys.readouterr().out


def test_regression_diabetes_loss_is_the_gaussian_nll():
    keras = pytest.importorskip("keras")
    example = load("regression_diabetes")
    y = np.array([[1.0], [0.0]], np.float32)
    output = np.array([[0.0, 0.0], [2.0, np.log(4.0)]], np.float32)  # (mean, log-variance) per row
    loss = keras.ops.convert_to_numpy(example.gaussian_nll_loss(y, output))
    expected = [0.5 * (0.0 + 1.0), 0.5 * (np.log(4.0) + 4.0 / 4.0)]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_ood_detection(tmp_path, capsys):
    example = load("ood_detection")
    out = tmp_path / "ood"
    results = example.run(fast=True, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {"ood.png", "metrics.json"}
    check_png(out / "ood.png")
    assert set(results["auroc"]) == set(example.SCORES)
    for score, row in results["auroc"].items():
        assert set(row) == {"unseen digits", "inverted", "noise"}
        assert all(0.0 <= v <= 1.0 for v in row.values()), score
    assert results["in_distribution_accuracy"] > 0.5  # six classes: chance is about 0.17
    assert "MC mutual information" in capsys.readouterr().out

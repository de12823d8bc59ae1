"""`mcdrop evaluate --ood PREDS --calibration PREDS LABELS`: the report's out-of-distribution and conformal
sections from the command line, and their errors in the command line's words. No model is needed:
predictions are probability arrays and saved prediction archives."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import mcdrop
from mcdrop import cli
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_sections")
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.full(3, 0.4), size=(4, 120))
    np.save(folder / "samples.npy", samples[:, :80])
    np.save(folder / "samples_cal.npy", samples[:, 80:])
    mean = samples.mean(axis=0)
    y = np.array([rng.choice(3, p=p) for p in mean])
    np.save(folder / "y.npy", y[:80])
    np.save(folder / "y_cal.npy", y[80:])
    np.save(folder / "y_cal_bad.npy", np.r_[y[80:-1], 5])
    np.save(folder / "y_cal_short.npy", y[80:90])
    np.save(folder / "samples_ood.npy", rng.dirichlet(np.full(3, 3.0), size=(4, 50)))
    np.save(folder / "probs4.npy", rng.dirichlet(np.ones(4), size=40))
    reg = RegressionPrediction.from_samples(rng.normal(size=(5, 30)))
    np.savez(folder / "reg.npz", task="regression", num_samples=5, **{
        k: v for k, v in reg.to_dict().items() if k in ("mean", "epistemic_variance", "aleatoric_variance")})
    return folder


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_ood_and_calibration_sections(files, tmp_path, capsys):
    out = tmp_path / "report"
    status, stdout, err = run(capsys, "evaluate", files / "samples.npy", files / "y.npy", "--ood",
                              files / "samples_ood.npy", "--calibration", files / "samples_cal.npy",
                              files / "y_cal.npy", "--out", out, "--json")
    assert status == 0, err
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(stdout)
    # the same numbers as the library on the same arrays
    pred = ClassificationPrediction.from_samples(np.load(files / "samples.npy"), keep_samples=False)
    expected = mcdrop.evaluate(pred, np.load(files / "y.npy"),
                               ood=ClassificationPrediction.from_samples(np.load(files / "samples_ood.npy")),
                               calibration=(ClassificationPrediction.from_samples(np.load(files / "samples_cal.npy")),
                                            np.load(files / "y_cal.npy")))
    assert saved["ood"]["model"]["mutual_information"]["auroc"] == pytest.approx(
        expected.ood["model"]["mutual_information"]["auroc"])
    assert saved["conformal"]["model"]["aps"]["0.1"] == pytest.approx(expected.conformal["model"]["aps"]["0.1"])
    page = (out / "report.html").read_text()
    assert "out-of-distribution detection" in page.lower() and "conformal prediction" in page.lower()


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--ood", "{f}/missing.npy"], r"argument `--ood`: expected an existing file"),
        (["--ood", "{f}/reg.npz"], r"argument `--ood`: expected classification predictions like PREDS, received "
                                   r"regression predictions"),
        (["--calibration", "{f}/samples_cal.npy"], r"argument --calibration: expected 2 arguments"),
        (["--calibration", "{f}/samples_cal.npy", "{f}/y_cal_short.npy"],
         r"argument `--calibration LABELS`: expected 40 labels \(one per row of --calibration PREDS\), received 10"),
        (["--calibration", "{f}/samples_cal.npy", "{f}/y_cal_bad.npy"],
         r"argument `--calibration LABELS`: expected labels >= 0 and < 3"),
        (["--calibration", "{f}/probs4.npy", "{f}/y_cal.npy"],
         r"argument `--calibration PREDS`: expected classification predictions of the shape of PREDS' rows \(3,\), "
         r"received classification predictions of \(4,\)"),
        (["--calibration", "{f}/y.npy", "{f}/y_cal.npy"], r"argument `--calibration PREDS`: expected probabilities"),
    ],
)
def test_errors_name_the_flags(files, tmp_path, capsys, argv, pattern):
    out = tmp_path / "never"
    argv = ["evaluate", files / "samples.npy", files / "y.npy", "--out", out,
            *[a.replace("{f}", str(files)) for a in argv]]
    before = sorted(os.listdir(files))
    status, stdout, err = run(capsys, *argv)
    assert status == cli.EXIT_ERROR and stdout == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() and sorted(os.listdir(files)) == before  # no partial output

"""The `mcdrop` command line: predict, evaluate and select end to end, and every error path.

Commands run in-process through ``mcdrop.cli.main`` (it returns the exit status); one test
runs the installed console script in a subprocess to check that a failure prints exactly one
line on stderr, with no traceback and no TensorFlow start-up noise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mcdrop import cli

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small dropout models (classifier and regressor), data and labels on disk."""
    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    clf = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    reg = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    with_code = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t + 1.0),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    clf.save(folder / "clf.keras")
    clf.export(str(folder / "saved"), verbose=False)
    cnn = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Conv2D(2, 2), keras.layers.Flatten(),
                            keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    cnn.save(folder / "cnn.keras")
    clf.save(folder / "clf.h5")
    reg.save(folder / "reg.keras")
    gauss = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2)])  # mean, log-variance
    gauss.save(folder / "gauss.keras")
    np.save(folder / "targets.npy", np.random.default_rng(5).normal(size=24))
    with_code.save(folder / "code.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.savez(folder / "pool.npz", x=x, y=np.zeros(24))
    np.savetxt(folder / "x.csv", x, delimiter=",", header="a,b,c,d", comments="")
    np.save(folder / "x5.npy", np.zeros((24, 5), np.float32))
    np.save(folder / "y.npy", rng.integers(0, 3, size=24))
    np.save(folder / "y_short.npy", rng.integers(0, 3, size=7))
    np.save(folder / "probs.npy", rng.dirichlet(np.ones(3), size=24))
    (folder / "empty").mkdir()
    return folder


def run(capsys, *argv):
    """Run the command line; return (status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, out, err, pattern):
    import re

    assert status == cli.EXIT_ERROR
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


# --------------------------------------------------------------------------- predict


def test_predict_writes_every_statistic_and_provenance(files, tmp_path, capsys):
    out = tmp_path / "preds.npz"
    status, stdout, err = run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 12, "--seed", 3,
                              "--samples", "--out", out)
    assert status == 0, err
    assert "classification prediction: 24 rows, T=12" in stdout
    with np.load(out, allow_pickle=False) as saved:
        for key in ("mean", "variance", "entropy", "expected_entropy", "mutual_information", "variation_ratio",
                    "predicted_class", "confidence", "standard_error", "votes"):
            assert saved[key].shape[0] == 24, key
        assert saved["samples"].shape == (12, 24, 3)
        assert saved["task"].item() == "classification"
        assert saved["num_samples"].item() == 12
        assert saved["seed"].item() == 3
        np.testing.assert_allclose(saved["mean"], saved["samples"].mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(saved["mean"].sum(axis=1), 1.0, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.npz"]


def test_predict_is_reproducible_with_a_seed_and_reads_csv_and_h5(files, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 8, "--seed", 1, "--out", a)[0] == 0
    assert run(capsys, "predict", files / "clf.h5", files / "x.csv", "-T", 8, "--seed", 1, "--out", b)[0] == 0
    with np.load(a) as first, np.load(b) as second:
        np.testing.assert_allclose(first["mean"], second["mean"], rtol=1e-5, atol=1e-6)
        assert "samples" not in first


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_predict_json_without_out_prints_per_row_statistics(files, capsys):
    status, stdout, _ = run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 5, "--json")
    assert status == 0
    payload = strict_json(stdout)
    assert payload["summary"]["rows"] == 24 and payload["summary"]["num_samples"] == 5
    assert len(payload["rows"]["entropy"]) == 24
    assert all(0 <= c < 3 for c in payload["rows"]["predicted_class"])


def test_predict_reshapes_csv_rows_to_the_model_input(files, tmp_path, capsys):
    images = np.random.default_rng(1).random((5, 2, 2, 1)).astype(np.float32)
    np.savetxt(tmp_path / "images.csv", images.reshape(5, 4), delimiter=",")
    np.save(tmp_path / "images.npy", images)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run(capsys, "predict", files / "cnn.keras", tmp_path / "images.csv", "-T", 4, "--seed", 0, "--out", a)[0] == 0
    assert run(capsys, "predict", files / "cnn.keras", tmp_path / "images.npy", "-T", 4, "--seed", 0, "--out", b)[0] == 0
    with np.load(a) as from_csv, np.load(b) as from_npy:
        np.testing.assert_allclose(from_csv["mean"], from_npy["mean"], rtol=1e-5, atol=1e-6)


def test_json_is_standard_even_where_a_statistic_is_undefined(files, capsys):
    # one pass: the Monte Carlo standard error is undefined (NaN), which JSON spells null
    status, stdout, _ = run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 1, "--json")
    assert status == 0
    assert strict_json(stdout)["summary"]["max_standard_error"] is None


def test_predict_regression(files, tmp_path, capsys):
    out = tmp_path / "r.npz"
    status, stdout, _ = run(capsys, "predict", files / "reg.keras", files / "x.npy", "-T", 6, "--seed", 0,
                            "--out", out, "--quiet")
    assert status == 0 and stdout == ""
    with np.load(out) as saved:
        assert saved["task"].item() == "regression"
        assert saved["mean"].shape == (24, 1)
        np.testing.assert_allclose(saved["variance"], saved["epistemic_variance"] + saved["aleatoric_variance"])
        assert saved["samples"].shape == (6, 24, 1)  # regression keeps its passes: the predictive mixture


def test_heteroscedastic_regression_predict_then_evaluate(files, tmp_path, capsys):
    preds = tmp_path / "g.npz"
    status, _, err = run(capsys, "predict", files / "gauss.keras", files / "x.npy", "-T", 8, "--seed", 0,
                         "--task", "regression", "--heteroscedastic", "log_variance", "--out", preds, "-q")
    assert status == 0, err
    with np.load(preds) as saved:
        assert saved["heteroscedastic"].item() is True
        assert saved["mean"].shape == (24, 1) and saved["sample_variances"].shape == (8, 24, 1)
        assert np.all(saved["aleatoric_variance"] > 0)
    status, stdout, err = run(capsys, "evaluate", preds, files / "targets.npy", "--json")
    assert status == 0, err
    metrics = json.loads(stdout)
    text = json.dumps(metrics)
    assert "rmse" in text and "mixture_nll" in text and "crps" in text


# --------------------------------------------------------------------------- select


def test_select_writes_distinct_indices(files, tmp_path, capsys):
    out = tmp_path / "picked.csv"
    status, stdout, err = run(capsys, "select", files / "clf.keras", files / "pool.npz", "-k", 4,
                              "--method", "batchbald", "-T", 10, "--seed", 0, "--out", out)
    assert status == 0, err
    lines = out.read_text().strip().split("\n")
    assert lines[0] == "rank,index"
    indices = [int(line.split(",")[1]) for line in lines[1:]]
    assert len(indices) == len(set(indices)) == 4
    assert all(0 <= i < 24 for i in indices)
    assert "batch_bald: 4 of 24 pool inputs" in stdout


def test_select_regression_by_epistemic_variance(files, capsys):
    status, stdout, err = run(capsys, "select", files / "gauss.keras", files / "x.npy", "-k", 3, "-T", 6,
                              "--seed", 0, "--task", "regression", "--heteroscedastic", "log_variance",
                              "--method", "epistemic_variance", "--json")
    assert status == 0, err
    import mcdrop
    from mcdrop import acquisition

    model = keras.saving.load_model(files / "gauss.keras")
    pred = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0, task="regression",
                            heteroscedastic="log_variance").predict(np.load(files / "x.npy"))
    expected = acquisition.select(pred, 3, method="epistemic_variance").tolist()
    assert strict_json(stdout)["indices"] == expected


def test_select_bald_matches_the_library(files, capsys):
    import mcdrop
    from mcdrop import acquisition

    status, stdout, _ = run(capsys, "select", files / "clf.keras", files / "x.npy", "-k", 3, "-T", 10,
                            "--seed", 2, "--json")
    assert status == 0
    model = keras.saving.load_model(files / "clf.keras")
    pred = mcdrop.MCDropout(model, num_samples=10, seed=2, verbose=0).predict(np.load(files / "x.npy"))
    assert json.loads(stdout)["indices"] == acquisition.select(pred, 3, method="bald").tolist()


# --------------------------------------------------------------------------- evaluate


def test_evaluate_writes_report_and_metrics(files, tmp_path, capsys):
    pytest.importorskip("mcdrop.report")
    preds = tmp_path / "p.npz"
    assert run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 8, "--seed", 0, "--out", preds)[0] == 0
    out = tmp_path / "report"
    status, stdout, err = run(capsys, "evaluate", preds, files / "y.npy", "--out", out)
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html"]
    assert json.loads((out / "metrics.json").read_text())
    assert "<html" in (out / "report.html").read_text().lower()
    html = (out / "report.html").read_text()  # provenance: the model `predict` recorded, T and the seed
    assert f"<th>model file</th><td>{files / 'clf.keras'}</td>" in html
    assert "<th>passes T</th><td>8</td>" in html and "<th>seed</th><td>0</td>" in html
    status, stdout, _ = run(capsys, "evaluate", files / "probs.npy", files / "y.npy", "--json")
    assert status == 0 and strict_json(stdout)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["demo", "predict", "evaluate", "select"])
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"mcdrop {command}" in text and "example:" in text and "--quiet" in text and "--json" in text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["predict", "{f}/missing.keras", "{f}/x.npy"],
         r"^mcdrop predict: error: Invalid value for argument `MODEL`: expected an existing file.*missing\.keras"),
        (["predict", "{f}/clf.keras", "{f}/missing.npy"],
         r"argument `DATA`: expected an existing file or folder.*missing\.npy"),
        (["predict", "{f}/y.npy", "{f}/x.npy"], r"argument `MODEL`: .*Unknown model format '\.npy'"),
        (["predict", "{f}/empty", "{f}/x.npy"], r"argument `MODEL`: .*neither saved_model\.pb nor"),
        (["predict", "{f}/code.keras", "{f}/x.npy"], r"argument `MODEL`: expected a model that loads in safe mode"),
        (["predict", "{f}/saved", "{f}/x.npy"],
         r"argument `MODEL`: expected a model that loads in safe mode.*TensorFlow SavedModel.*--unsafe"),
        (["predict", "{f}/saved", "{f}/x.npy", "--unsafe"],
         r"argument `model`: expected a model with at least one stochastic layer.*SavedModel folder.*save the model "
         r"as \.keras"),
        (["predict", "{f}/clf.keras", "{f}/clf.keras"], r"argument `DATA`: .*Unknown array format '\.keras'"),
        (["predict", "{f}/clf.keras", "{f}/x5.npy"],
         r"argument `x`: expected an array of shape \(None, 4\), received an array of shape \(24, 5\)"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "-T", "0"], r"-T expects an integer >= 1, received 0"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "-T", "many"], r"-T expects an integer >= 1, received 'many'"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "--batch-size", "-3"], r"--batch-size expects an integer >= 1"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "--task", "ranking"], r"argument --task: invalid choice: 'ranking'"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "--out", "{f}/preds.txt"],
         r"argument `--out`: expected a \.npz file, received"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "--out", "{f}/nowhere/p.npz"],
         r"argument `--out`: expected a path in an existing folder"),
        (["predict", "{f}/clf.keras"], r"^mcdrop predict: error: the following arguments are required: DATA"),
        (["predict", "{f}/clf.keras", "{f}/x.npy", "--ray"], r"argument --ray: expected one argument"),
        (["select", "{f}/clf.keras", "{f}/x.npy"], r"the following arguments are required: -k"),
        (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "25"],
         r"argument `-k`: expected an integer <= 24 \(the pool size\), received 25"),
        (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--method", "oracle"],
         r"argument `--method`: expected one of 'bald', .*received 'oracle'"),
        (["select", "{f}/clf.keras", "{f}/pool.npz", "-k", "2", "--key", "z"],
         r"argument `key`: expected one of the arrays in pool\.npz \(x, y\)"),
        (["evaluate", "{f}/x.npy", "{f}/missing.npy"], r"argument `LABELS`: expected an existing file"),
        (["evaluate", "{f}/x.npy", "{f}/y.npy"], r"argument `PREDS`: expected probabilities in \[0, 1\]"),
        (["evaluate", "{f}/probs.npy", "{f}/y_short.npy"],
         r"argument `LABELS`: expected 24 labels \(one per row of PREDS\), received 7"),
        (["evaluate", "{f}/probs.npy", "{f}/y.npy", "--out", "{f}/x.npy"],
         r"argument `--out`: expected a folder, received .*which is a file"),
        (["demo", "--out", "{f}/x.npy"], r"argument `--out`: expected a folder, received .*which is a file"),
        (["demo", "--seed", "x"], r"--seed expects an integer, received 'x'"),
        (["transmogrify"], r"^mcdrop: error: argument COMMAND: invalid choice: 'transmogrify'"),
    ],
)
def test_errors_print_one_line_and_exit_2(files, capsys, argv, pattern):
    argv = [a.replace("{f}", str(files)) for a in argv]
    before = sorted(os.listdir(files))
    status, out, err = run(capsys, *argv)
    assert_one_line_error(status, out, err, pattern)
    assert sorted(os.listdir(files)) == before  # no output, partial or temporary, left behind


def test_a_failure_after_loading_leaves_no_output_file(files, tmp_path, capsys):
    out = tmp_path / "preds.npz"
    status, stdout, err = run(capsys, "predict", files / "clf.keras", files / "x5.npy", "--out", out)
    assert_one_line_error(status, stdout, err, r"argument `x`")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_keeps_the_previous_output(files, tmp_path, capsys):
    out = tmp_path / "preds.npz"
    out.write_bytes(b"previous")
    status, stdout, err = run(capsys, "predict", files / "clf.keras", files / "x5.npy", "--out", out)
    assert status == cli.EXIT_ERROR
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["preds.npz"]


def test_unsafe_loads_a_model_with_python_code(files, capsys):
    status, _, err = run(capsys, "predict", files / "code.keras", files / "x.npy", "-T", 3, "--unsafe", "-q")
    assert status == 0, err


def test_console_script_error_is_one_clean_line(files, tmp_path):
    script = shutil.which("mcdrop", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "mcdrop.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MCDROP_TRACEBACK")}
    result = subprocess.run([*command, "predict", str(files / "clf.keras"), str(files / "x5.npy"),
                             "--out", str(tmp_path / "p.npz")],
                            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mcdrop predict: error: Invalid value for argument `x`")
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_exception_is_one_line_unless_tracebacks_are_asked_for(monkeypatch, tmp_path, capsys):
    from mcdrop import demo

    def explode(*args, **kwargs):
        raise RuntimeError("boom\n  with a second line")

    monkeypatch.setattr(demo, "run", explode)
    status, out, err = run(capsys, "demo", "--out", tmp_path / "d")
    assert_one_line_error(status, out, err, r"^mcdrop demo: error: RuntimeError: boom with a second line$")
    monkeypatch.setenv("MCDROP_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["demo", "--out", str(tmp_path / "d")])
    assert list(tmp_path.iterdir()) == []


def test_interrupt_exits_2(monkeypatch, tmp_path, capsys):
    from mcdrop import demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    status, out, err = run(capsys, "demo", "--out", tmp_path / "d")
    assert_one_line_error(status, out, err, r"^mcdrop demo: error: interrupted$")

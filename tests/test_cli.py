"""The `mcdrop` command line: predict, evaluate and select end to end, and every error path.

Commands run in-process through ``mcdrop.cli.main`` (it returns the exit status); one test
runs the installed console script in a subprocess to check that a failure prints exactly one
line on stderr, with no traceback and no TensorFlow start-up noise.
"""

from __future__ import annotations

import json
import os
import re
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
         r"argument `MODEL`: expected a model with at least one stochastic layer.*received '.*saved'\. Every "
         r"pass would be identical\. MODEL is a SavedModel folder.*save the model as \.keras"),
        (["predict", "{f}/clf.keras", "{f}/clf.keras"], r"argument `DATA`: .*Unknown array format '\.keras'"),
        (["predict", "{f}/clf.keras", "{f}/x5.npy"],
         r"argument `DATA`: expected an array of shape \(None, 4\), received an array of shape \(24, 5\)"),
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
         r"argument `--key`: expected one of the arrays in pool\.npz \(x, y\)"),
        (["evaluate", "{f}/x.npy", "{f}/missing.npy"], r"argument `LABELS`: expected an existing file"),
        (["evaluate", "{f}/x.npy", "{f}/y.npy"], r"argument `PREDS`: expected probabilities in \[0, 1\]"),
        (["evaluate", "{f}/probs.npy", "{f}/y_short.npy"],
         r"argument `LABELS`: expected 24 labels \(one per row of PREDS\), received 7"),
        (["evaluate", "{f}/probs.npy", "{f}/y.npy", "--out", "{f}/x.npy"],
         r"argument `--out`: expected a folder, received .*A file of that name exists"),
        (["demo", "--out", "{f}/x.npy"], r"argument `--out`: expected a folder, received .*A file of that name exists"),
        (["demo", "--seed", "x"], r"--seed expects an integer, received 'x'"),
        (["demo", "--seed", str(2**32)], r"--seed expects an integer in \[0, 4294967295\], received 4294967296"),
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
    assert_one_line_error(status, stdout, err, r"argument `DATA`")
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
    assert result.stderr.startswith("mcdrop predict: error: Invalid value for argument `DATA`")
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


# --------------------------------------------------------------------------- every check before the model runs (9.13)


def _benchmark():
    """benchmarks/cli_startup.py, whose terminal runner and unwritable-folder finder the tests share."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "cli_startup.py"
    spec = importlib.util.spec_from_file_location("cli_startup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unwritable_folder(tmp_path):
    folder = _benchmark().unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no unwritable folder on this machine")
    return folder


#: Bad options (and the pattern of their one-line error) that must be refused before TensorFlow is imported.
EARLY_ERRORS = [
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--stochastic", "power", "--beta", "-1"],
     r"argument `--beta`: expected a finite number >= 0, received -1\.0"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--stochastic", "power", "--beta", "nan"],
     r"argument `--beta`: expected a finite number >= 0, received nan"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--beta", "2"],
     r"argument `--beta`: expected --beta only with --stochastic"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--method", "batchbald", "--stochastic", "power"],
     r"argument `--stochastic`: expected no --stochastic with --method batchbald"),
    (["predict", "{f}/clf.keras", "{f}/x.npy", "--seed", str(2**70)],
     r"--seed expects an integer in \[0, 4611686018427387903\], received 1180591620717411303424"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--seed", "-1"], r"--seed expects an integer in \[0, "),
    (["predict", "{f}/clf.keras", "{f}/x.npy", "--out", "{locked}/p.npz"],
     r"argument `--out`: expected a path in a folder this user can write, received '.*p\.npz'\. "),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--out", "{locked}/i.csv"],
     r"argument `--out`: expected a path in a folder this user can write"),
    (["evaluate", "{f}/probs.npy", "{f}/y.npy", "--out", "{locked}/report"],
     r"argument `--out`: expected a path in a folder this user can write"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--method", "epistemic_variance", "--task",
      "classification"], r"argument `--method`: expected bald, .*least_confidence, random or batch_bald for a "
                         r"classification model \(--task classification\), received 'epistemic_variance'"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "2", "--method", "bald", "--task", "regression"],
     r"argument `--method`: expected predictive_variance, epistemic_variance or random for a regression"),
    (["predict", "{f}/clf.keras", "{f}/x.npy", "--task", "regression", "--outputs", "logits"],
     r"argument `--outputs`: expected no --outputs with --task regression"),
    (["predict", "{f}/reg.keras", "{f}/x.npy", "--task", "classification", "--heteroscedastic", "log_variance"],
     r"argument `--heteroscedastic`: expected no --heteroscedastic with --task classification"),
    (["predict", "{f}/clf.keras", "{f}/x.npy", "--key", "x"], r"argument `--key`: expected no --key for DATA"),
    (["predict", "{f}/clf.keras", "{f}/missing.npy"], r"argument `DATA`: expected an existing file"),
    (["predict", "{f}/missing.keras", "{f}/x.npy"], r"argument `MODEL`: expected an existing file"),
    (["predict", "{f}/y.npy", "{f}/x.npy"], r"argument `MODEL`: .*Unknown model format"),
    (["predict", "{f}/clf.keras", "{f}/typo.csv"], r"argument `DATA`: .*Row 1, column 2 holds 'x', which is "
                                                   r"not a number .*pass --header\.$"),
    (["select", "{f}/clf.keras", "{f}/x.npy", "-k", "25"], r"argument `-k`: expected an integer <= 24"),
    (["evaluate", "{f}/missing.npy", "{f}/y.npy"], r"argument `PREDS`: expected an existing file"),
    (["evaluate", "{f}/scores.npy", "{f}/y.npy"],
     r"argument `PREDS`: expected rows that sum to one.*apply a softmax to scores or logits first"),
]


def test_option_errors_come_before_tensorflow_is_imported(files, tmp_path):
    """One subprocess runs every case in turn; TensorFlow (or Keras) must still be absent at the end."""
    (files / "typo.csv").write_text("1,x,3,4\n5,6,7,8\n")
    np.save(files / "scores.npy", np.random.default_rng(1).uniform(0.1, 1, size=(24, 3)))
    locked = _unwritable_folder(tmp_path)
    cases = [[a.replace("{f}", str(files)).replace("{locked}", locked) for a in argv] for argv, _ in EARLY_ERRORS]
    code = (
        "import contextlib, io, json, sys\n"
        "from mcdrop import cli\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        status = cli.main(argv)\n"
        "    out.append([status, err.getvalue()])\n"
        "print(json.dumps({'results': out, 'tf': [m for m in ('tensorflow', 'keras') if m in sys.modules]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for (argv, pattern), (status, err) in zip(EARLY_ERRORS, report["results"]):
        assert status == cli.EXIT_ERROR, (argv, err)
        assert err.count("\n") == 1, err
        assert re.search(pattern, err.strip()), (argv, err)
    assert report["tf"] == []  # every error above was found before TensorFlow was imported


def test_a_classification_method_for_a_regression_model_fails_before_the_pool_is_scored(files, capsys,
                                                                                        monkeypatch):
    import mcdrop

    rows = []
    original = mcdrop.MCDropout.predict

    def counting(self, x, *args, **kwargs):
        rows.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(mcdrop.MCDropout, "predict", counting)
    status, out, err = run(capsys, "select", files / "reg.keras", files / "x.npy", "-k", "2", "--method", "bald")
    assert_one_line_error(status, out, err, r"argument `--method`: expected predictive_variance, "
                                            r"epistemic_variance or random for a regression model \(the model\), "
                                            r"received 'bald'")
    assert rows == [1]  # one row read the model's task; the 24-row pool was never scored
    rows.clear()
    status, out, err = run(capsys, "select", files / "clf.keras", files / "x.npy", "-k", "2", "--method",
                           "predictive_variance")
    assert_one_line_error(status, out, err, r"expected bald, .* or batch_bald for a classification model "
                                            r"\(the model\)")
    assert rows == [1]


# --------------------------------------------------------------------------- the command line's words (9.14)


@pytest.mark.parametrize(("message", "command", "expected"), [
    ("Invalid value for argument `x`: expected finite values, received an array of shape (3, 4) and dtype "
     "float32.", "predict", "Invalid value for argument `DATA`: expected finite values"),
    ("Invalid value for argument `x`: expected 4 features.", "select", "Invalid value for argument `POOL`: "),
    ("Invalid value for argument `y_true`: expected labels >= 0 and < 3, received ...", "evaluate",
     "Invalid value for argument `LABELS`: expected labels >= 0"),
    ("Invalid value for argument `samples`: expected rank 3.", "evaluate", "argument `PREDS`: expected rank 3."),
    ("Invalid value for argument `key`: expected one of the arrays.", "predict", "argument `--key`: expected"),
    ("Invalid value for argument `model`: expected a model with at least one stochastic layer, received "
     "<Sequential name=sequential, built=True> (of type Sequential). Every pass would be identical. Pass "
     "allow_deterministic=True to accept this.", "predict",
     "Invalid value for argument `MODEL`: expected a model with at least one stochastic layer, received "
     "'m.keras'. Every pass would be identical."),
    ("Invalid value for argument `stochastic`: expected None with method='batch_bald', received 'power'.",
     "select", "argument `--stochastic`: expected no --stochastic with --method batch_bald, received 'power'."),
    ("It holds Python code; pass unsafe=True (--unsafe on the command line) only if you trust the file.",
     "predict", "It holds Python code; pass --unsafe only if you trust the file."),
    ("Invalid value for argument `seed`: expected an integer >= 0, received -1. Or pass seed=None.",
     "predict", "Invalid value for argument `--seed`: expected an integer >= 0, received -1. Or pass no --seed."),
    ("Invalid value for argument `initial`: expected distinct indices, received array([3, 3, 1, 2, 7, 9]).",
     "select", "argument `initial`: expected distinct indices, received an array of shape (6,) ([3, 3, 1, …])."),
    ("Invalid value for argument `y_true`: expected labels, received " + str(list(range(40))) + ".",
     "evaluate", "argument `LABELS`: expected labels, received an array of shape (40,) ([0, 1, 2, …])."),
])
def test_library_messages_are_put_in_the_command_lines_words(message, command, expected):
    import argparse

    args = argparse.Namespace(command=command, model="m.keras")
    text = cli._in_cli_words(message, args)
    assert text.startswith(expected) if expected.startswith("Invalid") else expected in text, text
    assert "=" not in text.replace("<=", "").replace(">=", "")  # no API advice is left


def test_header_flags_read_a_numeric_header_or_refuse_a_word_row(files, tmp_path, capsys):
    x = np.load(files / "x.npy")
    np.savetxt(tmp_path / "numbered.csv", x, delimiter=",", header="1,2,3,4", comments="")
    status, out, _ = run(capsys, "predict", files / "clf.keras", tmp_path / "numbered.csv", "-T", 2, "--json",
                         "--seed", 0, "--header")
    assert status == 0 and json.loads(out)["summary"]["rows"] == 24
    status, out, _ = run(capsys, "predict", files / "clf.keras", tmp_path / "numbered.csv", "-T", 2, "--json",
                         "--seed", 0)
    assert status == 0 and json.loads(out)["summary"]["rows"] == 25  # numbers are data unless declared
    status, out, err = run(capsys, "predict", files / "clf.keras", files / "x.csv", "--no-header")
    assert_one_line_error(status, out, err, r"argument `DATA`: .*Row 1, column 1 holds 'a', which is not a number")


def test_a_full_disk_names_the_output_path(files, tmp_path, capsys, monkeypatch):
    import errno

    from mcdrop import io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    out = tmp_path / "preds.npz"
    status, stdout, err = run(capsys, "predict", files / "clf.keras", files / "x.npy", "-T", 2, "--out", out)
    assert_one_line_error(status, stdout, err, rf"^mcdrop predict: error: No space left on device: {re.escape(str(out))}$")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- feedback (issue 15)


def test_a_terminal_sees_a_status_line_at_once_and_it_is_cleared(files, tmp_path):
    """On a pseudo-terminal the first bytes on stderr are the status line, long before TensorFlow is loaded."""
    _, _, status, seen = _benchmark().on_terminal([sys.executable, "-m", "mcdrop.cli", "predict", str(files / "clf.keras"),
                                           str(files / "x.npy"), "-T", "2", "--seed", "0",
                                           "--out", str(tmp_path / "p.npz")])
    assert status == 0, seen
    text = seen.decode(errors="replace")
    first = text.index("mcdrop predict: reading DATA")
    assert first < text.index("mcdrop predict: loading TensorFlow") < text.index("mcdrop predict: loading MODEL")
    assert "writing" in text and text.rstrip(" ").endswith("\x1b[K")  # the last status line is erased

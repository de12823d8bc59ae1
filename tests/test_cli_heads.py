"""Issue 9 item 4 on the command line: `--task`, `--outputs` and `--heteroscedastic` that contradict the
model's output activation end in one line on stderr, exit 2, and no output file."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mcdrop import cli

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_heads")
    keras.utils.set_random_seed(0)

    def model(units, activation):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(units, activation=activation)])

    model(3, "softmax").save(folder / "softmax.keras")
    model(1, None).save(folder / "linear.keras")
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    return folder


@pytest.mark.parametrize("model, flags, pattern", [
    ("softmax", ["--heteroscedastic", "log_variance"],
     r"`--heteroscedastic`: expected no --heteroscedastic for an output with a softmax activation"),
    ("softmax", ["--outputs", "logits"], r"`--outputs`: expected 'probs' \(or None\) for an output with a softmax"),
    ("linear", ["--task", "classification"], r"`--task`: expected 'regression' for an output with a linear activation, or --outputs logits"),
])
@pytest.mark.parametrize("command", ["predict"])
def test_contradicting_head_flags_are_one_line_and_exit_2(files, capsys, tmp_path, model, flags, pattern, command):
    out = tmp_path / ("preds.npz" if command == "predict" else "picked.csv")
    argv = [command, files / f"{model}.keras", files / "x.npy", "-T", "3", "--seed", "0", *flags, "--out", out]
    if command == "select":
        argv += ["-k", "2", "--method", "bald" if model != "linear" else "variance"]
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == cli.EXIT_ERROR
    lines = captured.err.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"mcdrop {command}: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_select_checks_the_declaration_too(files, capsys, tmp_path):
    test_contradicting_head_flags_are_one_line_and_exit_2(
        files, capsys, tmp_path, "softmax", ["--outputs", "logits"], r"`--outputs`: expected 'probs'", "select")


def test_the_same_flags_agreeing_with_the_model_run(files, capsys, tmp_path):
    out = tmp_path / "preds.npz"
    status = cli.main([str(a) for a in ["predict", files / "linear.keras", files / "x.npy", "-T", "3", "--seed", "0",
                                        "--task", "classification", "--outputs", "logits", "--out", out, "-q"]])
    capsys.readouterr()
    assert status == 0
    with np.load(out) as saved:
        assert str(saved["outputs"]) == "logits" and saved["mean"].shape == (5, 2)

"""The active-learning example runs end to end in its fast mode and writes its outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")

from sklearn.metrics import accuracy_score  # noqa: E402

from tests._recompute import spy_on_predict  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "active_learning_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("active_learning_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_mode_runs_every_method(tmp_path, capsys, monkeypatch):
    calls = spy_on_predict(monkeypatch)
    example = load_example()
    assert example.main(["--fast", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "active_learning_digits.png").stat().st_size > 1000
    assert set(results["summary"]) == set(example.METHODS)
    for method in example.METHODS:
        history = results["runs"][f"{method}/0"]
        assert [h["num_labels"] for h in history] == [20, 30]
        assert len(set(history[0]["acquired"])) == 10
    # every recorded test accuracy, recomputed with scikit-learn from that round's engine (same seed:
    # the same passes), in the order the loops evaluated them
    cfg = example.settings(True)
    _, _, x_test, y_test = example.load_split(0, cfg["test_size"], cfg["pool_size"])
    evaluations = [engine for engine, x, _ in calls if x.shape == x_test.shape and np.array_equal(x, x_test)]
    recorded = [h["accuracy"] for method in example.METHODS for h in results["runs"][f"{method}/0"]]
    assert len(evaluations) == len(recorded)
    for engine, accuracy in zip(evaluations, recorded):
        assert accuracy == accuracy_score(y_test, engine.sample(x_test).mean(axis=0).argmax(axis=1))
    for method in example.METHODS:  # the summary's label counts follow from the histories
        curve = results["runs"][f"{method}/0"]
        reached = [h["num_labels"] for h in curve if h["accuracy"] >= cfg["target"]]
        assert example.labels_to_target(curve, cfg["target"]) == (reached[0] if reached else None)
    out = capsys.readouterr().out
    assert "labels needed to reach 50% test accuracy" in out
    # the run is resumable: a second invocation finds every loop finished and trains nothing
    before = (tmp_path / "results.json").read_text()
    assert example.main(["--fast", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == json.loads(before)["runs"]


def test_labels_to_target():
    example = load_example()
    history = [{"num_labels": 20, "accuracy": 0.5}, {"num_labels": 30, "accuracy": 0.91},
               {"num_labels": 40, "accuracy": 0.89}]
    assert example.labels_to_target(history, 0.9) == 30
    assert example.labels_to_target(history, 0.95) is None

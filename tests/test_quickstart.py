"""The quickstart example (what `make demo` ran before the CLI) in its fast mode.

The printed numbers are checked against values recomputed here with numpy and scikit-learn from the
engine's raw passes and the deterministic network's own output, not only for being in range.
"""

import importlib.util
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from tests._recompute import entropy, spy_on_predict


def test_quickstart_fast_mode(capsys, monkeypatch):
    calls = spy_on_predict(monkeypatch)
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--fast"])
    out = capsys.readouterr().out
    assert "accuracy, MC-dropout mean" in out and "mean predictive entropy, wrong" in out

    # the split, independently: digits, 30 % stratified test split at the example's seed 0
    digits = load_digits()
    _, x_test, _, y_test = train_test_split((digits.data / 16.0).astype("float32"), digits.target,
                                            test_size=0.3, random_state=0, stratify=digits.target)
    assert results["num_test"] == len(y_test) == 540
    (engine, x_seen, _), = calls
    np.testing.assert_array_equal(x_seen, x_test)

    # the statistics from the raw passes, recomputed with numpy (same seed: bit-identical passes)
    samples = engine.sample(x_test)  # (T, N, C)
    assert samples.shape == (10, 540, 10)
    mean = samples.mean(axis=0)
    correct = mean.argmax(axis=1) == y_test
    assert results["mc_accuracy"] == accuracy_score(y_test, mean.argmax(axis=1))
    assert results["num_wrong"] == int((~correct).sum())
    total = entropy(mean)
    mutual_information = total - entropy(samples).mean(axis=0)
    np.testing.assert_allclose(results["entropy_correct"], total[correct].mean(), rtol=1e-6)
    np.testing.assert_allclose(results["entropy_wrong"], total[~correct].mean(), rtol=1e-6)
    np.testing.assert_allclose(results["mutual_information_correct"], mutual_information[correct].mean(),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results["mutual_information_wrong"], mutual_information[~correct].mean(),
                               rtol=1e-5, atol=1e-7)
    deterministic = engine.model.predict(x_test, verbose=0)
    assert results["deterministic_accuracy"] == accuracy_score(y_test, deterministic.argmax(axis=1))

    # and what they should show: 3 epochs already beat chance (0.1) by far; wrong answers are less sure
    assert results["mc_accuracy"] > 0.5
    assert results["entropy_wrong"] > results["entropy_correct"]

"""The quickstart example (what `make demo` ran before the CLI) in its fast mode."""

import importlib.util
from pathlib import Path


def test_quickstart_fast_mode(capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--fast"])
    out = capsys.readouterr().out
    assert "accuracy, MC-dropout mean" in out and "mean predictive entropy, wrong" in out
    assert 0.5 < results["mc_accuracy"] <= 1.0  # 3 epochs on digits already beat chance (0.1) by far
    assert results["num_test"] == 540

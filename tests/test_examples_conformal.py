"""examples/conformal_digits.py, run end to end in its fast mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "conformal_digits.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_conformal_digits(tmp_path, capsys):
    pytest.importorskip("keras")
    spec = importlib.util.spec_from_file_location("example_conformal_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "conformal"
    assert example.main(["--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "split conformal sets at alpha = 0.1" in printed and "hardest test digits" in printed
    assert {p.name for p in out.iterdir()} == {"sets.png", "coverage_by_size.png", "metrics.json"}
    for name in ("sets.png", "coverage_by_size.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["methods"]) == {f"{m} / {k}" for m in ("MC dropout", "deterministic")
                                       for k in ("LAC", "APS", "APS-nr")}
    for name, row in results["methods"].items():
        # one split, n = 400: the test coverage is within a few points of 1 - alpha = 0.9 (Beta(361, 40) has sd
        # 0.015, plus 897 test rows); a method that ignored the threshold would be far off
        assert 0.83 <= row["coverage"] <= 0.97, (name, row["coverage"])
        assert 0 <= row["mean_set_size"] <= 10
        assert sum(v["count"] for v in row["by_size"].values()) == results["n_test"]
    assert len(results["hardest"]) == example.N_HARDEST

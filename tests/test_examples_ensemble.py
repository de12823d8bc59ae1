"""examples/ensemble_vs_mc_dropout.py, run end to end in its fast mode."""

from __future__ import annotations

import json

import numpy as np

from tests.test_examples import load


def test_ensemble_vs_mc_dropout(tmp_path, capsys):
    example = load("ensemble_vs_mc_dropout")
    out = tmp_path / "ens"
    results = example.run(fast=True, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {"metrics.json"}
    assert json.loads((out / "metrics.json").read_text())["table"] == results["table"]
    table = results["table"]
    assert len(table) == 3 and any(name.startswith("deep ensemble (5 x 1)") for name in table)
    for name, row in table.items():
        assert set(row) == set(example.COLUMNS), name
        assert 0.0 <= row["ECE"] <= 1.0 and 0.0 <= row["OOD AUROC"] <= 1.0 and row["NLL"] > 0
        assert np.isfinite(row["AURC"]) and row["predict s"] > 0
        assert row["accuracy"] > 0.4, name  # six classes: chance is about 0.17
    printed = capsys.readouterr().out
    assert "MC-dropout ensemble (5 x 3)" in printed and "OOD AUROC" in printed

"""`mcdrop select --method batchbald` shows BatchBALD's progress bar on a terminal, and --quiet hides it
(issue 15: the selection ran for 41 s with no feedback)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mcdrop import cli

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-progress")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    model.save(folder / "clf.keras")
    np.save(folder / "pool.npy", np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    return folder


@pytest.mark.parametrize("quiet", [False, True])
def test_select_batchbald_progress_follows_quiet(files, capsys, monkeypatch, quiet):
    from mcdrop import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(_progress, "AUTO_DELAY", 0.0)  # a long selection: an "auto" bar would draw at once
    argv = ["select", files / "clf.keras", files / "pool.npy", "-k", 3, "--method", "batchbald", "-T", 6,
            "--seed", 0, *(["--quiet"] if quiet else [])]
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 0, err
    assert ("BatchBALD" in err) is not quiet

"""`mcdrop predict` and `mcdrop select` with several MODEL files: an ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop import cli
from tests.test_cli import assert_one_line_error, run

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_ensemble")
    for i, width in enumerate((8, 16, 12)):
        keras.utils.set_random_seed(i)
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation="relu"),
                          keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")]
                         ).save(folder / f"m{i}.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t + 1.0), keras.layers.Dropout(0.5),
                      keras.layers.Dense(3, activation="softmax")]).save(folder / "code.keras")
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    return folder


def test_predict_with_several_models_is_the_library_ensemble(files, tmp_path, capsys):
    import mcdrop

    out = tmp_path / "pred.npz"
    models = [files / f"m{i}.keras" for i in range(3)]
    status, _, err = run(capsys, "predict", *models, files / "x.npy", "-T", 4, "--seed", 2, "--out", out, "-q")
    assert status == 0, err
    saved = np.load(out)
    loaded = [keras.saving.load_model(m) for m in models]
    ref = mcdrop.Ensemble(loaded, num_samples=4, seed=2).predict(np.load(files / "x.npy"))
    np.testing.assert_array_equal(saved["mean"], ref.mean)
    assert int(saved["num_samples"]) == 12
    np.testing.assert_array_equal(saved["members"], [4, 4, 4])


def test_deep_ensemble_with_T_1_averages_the_members(files, tmp_path, capsys):
    out = tmp_path / "pred.npz"
    models = [files / f"m{i}.keras" for i in range(2)]
    status, _, err = run(capsys, "predict", *models, files / "x.npy", "-T", 1, "--out", out, "-q")
    assert status == 0, err
    x = np.load(files / "x.npy")
    own = [keras.saving.load_model(m).predict(x, verbose=0).astype(np.float64) for m in models]
    np.testing.assert_allclose(np.load(out)["mean"], np.mean(own, axis=0), atol=1e-7)


def test_select_with_several_models(files, capsys):
    models = [files / f"m{i}.keras" for i in range(3)]
    status, stdout, err = run(capsys, "select", *models, files / "x.npy", "-k", 3, "--method", "batchbald",
                              "-T", 3, "--seed", 0, "--json")
    assert status == 0, err
    import json

    assert len(set(json.loads(stdout)["indices"])) == 3


def test_every_member_is_loaded_in_safe_mode(files, tmp_path, capsys):
    out = tmp_path / "pred.npz"
    status, stdout, err = run(capsys, "predict", files / "m0.keras", files / "code.keras", files / "x.npy",
                              "--out", out)
    assert_one_line_error(status, stdout, err, r"MODEL.*--unsafe")
    assert not out.exists()


def test_ray_takes_one_model(files, capsys):
    status, stdout, err = run(capsys, "predict", files / "m0.keras", files / "m1.keras", files / "x.npy",
                              "--ray", "local")
    assert_one_line_error(status, stdout, err, r"argument `--ray`: expected one MODEL, received 2")
    assert status == cli.EXIT_ERROR

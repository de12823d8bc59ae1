"""The command line refuses NaN/infinite input rows before the model loads (issue 9, item 1), in its own
words, unless --allow-nonfinite-inputs says the model takes them."""

import numpy as np
import pytest

from tests.test_cli import assert_one_line_error, run

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_nonfinite")
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5),
                      keras.layers.Dense(3, activation="softmax")]).save(folder / "clf.keras")
    return folder


@pytest.fixture
def nan_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32)
    x[[3, 20], 1] = np.nan
    x[21, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    return tmp_path / "nan.npy"


@pytest.mark.parametrize("command, name", [("predict", "DATA"), ("select", "POOL")])
def test_nonfinite_rows_print_one_line_and_exit_2_with_no_file(files, nan_data, tmp_path, capsys, command, name):
    out = tmp_path / ("out.npz" if command == "predict" else "out.csv")
    extra = ["-k", "2"] if command == "select" else []
    status, stdout, err = run(capsys, command, files / "clf.keras", nan_data, "-T", "3", "--out", out, *extra)
    assert_one_line_error(status, stdout, err,
                          rf"mcdrop {command}: error: Invalid value for argument `{name}`: expected finite values, "
                          r"received 3 of 24 row\(s\) holding NaN or infinity \(rows 3, 20, 21\)\. "
                          r"Pass --allow-nonfinite-inputs if the model is built to take them\.$")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [nan_data]  # no partial or temporary file either


def test_the_flag_reaches_the_engine(files, nan_data, tmp_path, capsys):
    """With the flag the rows go to the model; this one (a ReLU MLP) then gives non-finite outputs on some
    CPUs and finite ones on others, so only the input check's absence is asserted."""
    status, _, err = run(capsys, "predict", files / "clf.keras", nan_data, "-T", "3", "--seed", "0",
                         "--allow-nonfinite-inputs")
    assert "expected finite values" not in err
    assert status == 0 or "gave NaN or infinite values" in err

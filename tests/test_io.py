"""Safe loading and atomic writing (mcdrop.io)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from mcdrop import io


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- arrays


def test_npy_npz_and_csv_round_trip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "one.npz", features=x)
    np.savez(tmp_path / "many.npz", x=x, y=np.arange(4))
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    np.savetxt(tmp_path / "header.csv", x, delimiter=",", header="a,b,c", comments="")

    np.testing.assert_array_equal(io.load_array(tmp_path / "x.npy"), x)
    np.testing.assert_array_equal(io.load_array(tmp_path / "one.npz"), x)
    np.testing.assert_array_equal(io.load_array(tmp_path / "many.npz"), x)  # the array named x
    np.testing.assert_array_equal(io.load_array(tmp_path / "many.npz", key="y"), np.arange(4))
    np.testing.assert_allclose(io.load_array(tmp_path / "x.csv"), x, rtol=1e-6)
    np.testing.assert_allclose(io.load_array(tmp_path / "header.csv"), x, rtol=1e-6)
    assert sorted(io.load_arrays(tmp_path / "many.npz")) == ["x", "y"]


def test_csv_single_column_of_integers_is_a_label_vector(tmp_path):
    (tmp_path / "labels.csv").write_text("label\n3\n0\n2\n")
    labels = io.load_array(tmp_path / "labels.csv")
    assert labels.shape == (3,)
    assert labels.dtype == np.int64
    assert labels.tolist() == [3, 0, 2]


def test_object_array_is_refused_not_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(io.InputError, match=r"argument `data`.*obj\.npy.*Python objects, which are not loaded"):
        io.load_array(tmp_path / "obj.npy")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npy", None, r"expected an existing file or folder, received '.*missing\.npy'\. No such file"),
        ("data.txt", b"1,2\n", r"expected a \.npy, \.npz or \.csv file.*Unknown array format '\.txt'"),
        ("broken.npy", b"not numpy", r"expected a readable \.npy file.*It is not a NumPy \.npy file"),
        ("broken.npz", b"not a zip", r"expected a readable \.npz file.*It is not a NumPy \.npz \(zip\) archive"),
        ("words.csv", b"a,b\nc,d\n", r"expected a numeric \.csv file"),
        ("empty.csv", b"", r"expected a numeric \.csv file"),
    ],
)
def test_unreadable_arrays_name_the_argument_and_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(io.InputError, match=message):
        io.load_array(path, name="data")


def test_npz_with_several_arrays_and_no_x_needs_a_key(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.ones(2))
    with pytest.raises(io.InputError, match=r"holds 2 arrays \(a, b\); choose one with a key"):
        io.load_array(tmp_path / "two.npz")
    with pytest.raises(io.InputError, match=r"argument `key`: expected one of the arrays in two\.npz \(a, b\)"):
        io.load_array(tmp_path / "two.npz", key="c")


def test_non_numeric_array_is_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(io.InputError, match=r"expected a numeric array.*Its dtype is <U1"):
        io.load_array(tmp_path / "s.npy")


def test_a_path_that_is_not_a_path_is_a_type_error():
    with pytest.raises(TypeError, match=r"argument `data`: expected a path, received 3"):
        io.load_array(3)


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("models")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3, activation="softmax")])
    with_code = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Lambda(lambda t: t * 2.0),
                                  keras.layers.Dense(3, activation="softmax")])
    plain.save(folder / "plain.keras")
    plain.save(folder / "plain.h5")
    plain.export(str(folder / "saved"), verbose=False)
    with_code.save(folder / "code.keras")
    with_code.save(folder / "code.h5")
    return folder, plain


@pytest.mark.parametrize(("name", "unsafe"), [("plain.keras", False), ("plain.h5", False), ("saved", True)])
def test_models_load_and_predict_as_saved(keras_models, name, unsafe):
    folder, plain = keras_models
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    model = io.load_model(folder / name, unsafe=unsafe)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["code.keras", "code.h5"])
def test_python_code_in_a_model_needs_unsafe(keras_models, name):
    folder, _ = keras_models
    with pytest.raises(io.InputError, match=r"argument `MODEL`: expected a model that loads in safe mode.*--unsafe"):
        io.load_model(folder / name, name="MODEL")
    model = io.load_model(folder / name, unsafe=True)
    assert [type(layer).__name__ for layer in model.layers][1] == "Lambda"


def test_a_saved_model_graph_needs_unsafe(keras_models):
    folder, _ = keras_models
    with pytest.raises(io.InputError, match=r"argument `MODEL`: expected a model that loads in safe mode.*"
                                            r"TensorFlow SavedModel.*--unsafe"):
        io.load_model(folder / "saved", name="MODEL")


def test_unknown_or_broken_models_are_refused(tmp_path):
    (tmp_path / "fake.keras").write_text("not a zip")
    (tmp_path / "model.pt").write_bytes(b"\x00")
    (tmp_path / "folder").mkdir()
    with pytest.raises(io.InputError, match=r"expected a readable Keras model.*not a \.keras \(zip\) archive"):
        io.load_model(tmp_path / "fake.keras")
    with pytest.raises(io.InputError, match=r"Unknown model format '\.pt'"):
        io.load_model(tmp_path / "model.pt")
    with pytest.raises(io.InputError, match=r"neither saved_model\.pb nor a Keras config\.json"):
        io.load_model(tmp_path / "folder")
    with pytest.raises(io.InputError, match=r"expected an existing file or folder.*nowhere\.keras"):
        io.load_model(tmp_path / "nowhere.keras")


def test_a_zip_that_is_not_a_model_is_unreadable(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(io.InputError, match=r"expected a readable Keras model.*Keras could not load it"):
        io.load_model(tmp_path / "other.keras")


# --------------------------------------------------------------------------- writing


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_write(target, "w") as handle:
            handle.write("half of the new cont")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["out.txt"]  # no temporary file left
    with io.atomic_write(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["out.txt"]


def test_atomic_write_refuses_a_missing_folder(tmp_path):
    with pytest.raises(io.InputError, match=r"argument `out`: expected a path in an existing folder"):
        with io.atomic_write(tmp_path / "no" / "such.txt", "w"):
            pass


def test_save_npz_writes_exactly_the_named_file(tmp_path):
    io.save_npz(tmp_path / "preds.bin", {"mean": np.eye(2), "task": np.array("classification")})
    assert _listing(tmp_path) == ["preds.bin"]  # numpy would have appended .npz to a path
    with np.load(tmp_path / "preds.bin", allow_pickle=False) as loaded:
        assert loaded["task"].item() == "classification"
        np.testing.assert_array_equal(loaded["mean"], np.eye(2))


def test_save_npz_refuses_objects_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"argument `arrays\['bad'\]`"):
        io.save_npz(tmp_path / "p.npz", {"bad": np.array([None, 1], dtype=object)})
    assert _listing(tmp_path) == []


def test_save_json_and_csv(tmp_path):
    io.save_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(2),
                                       "d": [float("nan"), np.inf, 1.0], "e": tmp_path})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # standard JSON: non-finite numbers are null
    assert json.loads(text) == {"a": 0.5, "b": [0, 1, 2], "c": 2, "d": [None, None, 1.0], "e": str(tmp_path)}
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        io.to_json({"x": object()})
    io.save_csv(tmp_path / "i.csv", {"rank": np.arange(3), "index": np.array([7, 2, 5])})
    assert (tmp_path / "i.csv").read_text() == "rank,index\n0,7\n1,2\n2,5\n"
    with pytest.raises(ValueError, match=r"argument `columns`: expected columns of one length"):
        io.save_csv(tmp_path / "j.csv", {"a": [1, 2], "b": [1]})
    assert not (tmp_path / "j.csv").exists()


def test_staged_directory_is_all_or_nothing(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="half-way"):
        with io.staged_directory(out) as stage:
            (stage / "a.txt").write_text("a")
            raise RuntimeError("half-way")
    assert _listing(tmp_path) == []  # neither the folder nor the staging folder
    with io.staged_directory(out) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    assert _listing(tmp_path) == ["report"]
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    # a second run replaces files it writes and keeps the others
    (out / "keep.txt").write_text("k")
    with io.staged_directory(out) as stage:
        (stage / "a.txt").write_text("A")
    assert (out / "a.txt").read_text() == "A" and (out / "keep.txt").read_text() == "k"


def test_staged_directory_refuses_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(io.InputError, match=r"argument `out`: expected a folder.*A file of that name exists"):
        with io.staged_directory(tmp_path / "taken"):
            pass
    assert os.listdir(tmp_path) == ["taken"]


# --------------------------------------------------------------------------- CSV header rule (issue 9.2)


def test_csv_first_row_with_a_typo_is_an_error_not_a_header(tmp_path):
    # on main the row was dropped as a header: every row index after it was off by one
    (tmp_path / "typo.csv").write_text("1.0,2.o,3.0\n4.0,5.0,6.0\n7.0,8.0,9.0\n")
    with pytest.raises(io.InputError, match=r"argument `data`: expected a numeric \.csv file, received "
                       r"'.*typo\.csv'\. Row 1, column 2 holds '2\.o', which is not a number \(rows and "
                       r"columns count from 1, as lines in the file.*--header on the command line"):
        io.load_array(tmp_path / "typo.csv")


def test_csv_first_row_with_an_empty_cell_is_an_error_not_a_header(tmp_path):
    (tmp_path / "gap.csv").write_text("1.0,,3.0\n4.0,5.0,6.0\n")
    with pytest.raises(io.InputError, match=r"Row 1, column 2 is empty \(rows and columns count from 1"):
        io.load_array(tmp_path / "gap.csv")


def test_csv_bad_cell_further_down_names_its_line_in_the_file(tmp_path):
    # the header is line 1 and the blank line 3 still counts: the empty cell is on line 5
    (tmp_path / "gap.csv").write_text("a,b\n1,2\n\n3,4\n5,\n")
    with pytest.raises(io.InputError, match=r"Row 5, column 2 is empty"):
        io.load_array(tmp_path / "gap.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n")
    with pytest.raises(io.InputError, match=r"same number of columns on every row.*Row 2 has 3 columns "
                                            r"where row 1 has 2"):
        io.load_array(tmp_path / "ragged.csv")


def test_csv_header_only_when_no_field_is_a_number(tmp_path):
    (tmp_path / "named.csv").write_text("x1,x2\n1.5,2\n3,4\n")
    np.testing.assert_array_equal(io.load_array(tmp_path / "named.csv"), [[1.5, 2.0], [3.0, 4.0]])
    # a header whose names look like numbers must be declared
    (tmp_path / "numeric_names.csv").write_text("1,2\n3,4\n5,6\n")
    np.testing.assert_array_equal(io.load_array(tmp_path / "numeric_names.csv"), [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(io.load_array(tmp_path / "numeric_names.csv", header=True), [[3, 4], [5, 6]])
    # and a first data row of words can be declared data: then it is an error, not silently dropped
    with pytest.raises(io.InputError, match=r"Row 1, column 1 holds 'x1', which is not a number"):
        io.load_array(tmp_path / "named.csv", header=False)
    (tmp_path / "only_header.csv").write_text("a,b\n")
    with pytest.raises(io.InputError, match=r"at least one data row.*only a header line"):
        io.load_array(tmp_path / "only_header.csv")


# --------------------------------------------------------------------------- leftovers of killed writes (9.15)

_KILLED_WRITER = """
import sys, time
from mcdrop import io
kind, target = sys.argv[1], sys.argv[2]
if kind == "file":
    with io.atomic_write(target, "w") as handle:
        handle.write("half")
        handle.flush()
        print("ready", flush=True)
        time.sleep(60)
else:
    with io.staged_directory(target) as stage:
        (stage / "report.html").write_text("half")
        print("ready", flush=True)
        time.sleep(60)
"""


def _killed_write(kind, target):
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, kind, str(target)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_sigkilled_write_leaves_a_hidden_tmp_that_the_next_write_removes(tmp_path, kind):
    (tmp_path / "mine.tmp").write_text("not ours")  # a user's own file is never touched
    (tmp_path / ".other.tmp").write_text("not ours either")
    target = tmp_path / ("preds.npz" if kind == "file" else "report")
    _killed_write(kind, target)
    leftovers = [n for n in _listing(tmp_path) if ".mcdrop-" in n]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{target.name}") and leftovers[0].endswith(".tmp")
    io.save_text(tmp_path / "next.txt", "x")  # any write to the folder cleans up
    assert _listing(tmp_path) == [".other.tmp", "mine.tmp", "next.txt"]


def test_a_live_write_is_never_taken_for_a_leftover(tmp_path):
    with io.atomic_write(tmp_path / "a.txt", "w") as handle:
        handle.write("in progress")
        (live,) = [n for n in _listing(tmp_path) if ".mcdrop-" in n]
        assert io.remove_leftovers(tmp_path) == []
        with io.staged_directory(tmp_path / "out") as stage:
            assert io.remove_leftovers(tmp_path) == []
            (stage / "b.txt").write_text("b")
        assert live in _listing(tmp_path)
    assert _listing(tmp_path) == ["a.txt", "out"]
    assert _listing(tmp_path / "out") == ["b.txt"]  # the lock file is not moved in


def test_a_full_disk_names_the_destination_not_the_temporary_file(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        io.save_npz(tmp_path / "preds.npz", {"mean": np.zeros(3)})
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "preds.npz")
    assert _listing(tmp_path) == []


def test_a_failed_move_into_a_staged_folder_names_the_folder(tmp_path, monkeypatch):
    import errno

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        with io.staged_directory(tmp_path / "report") as stage:
            (stage / "a.txt").write_text("a")
    assert info.value.filename == str(tmp_path / "report")  # not the hidden staging folder's file
    assert [n for n in _listing(tmp_path) if ".mcdrop-" in n] == []


# --------------------------------------------------------------------------- output checks and writers (issue 13)


def test_output_checks_name_the_argument_and_the_reason(tmp_path):
    (tmp_path / "taken").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(io.InputError, match=r"argument `--out`: expected a \.npz file, received '.*p\.txt'\.$"):
        io.check_out_file(tmp_path / "p.txt", suffix=".npz", name="--out")
    with pytest.raises(io.InputError, match=r"argument `out`: expected a file path, received .*It is a folder\."):
        io.check_out_file(tmp_path / "folder")
    with pytest.raises(io.InputError, match=r"expected a path in an existing folder.*No such folder: .*nowhere\."):
        io.check_out_file(tmp_path / "nowhere" / "p.npz")
    assert io.check_out_file(str(tmp_path / "p.NPZ"), suffix=".npz") == tmp_path / "p.NPZ"
    with pytest.raises(io.InputError, match=r"argument `out`: expected a folder, received .*A file of that name"):
        io.check_out_folder(tmp_path / "taken")
    with pytest.raises(io.InputError, match=r"expected a folder whose parent exists.*No such folder"):
        io.check_out_folder(tmp_path / "no" / "such")
    assert io.check_out_folder(tmp_path / "new") == tmp_path / "new"
    assert _listing(tmp_path) == ["folder", "taken"]  # checks write nothing


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(io.InputError, match=r"argument `out`: expected a path in a folder this user can write, "
                                                r"received '.*p\.npz'\. Permission denied: .*locked\."):
            io.check_writable(locked, str(locked / "p.npz"))
    finally:
        locked.chmod(0o700)
    io.check_writable(tmp_path, str(tmp_path / "p.npz"))
    assert _listing(tmp_path) == ["locked"]  # the probe file is gone


def test_save_bytes_is_atomic(tmp_path):
    io.save_bytes(tmp_path / "a.png", b"\x89PNG")
    assert (tmp_path / "a.png").read_bytes() == b"\x89PNG"
    with pytest.raises(io.InputError, match=r"expected a path in an existing folder"):
        io.save_bytes(tmp_path / "no" / "a.png", b"x")
    assert _listing(tmp_path) == ["a.png"]


def test_npy_appender_is_a_valid_npy_of_the_committed_rows(tmp_path):
    path = tmp_path / "a.npy"
    appender = io.NpyAppender(path, np.float32, (2,))
    assert np.load(path).shape == (0, 2)
    appender.append(np.ones((3, 2)))
    appender.commit()
    appender.append(np.full((2, 2), 7.0))  # not committed: the header still says 3 rows
    np.testing.assert_array_equal(np.load(path), np.ones((3, 2), np.float32))
    appender.commit()
    appender.close()
    np.testing.assert_array_equal(np.load(path), np.concatenate([np.ones((3, 2)), np.full((2, 2), 7.0)]))
    with pytest.raises(ValueError, match=r"argument `prediction`: expected rows of shape \(2,\)"):
        io.NpyAppender(tmp_path / "b.npy", np.float32, (2,)).append(np.ones((1, 3)))


def test_npy_filled_in_place_in_any_order(tmp_path):
    path = tmp_path / "c.npy"
    io.create_npy(path, np.int64, (5, 2))
    io.write_npy_rows(path, np.arange(4).reshape(2, 2) + 10, 3)
    io.write_npy_rows(path, np.arange(6).reshape(3, 2), 0)
    np.testing.assert_array_equal(np.load(path), np.concatenate([np.arange(6).reshape(3, 2),
                                                                 np.arange(4).reshape(2, 2) + 10]))
    assert path.stat().st_size == io.NPY_HEADER_BYTES + 5 * 2 * 8

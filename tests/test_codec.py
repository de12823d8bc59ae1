"""The one codec of the prediction types (issue 13, item 3): ``to_arrays`` / ``from_arrays`` round-trip every
prediction type through every path that stores or sends one (the store, the ``.npz`` of ``mcdrop predict``, the
Ray columns, the Parquet rows), read what earlier versions wrote, and refuse a bad or incomplete input naming the
file and the field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import mcdrop
from mcdrop import cli, distributed, io, store
from mcdrop.predictive import FORMAT_VERSION, ClassificationPrediction, RegressionPrediction, from_arrays

ASSETS = Path(__file__).parent / "data" / "predictions_v0"
RNG = np.random.default_rng(0)


def _probs(shape):
    logits = RNG.normal(size=shape)
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def _cases():
    probs = _probs((5, 6, 3))
    means, variances = RNG.normal(size=(5, 6, 3)), RNG.uniform(0.1, 2.0, (5, 6, 3))
    return {
        "classification, samples, per-example masks": ClassificationPrediction.from_samples(
            probs, mask="per_example", seed=7),
        "classification from logits, no samples": dataclasses.replace(
            ClassificationPrediction.from_samples(probs, keep_samples=False, seed=1), outputs="logits"),
        "classification ensemble": dataclasses.replace(ClassificationPrediction.from_samples(probs), members=(2, 3)),
        "regression, three outputs, samples": RegressionPrediction.from_samples(means, seed=2),
        "heteroscedastic regression": RegressionPrediction.from_samples(means, variances, seed=3),
        "regression recalibrated, no samples": RegressionPrediction.from_samples(
            means, keep_samples=False, includes_aleatoric=True),
        "heteroscedastic ensemble": dataclasses.replace(
            RegressionPrediction.from_samples(means, variances), members=(4, 1)),
    }


CASES = _cases()


def assert_same(got, want):
    assert type(got) is type(want)
    for field in dataclasses.fields(want):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray), field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
            assert a.dtype == b.dtype, field.name
        else:
            assert a == b, field.name


@pytest.mark.parametrize("rows_first", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_arrays_and_metadata_round_trip_every_type(case, rows_first):
    pred = CASES[case]
    arrays, metadata = pred.to_arrays(rows_first=rows_first)
    assert metadata["format"] == FORMAT_VERSION and metadata["task"] == pred.task
    assert json.loads(json.dumps(metadata)) == metadata  # plain JSON values
    if pred.samples is not None:
        want = (len(pred), pred.num_samples) if rows_first else (pred.num_samples, len(pred))
        assert arrays["samples"].shape[:2] == want
    assert_same(from_arrays(arrays, metadata, rows_first=rows_first), pred)
    assert_same(type(pred).from_arrays(arrays, metadata, rows_first=rows_first), pred)


@pytest.mark.parametrize("case", list(CASES))
def test_every_path_gives_back_the_prediction(case, tmp_path):
    pred = CASES[case]
    # the store, appended in two blocks
    writer = store.PredictionWriter(tmp_path / "appended")
    writer.append(pred.subset(slice(0, 4)))
    writer.append(pred.subset(slice(4, None)))
    assert_same(writer.close(), pred)
    assert_same(store.load(tmp_path / "appended", mmap=False), pred)
    # the store, written in place in any order (a Ray job)
    store.create(tmp_path / "in_place", pred.subset(slice(0, 1)), len(pred))
    store.write_rows(tmp_path / "in_place", pred.subset(slice(3, None)), 3)
    store.write_rows(tmp_path / "in_place", pred.subset(slice(0, 3)), 0)
    store.finish(tmp_path / "in_place")
    assert_same(store.load(tmp_path / "in_place"), pred)
    # the .npz of `mcdrop predict`, read by the library and by the command line
    io.save_prediction(tmp_path / "p.npz", pred, model="m.keras")
    assert_same(io.load_prediction(tmp_path / "p.npz"), pred)
    assert_same(cli._load_prediction(str(tmp_path / "p.npz")), pred)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as saved:  # other tools read the statistics
        np.testing.assert_array_equal(saved["standard_error"], pred.standard_error)
        assert saved["model"].item() == "m.keras"
    # the Ray columns, rows arriving in any order
    rows = np.arange(len(pred))
    columns = distributed._columns_of([pred.subset(slice(3, None)), pred.subset(slice(3, None))], rows[3:])
    first = distributed._columns_of([pred.subset(slice(0, 3)), pred.subset(slice(0, 3))], rows[:3])
    joined = {k: np.concatenate([columns[k], first[k]]) for k in columns}
    plan = {"num_samples": pred.num_samples, "mask": pred.mask, "seed": pred.seed}
    got = distributed._assemble(joined, len(pred), rows, plan)
    assert len(got) == 2
    for one in got:
        assert_same(one, pred)


def test_parquet_rows_carry_the_codec_metadata(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pred = CASES["heteroscedastic ensemble"]
    distributed._write_parquet_part(tmp_path, 4, 10, [pred], None)
    assert [p.name for p in (tmp_path / "rows").iterdir()] == ["part-00000004.parquet"]
    table = pq.read_table(tmp_path / "rows" / "part-00000004.parquet")
    metadata = json.loads(table.schema.metadata[b"mcdrop.prediction"])
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.arange(10, 16))
    arrays = {name: np.stack([np.asarray(v) for v in table.column(name).to_pylist()])
              for name in ("mean", "epistemic_variance", "aleatoric_variance")}
    for name in ("samples", "sample_variances"):  # (rows, T, D) as nested lists
        arrays[name] = np.array(table.column(name).to_pylist())
    assert_same(from_arrays(arrays, metadata, rows_first=True), pred)
    assert "sample_member" not in table.column_names  # (T,), not a per-row value


# --------------------------------------------------------------------------- what earlier versions wrote

NAMES = ["cls_samples", "cls_ensemble", "cls_plain", "reg_hetero", "reg_plain", "reg_ensemble"]
#: The provenance each asset was written with (tests/data/predictions_v0/written_by.py).
PROVENANCE = {
    "cls_samples": dict(outputs="logits", mask="per_example", seed=7, members=None),
    "cls_ensemble": dict(outputs="probs", seed=3, members=(1, 3)),
    "cls_plain": dict(outputs="probs", seed=None, members=None),
    "reg_hetero": dict(heteroscedastic=True, includes_aleatoric=True, seed=11),
    "reg_plain": dict(heteroscedastic=False, includes_aleatoric=True, seed=None),
    "reg_ensemble": dict(heteroscedastic=False, includes_aleatoric=False, members=(2, 2)),
}


def _check_asset(name, got):
    with np.load(ASSETS / f"{name}.expected.npz", allow_pickle=False) as expected:
        for key in expected.files:
            np.testing.assert_array_equal(getattr(got, key), expected[key], err_msg=f"{name}: {key}")
        assert sorted(expected.files) == sorted(k for k, v in got.to_arrays()[0].items())
    for key, value in PROVENANCE[name].items():
        assert getattr(got, key) == value, (name, key)
    assert got.num_samples == 4 and len(got) == 5
    if got.samples is not None:  # the statistics agree with the kept passes (numpy, independently)
        np.testing.assert_allclose(got.mean, got.samples.mean(axis=0), rtol=1e-12, atol=1e-12)
        var = got.variance if got.task == "classification" else got.epistemic_variance
        np.testing.assert_allclose(var, got.samples.var(axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_stores_written_before_the_codec_still_load(name):
    _check_asset(name, store.load(ASSETS / f"{name}.store"))


@pytest.mark.parametrize("name", NAMES)
def test_predict_files_written_before_the_codec_still_load_with_their_provenance(name):
    """Before the codec the command line dropped an ensemble's members, a logits model's ``outputs`` and a
    recalibrated regression's ``includes_aleatoric`` when it read these files back."""
    _check_asset(name, io.load_prediction(ASSETS / f"{name}.npz"))
    _check_asset(name, cli._load_prediction(str(ASSETS / f"{name}.npz")))


# --------------------------------------------------------------------------- bad input


def _classification():
    return CASES["classification, samples, per-example masks"].to_arrays()


@pytest.mark.parametrize("change, message", [
    (lambda a, m: a.pop("votes"), r"a classification prediction with the arrays mean, variance, "
                                  r"expected_entropy, votes, received .*It has no `votes`\."),
    (lambda a, m: m.pop("num_samples"), r"with its metadata `num_samples`.*It has no `num_samples`\."),
    (lambda a, m: m.update(num_samples=0), r"whose `num_samples` is an integer >= 1.*Its `num_samples` is 0\."),
    (lambda a, m: m.update(num_samples=4), r"whose `samples` has shape \(4, 6, 3\) \(`mean` \(6, 3\), "
                                           r"num_samples 4\).*Its `samples` has shape \(5, 6, 3\)"),
    (lambda a, m: m.update(mask="sometimes"), r"whose `mask` is one of \['consistent', 'per_example'\].*"
                                              r"Its `mask` is 'sometimes'\."),
    (lambda a, m: m.update(outputs="scores"), r"whose `outputs` is one of \['probs', 'logits'\]"),
    (lambda a, m: m.update(seed="7"), r"whose `seed` is an integer or None.*Its `seed` is '7'\."),
    (lambda a, m: m.update(members=[2, 2]), r"whose `members` sum to num_samples 5.*Its `members` are \[2, 2\]\."),
    (lambda a, m: m.update(members=[5, 0]), r"whose `members` is a list of integers >= 1"),
    (lambda a, m: m.update(task="segmentation"), r"a prediction of task 'classification' or "
                                                 r"'regression'.*Its `task` is 'segmentation'\."),
    (lambda a, m: m.pop("task"), r"Its `task` is None\."),
    (lambda a, m: m.update(format=FORMAT_VERSION + 1), rf"format version 1 to {FORMAT_VERSION}.*a newer mcdrop "
                                                       r"wrote it: upgrade mcdrop"),
    (lambda a, m: a.update(variance=a["variance"][:4]), r"whose `variance` has shape \(6, 3\)"),
    (lambda a, m: a.update(expected_entropy=a["mean"]), r"whose `expected_entropy` has shape \(6,\)"),
    (lambda a, m: a.update(votes=np.array(["a"] * 6)), r"whose `votes` is a numeric array.*Its `votes` is <U1\."),
    (lambda a, m: a.update(mean=a["mean"][:, 0]), r"whose `mean` has shape \(N, \.\.\.\).*has shape \(6,\)\."),
])
def test_a_bad_or_incomplete_prediction_is_refused_naming_the_field(change, message):
    arrays, metadata = _classification()
    arrays = dict(arrays)
    change(arrays, metadata)
    with pytest.raises(ValueError, match=r"Invalid value for argument `arrays`: expected .*" + message):
        from_arrays(arrays, metadata)


def test_regression_field_errors():
    arrays, metadata = CASES["regression, three outputs, samples"].to_arrays()
    with pytest.raises(ValueError, match=r"with `sample_variances` only for a Gaussian head.*Its `heteroscedastic` "
                                         r"is False\."):
        from_arrays({**arrays, "sample_variances": arrays["samples"]}, metadata)
    with pytest.raises(ValueError, match=r"whose `includes_aleatoric` is True or False.*Its `includes_aleatoric` "
                                         r"is 'yes'\."):
        from_arrays(arrays, {**metadata, "includes_aleatoric": "yes"})
    with pytest.raises(ValueError, match=r"argument `arrays`: expected a classification prediction, received .*"
                                         r"It holds a regression prediction\."):
        ClassificationPrediction.from_arrays(arrays, metadata)


def test_file_errors_name_the_file_and_the_field(tmp_path):
    arrays, metadata = _classification()
    np.savez(tmp_path / "cut.npz", **{k: v for k, v in arrays.items() if k != "votes"},
             **{k: np.asarray(v) for k, v in metadata.items() if v is not None})
    with pytest.raises(io.InputError, match=r"argument `PREDS`: expected a classification prediction with the "
                                            r"arrays .*received '.*cut\.npz'\. It has no `votes`\."):
        io.load_prediction(tmp_path / "cut.npz", name="PREDS")
    folder = tmp_path / "store"
    store.PredictionWriter(folder).append(CASES["heteroscedastic ensemble"])
    (folder / "sample_variances.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"argument `path`: expected a prediction store with the "
                                                r"sample_variances\.npy its meta\.json lists"):
        store.load(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"argument `path`: expected a prediction store whose meta\.json is JSON"):
        store.load(folder)
    np.save(tmp_path / "samples_short.npy", np.zeros((6, 2, 3)))
    shutil_store = tmp_path / "short"
    store.PredictionWriter(shutil_store).append(CASES["classification, samples, per-example masks"])
    (shutil_store / "samples.npy").write_bytes((tmp_path / "samples_short.npy").read_bytes())
    with pytest.raises(ValueError, match=r"argument `path`: expected a classification prediction whose `samples` "
                                         r"has shape \(6, 5, 3\).*received '.*short'\. Its `samples` has shape "
                                         r"\(6, 2, 3\) \(passes, not num_samples\)\."):
        store.load(shutil_store)


def test_command_line_names_preds_and_the_field_in_one_line(tmp_path, capsys):
    arrays, metadata = _classification()
    np.savez(tmp_path / "preds.npz", **{k: v for k, v in arrays.items() if k != "variance"},
             **{k: np.asarray(v) for k, v in metadata.items() if v is not None})
    np.save(tmp_path / "labels.npy", np.zeros(6, np.int64))
    status = cli.main(["evaluate", str(tmp_path / "preds.npz"), str(tmp_path / "labels.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "argument `PREDS`" in err[0] and "It has no `variance`." in err[0] and "softmax" not in err[0]


def test_top_level_names():
    assert mcdrop.predictive.from_arrays is from_arrays

"""The active-learning loop: reproducibility, interrupt/resume, no label paid twice, streaming
scoring, and bad input leaving the saved state untouched. Tiny models, few epochs, T small."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mcdrop.active import ActiveLearningLoop, Round  # noqa: E402
from tests._recompute import spy_on_predict  # noqa: E402


def make_data(seed=0, n_pool=160, n_test=60, d=8, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(c, d))
    y = rng.integers(0, c, size=n_pool + n_test)
    x = (centers[y] + rng.normal(size=(y.size, d))).astype("float32")
    return x[:n_pool], y[:n_pool], x[n_pool:], y[n_pool:]


def train(x, y, *, seed):
    model = keras.Sequential([
        keras.Input((x.shape[1],)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=True)
    return model


class CountingOracle:
    """Knows every label; records each answered query; can fail on a chosen call."""

    def __init__(self, labels, fail_on_call=None, wrong_count_on_call=None):
        self.labels = labels
        self.asked: list[list[int]] = []
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.wrong_count_on_call = wrong_count_on_call

    def __call__(self, indices):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("interrupted while labelling")
        if self.calls == self.wrong_count_on_call:
            return self.labels[indices][:-1]
        self.asked.append(list(map(int, indices)))
        return self.labels[indices]


DATA = make_data()


def make_loop(oracle, state_dir=None, **kwargs):
    x_pool, y_pool, x_test, y_test = DATA
    options = dict(initial=12, method="batch_bald", batch_size=4, budget=8, x_test=x_test, y_test=y_test,
                   num_samples=6, candidates=40, pool_chunk_size=64, state_dir=state_dir, seed=3)
    options.update(kwargs)
    return ActiveLearningLoop(train, x_pool, oracle, **options)


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    oracle = CountingOracle(DATA[1])
    loop = make_loop(oracle, tmp_path_factory.mktemp("whole"))
    return loop.run(), oracle, loop


def test_history_shape(uninterrupted):
    history, oracle, loop = uninterrupted
    assert [h["num_labels"] for h in history] == [12, 16, 20]
    assert [len(h["acquired"]) for h in history] == [4, 4, 0]
    assert loop.done and loop.labeled.size == 20 and loop.labels_paid == 20
    assert [i for h in history for i in h.acquired] == loop.labeled[12:].tolist()  # labelled in order
    # the oracle was asked for the initial set, then each batch, never twice for an index
    asked = [i for query in oracle.asked for i in query]
    assert len(asked) == len(set(asked)) == 20
    np.testing.assert_array_equal(loop.labels, DATA[1][loop.labeled])


def ece_by_hand(y, probs, bins=15):
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (i/15, (i+1)/15]
    return sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
               for b in range(bins) if np.any(which == b))


def test_recorded_metrics_are_those_of_the_rounds_mc_passes(monkeypatch):
    calls = spy_on_predict(monkeypatch)
    x_test, y_test = DATA[2], DATA[3]
    history = make_loop(DATA[1], None, method="random", budget=4).run()
    evaluations = [(engine, x) for engine, x, _ in calls if x.shape == x_test.shape and np.array_equal(x, x_test)]
    assert len(evaluations) == len(history) == 2
    for entry, (engine, x) in zip(history, evaluations):
        assert engine.seed == entry.seed
        probs = engine.sample(x).astype(np.float64).mean(axis=0)  # the same seeded passes, bit for bit
        np.testing.assert_allclose(entry.accuracy, np.mean(probs.argmax(axis=1) == y_test), rtol=1e-12)
        np.testing.assert_allclose(entry.nll, -np.mean(np.log(probs[np.arange(y_test.size), y_test])), rtol=1e-5)
        np.testing.assert_allclose(entry.ece, ece_by_hand(y_test, probs), rtol=1e-5, atol=1e-7)


def test_history_entries_are_named_tuples_saved_as_the_dicts_of_format_1(uninterrupted):
    history, _, loop = uninterrupted
    saved = json.loads((loop.state_dir / "state.json").read_text())
    assert saved["format"] == 1 and saved["history"] == [h.to_dict() for h in history]
    first = history[0]
    assert isinstance(first, Round) and first["num_labels"] == first.num_labels == 12
    assert list(saved["history"][0]) == ["round", "num_labels", "seed", "accuracy", "nll", "ece", "acquired"]
    with pytest.raises(KeyError):
        first["labels"]
    assert loop.config.to_dict() == saved["config"] and loop.method == loop.config.method == "batch_bald"


def test_a_state_folder_written_before_the_split_still_resumes(tmp_path):
    # tests/data/active_state_v1 was written by the loop as it was before LoopConfig/LoopState
    # (method="random", seed=3, no test set), stopped after round 0
    import shutil
    from pathlib import Path

    folder = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "active_state_v1", folder)
    oracle = CountingOracle(DATA[1])
    loop = make_loop(oracle, folder, method="random", x_test=None, y_test=None)
    assert loop.round == 1 and loop.labels_paid == 16 and loop.labeled.size == 16 and not loop.done
    np.testing.assert_array_equal(loop.labels, DATA[1][loop.labeled])
    history = loop.run()
    # round 1 by hand: its seed from SeedSequence([3, 1]), then the 4 highest uniform draws over the unlabelled
    seed = int(np.random.SeedSequence([3, 1]).generate_state(1)[0] >> 1)
    unlabeled = np.setdiff1d(np.arange(160), loop.labeled[:16])
    expected = unlabeled[np.argsort(-np.random.default_rng(seed).random(unlabeled.size), kind="stable")[:4]]
    assert [h.round for h in history] == [0, 1] and history[1].seed == seed
    assert list(history[1].acquired) == expected.tolist() == oracle.asked[0]
    assert loop.done and loop.labels_paid == 20 and oracle.calls == 1


def test_interrupted_run_resumes_with_the_same_history(uninterrupted, tmp_path):
    history, _, _ = uninterrupted
    # session 1: initial labels (call 1), round 0 (call 2), then interrupted inside round 1 (call 3)
    oracle = CountingOracle(DATA[1], fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        make_loop(oracle, tmp_path).run()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["round"] == 1 and len(saved["history"]) == 1 and not saved["done"]
    # session 2: a fresh loop object on the same state directory picks up at round 1
    oracle.fail_on_call = None
    resumed = make_loop(oracle, tmp_path)
    assert resumed.round == 1 and resumed.labeled.size == 16
    assert resumed.run() == history
    asked = [i for query in oracle.asked for i in query]
    assert len(asked) == len(set(asked)) == 20  # across both sessions: nothing answered twice
    # but the batch requested in the interrupted call 3 was asked for twice, and both are counted
    assert saved["labels_paid"] == 12 + 4 + 4
    assert resumed.labels_paid == 12 + 4 + 4 + 4
    # a finished run, opened again, does nothing more
    again = make_loop(oracle, tmp_path)
    assert again.done and again.run() == history and oracle.calls == 4


def test_oracle_returning_wrong_number_of_labels_leaves_state_untouched(uninterrupted, tmp_path):
    oracle = CountingOracle(DATA[1])
    make_loop(oracle, tmp_path).run(rounds=1)
    before = files(tmp_path)
    bad = CountingOracle(DATA[1], wrong_count_on_call=1)
    with pytest.raises(ValueError, match=r"`oracle`: expected 4 labels \(one per queried index\), "
                                         r"received an array of shape \(3,\)"):
        make_loop(bad, tmp_path).run()
    assert files(tmp_path).keys() == before.keys()
    assert files(tmp_path)[[n for n in before if n.endswith(".npz")][0]] == before[
        [n for n in before if n.endswith(".npz")][0]]  # the labelled set is untouched
    saved, after = json.loads(before["state.json"]), json.loads((tmp_path / "state.json").read_text())
    assert after["labels_paid"] == saved["labels_paid"] + 4  # the 4 labels were requested: paid
    assert {k: v for k, v in after.items() if k != "labels_paid"} == {
        k: v for k, v in saved.items() if k != "labels_paid"}


def test_changed_configuration_refuses_the_saved_state(tmp_path):
    make_loop(DATA[1], tmp_path, method="bald").run(rounds=1)
    before = files(tmp_path)
    with pytest.raises(ValueError, match=r"`state_dir`: expected a saved run with the same configuration.*"
                                         r"method: saved 'bald', given 'random'"):
        make_loop(DATA[1], tmp_path, method="random")
    assert files(tmp_path) == before


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, r"`batch_size`: expected an integer >= 1 and <= 160, received 0"),
    ({"batch_size": 161}, r"`batch_size`: expected an integer >= 1 and <= 160, received 161"),
    ({"method": "bold"}, r"`method`: expected one of 'bald'.*received 'bold'"),
    ({"budget": 149}, r"`budget`: expected an integer >= 1 and <= 148, received 149"),
    ({"initial": [0, 0, 1]}, r"`initial`: expected distinct pool indices"),
    ({"initial": [0, 160]}, r"`initial`: expected pool indices in \[0, 160\)"),
    ({"method": "batch_bald", "stochastic": "power"}, r"`stochastic`: expected None with method='batch_bald'"),
    ({"initial_labels": [0, 1]}, r"`initial_labels`: expected 12 labels"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        make_loop(DATA[1], tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_oracle_array_of_wrong_length():
    with pytest.raises(ValueError, match=r"`oracle`: expected a callable or 160 labels"):
        make_loop(DATA[1][:100])


def test_oracle_returning_non_integer_labels(tmp_path):
    with pytest.raises(ValueError, match=r"`oracle`: expected integer class labels"):
        make_loop(lambda idx: np.full(len(idx), 0.5), tmp_path).run()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["labels_paid"] == 12 and state["round"] == 0  # requested, nothing labelled
    with np.load(tmp_path / state["arrays"]) as arrays:
        assert arrays["labeled"].size == 0


# --------------------------------------------------------------------------- counts and damaged state (9.15)


class KilledOracle:
    """An oracle whose process dies (here: an exception nothing catches) after answering ``answer`` calls."""

    def __init__(self, labels, answer):
        self.labels, self.answer, self.calls = labels, answer, 0

    def __call__(self, indices):
        self.calls += 1
        if self.calls > self.answer:
            raise SystemExit("killed while labelling")
        return self.labels[indices]


def test_labels_paid_counts_every_label_requested_even_across_a_crash(tmp_path):
    # the crash happens inside the oracle's second call: 12 initial + 4 requested were asked for
    with pytest.raises(SystemExit):
        make_loop(KilledOracle(DATA[1], answer=1), tmp_path, method="random").run()
    assert json.loads((tmp_path / "state.json").read_text())["labels_paid"] == 16  # main recorded 12
    resumed = make_loop(KilledOracle(DATA[1], answer=10), tmp_path, method="random")
    assert resumed.labels_paid == 16
    resumed.run()
    assert resumed.labeled.size == 20 and resumed.labels_paid == 12 + 4 + 4 + 4


def test_a_truncated_state_json_names_the_file(tmp_path):
    make_loop(DATA[1], tmp_path, method="random").run(rounds=1)
    state = tmp_path / "state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"`state_dir`: expected a folder holding a readable saved run, "
                                         r"received '.*'\. .*state\.json is not valid JSON \(.*\): it was cut "
                                         r"short or edited\. Remove the folder"):
        make_loop(DATA[1], tmp_path, method="random")


def test_a_missing_or_damaged_state_array_names_the_file(tmp_path):
    make_loop(DATA[1], tmp_path, method="random").run(rounds=1)
    (npz,) = tmp_path.glob("labels-*.npz")
    content = npz.read_bytes()
    npz.unlink()
    with pytest.raises(ValueError, match=rf"{npz.name}, which .*state\.json names, is missing"):
        make_loop(DATA[1], tmp_path, method="random")
    npz.write_bytes(content[:40])
    with pytest.raises(ValueError, match=rf"{npz.name} is damaged"):
        make_loop(DATA[1], tmp_path, method="random")


def test_the_pool_is_scored_a_chunk_at_a_time_with_the_same_choice(monkeypatch):
    calls = spy_on_predict(monkeypatch)
    runs = {}
    for chunk in (37, 10_000):
        calls.clear()
        loop = make_loop(DATA[1], None, budget=4, x_test=None, y_test=None, pool_chunk_size=chunk)
        runs[chunk] = loop.run()
        # BALD over the 148 unlabelled rows, `chunk` at a time, then the samples of the 40 candidates
        assert [(len(x), p.samples is not None) for _, x, p in calls] == (
            [(37, False)] * 4 + [(40, True)] if chunk == 37 else [(148, False), (40, True)])
        assert not np.intersect1d(runs[chunk][0].acquired, loop.initial).size
    assert runs[37] == runs[10_000] and len(runs[37][0].acquired) == 4


def test_stochastic_and_random_rounds(tmp_path):
    oracle = CountingOracle(DATA[1])
    loop = make_loop(oracle, None, method="bald", stochastic="power", budget=4, x_test=None, y_test=None)
    history = loop.run()
    assert [h["num_labels"] for h in history] == [12]  # no test set: no training after the last batch
    assert "accuracy" not in history[0] and loop.done and loop.labeled.size == 16
    rand = make_loop(DATA[1], None, method="random", budget=4, x_test=None, y_test=None).run()
    assert len(set(rand[0]["acquired"])) == 4
    assert rand[0]["acquired"] != history[0]["acquired"]


# -- feedback (issue 15): repr and progress --------------------------------------------------------


def test_repr_is_one_line_and_never_negative_before_the_start(tmp_path):
    loop = make_loop(DATA[1])
    assert loop.acquired == 0
    assert repr(loop) == ("ActiveLearningLoop(method='batch_bald', pool=160, initial=12, acquired=0/8, "
                          "batch_size=4, rounds=0, status='not started')")
    assert loop.rounds_left == 3  # two batches of 4, then the final evaluation


def test_run_shows_rounds_scoring_and_batch_bald_progress(capsys, monkeypatch):
    from mcdrop import _progress

    monkeypatch.setattr(_progress, "MIN_INTERVAL", 0.0)
    loop = make_loop(DATA[1], budget=4, verbose=1)
    history = loop.run()
    err = capsys.readouterr().err
    assert len(history) == loop.round == 2
    # the rounds bar counts the two rounds and stays on screen with the last label count and accuracy
    assert "active learning" in err and "2/2" in err and "labels=16" in err
    assert f"accuracy={history[-1]['accuracy']:.3f}" in err
    assert "scoring pool" in err and "64/148" in err  # the unlabelled pool (160 - 12 rows), 64 at a time
    assert "BatchBALD" in err and "4/4" in err
    assert repr(loop) == ("ActiveLearningLoop(method='batch_bald', pool=160, initial=12, acquired=4/4, "
                          "batch_size=4, rounds=2, status='done')")
    assert loop.rounds_left == 0
    assert "\n" not in repr(loop)


def test_run_is_silent_off_a_terminal(capsys):
    loop = make_loop(DATA[1], budget=4, method="bald")  # verbose="auto": pytest's stderr is no terminal
    loop.run(rounds=1)
    assert capsys.readouterr().err == ""
    assert "status='running'" in repr(loop) and loop.rounds_left == 1


def test_bad_verbose():
    with pytest.raises(ValueError, match=r"argument `verbose`: expected one of 'auto', 0, 1, True, False, "
                                         r"received 2"):
        make_loop(DATA[1], verbose=2)

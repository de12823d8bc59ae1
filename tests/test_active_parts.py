"""The labeling loop's parts without a model: the checked, frozen configuration, the state's round
trip through its files, and history entries. (The loop itself: tests/test_active.py.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mcdrop.active import LoopConfig, LoopState, Round


def config(**kwargs):
    options = dict(initial=[0, 5, 7], method="batch_bald", batch_size=4, budget=10, seed=2)
    options.update(kwargs)
    return LoopConfig.create(40, **options)


def test_config_is_checked_frozen_and_defaults_candidates():
    cfg = config()
    assert cfg.initial == (0, 5, 7) and cfg.candidates == 500 and cfg.num_samples == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.method = "bald"
    drawn = config(initial=6)  # six distinct indices drawn from SeedSequence([seed, 2**31 - 1])
    rng = np.random.default_rng(np.random.SeedSequence([2, 2**31 - 1]))
    assert drawn.initial == tuple(np.sort(rng.choice(40, size=6, replace=False)).tolist())
    assert config() == config() and hash(config()) == hash(config())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"candidates": 3}, ValueError, r"`candidates`: expected an integer >= 4, received 3"),
    ({"budget": 38}, ValueError, r"`budget`: expected an integer >= 1 and <= 37, received 38"),
    ({"method": "random", "stochastic": "power"}, ValueError, r"`stochastic`: expected None with method='random'"),
    ({"acquisition_options": {"k": 1}}, ValueError,
     r"`acquisition_options`: expected keys among 'num_configurations', 'max_memory', received 'k'"),
    ({"method": "bald", "acquisition_options": {"max_memory": 9}}, ValueError,
     r"`acquisition_options`: expected no options unless method='batch_bald'"),
    ({"method": "epistemic_variance"}, ValueError, r"`method`: expected one of 'bald', .*'batch_bald'"),
    ({"seed": -1}, ValueError, r"`seed`: expected an integer >= 0, received -1"),
])
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        config(**kwargs)


def test_state_round_trip_and_configuration_check(tmp_path):
    history = [Round(0, 3, 11, (9, 1), accuracy=0.5, nll=float("nan"), ece=0.25)]
    state = LoopState(np.array([0, 5, 7, 9, 1]), np.array([1, 0, 2, 2, 1]), history, 1, 6, False)
    state.save(tmp_path, config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels-0000005.npz", "state.json"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["history"] == [{"round": 0, "num_labels": 3, "seed": 11, "accuracy": 0.5, "nll": None,
                                 "ece": 0.25, "acquired": [9, 1]}]  # NaN is not JSON: null
    loaded = LoopState.load(tmp_path, config())
    np.testing.assert_array_equal(loaded.labeled, [0, 5, 7, 9, 1])
    np.testing.assert_array_equal(loaded.labels, [1, 0, 2, 2, 1])
    assert loaded.history == [history[0]._replace(nll=None)] and (loaded.round, loaded.labels_paid) == (1, 6)
    with pytest.raises(ValueError, match=r"It differs in budget: saved 10, given 11\."):
        LoopState.load(tmp_path, config(budget=11))
    saved["history"][0]["labels"] = 3
    (tmp_path / "state.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"state\.json has a history entry that is not a round"):
        LoopState.load(tmp_path, config())


def test_round_reads_like_the_dicts_of_earlier_versions():
    entry = Round(2, 20, 7, (4,))
    assert entry["round"] == entry.round == 2 and entry[1] == 20 and entry.accuracy is None
    assert entry.to_dict() == {"round": 2, "num_labels": 20, "seed": 7, "acquired": [4]}
    assert Round.from_dict(entry.to_dict()) == entry
    with pytest.raises(KeyError):
        entry["accuracy_score"]

"""The engine benchmark's floor does the model's deterministic work, no less (benchmarks/_workloads.py).

A floor that skipped part of the model would make every engine look slow against it, one that
computed something else would make the ratio meaningless: each of its T passes must equal Keras'
own deterministic ``model.predict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _workloads  # noqa: E402

PASSES = 3


@pytest.mark.parametrize("key, hoisted", [("mlp", True), ("cnn", True), ("lstm", False), ("transformer", False)])
def test_floor_equals_deterministic_predict(key, hoisted):
    workload = _workloads.WORKLOADS[key](rows=8)
    base = _workloads.baselines(workload.model, workload.x, PASSES)
    assert base["hoisted"] is hoisted
    floor = base["floor"]()
    expected = workload.model.predict(workload.x, verbose=0)
    assert floor.shape == (PASSES, *expected.shape)
    for t in range(PASSES):
        np.testing.assert_allclose(floor[t], expected, rtol=1e-5, atol=1e-6)


def test_split_hoists_exactly_the_layers_before_the_first_dropout():
    workload = _workloads.mlp(rows=4)
    trunk, rest = _workloads.split_at_first_dropout(workload.model)
    first_dense = workload.model.layers[0]
    assert [layer for layer in trunk.layers if layer.weights] == [first_dense]
    assert first_dense not in rest.layers
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in rest.layers) == 2


def test_skip_connection_across_the_dropout_falls_back_to_the_tiled_pass():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8)(inputs)
    outputs = keras.layers.Add()([keras.layers.Dropout(0.5)(hidden), inputs])
    model = keras.Model(inputs, outputs)
    trunk, rest = _workloads.split_at_first_dropout(model)
    assert trunk is None and rest is model
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    floor = _workloads.baselines(model, x, PASSES)["floor"]()
    np.testing.assert_allclose(floor, np.broadcast_to(model.predict(x, verbose=0), floor.shape), rtol=1e-5, atol=1e-6)


def test_tiled_baseline_draws_different_masks_per_pass():
    workload = _workloads.mlp(rows=8)
    tiled = _workloads.baselines(workload.model, workload.x, PASSES)["tiled"]()
    assert tiled.shape == (PASSES, 8, 10)
    assert not np.allclose(tiled[0], tiled[1])

"""Issue 10 item 3: the work per compiled call comes from the memory budget and a per-call cap on the CPU
(``CPU_ROW_PASSES``, in row-passes, so memory stays flat in T), charging the layers no noise reaches once
per row rather than once per pass."""

import keras
import numpy as np

import mcdrop
from mcdrop.engine.sampler import _BYTES_PER_UNIT, CPU_ROW_PASSES, charged_width, pass_widths, plan_chunks
from tests.engine.conftest import L, mlp


def _cnn():
    return keras.Sequential([
        keras.Input((12, 12, 1)), L.Conv2D(8, 3, padding="same"), L.MaxPooling2D(), L.Flatten(),
        L.Dropout(0.5), L.Dense(16, activation="relu"), L.Dense(3, activation="softmax"),
    ])


def test_a_sequential_trunk_is_charged_once_per_row():
    mc = mcdrop.MCDropout(_cnn(), num_samples=50)
    # trunk: input 144, conv 12*12*8 = 1152, pool 288, flatten 288; per pass: dropout's input/output 288, dense 16
    assert pass_widths(mc.model, mc.view.stochastic_ids) == (288, 1152)
    assert charged_width((288, 1152), 50) == 288 + 24
    assert charged_width((288, 1151), 50) == 288 + 24  # rounded up: never under-counts


def test_other_models_are_charged_their_widest_activation_per_row_pass():
    inp = keras.Input((8,))
    h = L.Dense(40)(inp)
    model = keras.Model(inp, L.Dense(3)(L.Dropout(0.5)(h)))
    mc = mcdrop.MCDropout(model, num_samples=10)
    assert pass_widths(model, mc.view.stochastic_ids) == (40, 0)


def test_a_small_input_runs_in_one_call_on_the_cpu():
    mc = mcdrop.MCDropout(mlp(), num_samples=50)
    rows, passes = mc.plan(1000)
    assert (rows, passes) == (1000, 50)  # 50,000 row-passes: under the cap, one call
    rows, passes = mc.plan(3000)
    assert passes == 50 and rows * passes <= CPU_ROW_PASSES and rows * 2 >= 1500  # balanced blocks


def test_work_per_call_does_not_grow_with_t():
    """A stream (unknown N): the same row-passes per call at T = 10 and T = 200, so activations (and
    memory) are flat in T."""
    model = mlp()
    per_call = []
    for t in (10, 200, 5000):
        rows, passes = mcdrop.MCDropout(model, num_samples=t).plan(None)
        per_call.append(rows * passes)
    assert max(per_call) <= CPU_ROW_PASSES and min(per_call) >= 0.95 * max(per_call)


def test_the_memory_budget_still_binds():
    mc = mcdrop.MCDropout(_cnn(), num_samples=50, memory_budget=2**20)
    rows, passes = mc.plan(1000)
    assert rows * passes * charged_width(mc._widths, passes) * _BYTES_PER_UNIT <= 2**20
    rows, passes = plan_chunks(None, 50, 256, 2**20)
    assert rows * passes * 256 * _BYTES_PER_UNIT <= 2**20


def test_predictions_under_the_new_plan_equal_the_raw_passes_statistics():
    x = np.random.default_rng(0).standard_normal((300, 12, 12, 1)).astype("float32")
    mc = mcdrop.MCDropout(_cnn(), num_samples=20, seed=0, verbose=0)
    samples = mc.sample(x).astype(np.float64)
    np.testing.assert_allclose(mc.predict(x).mean, samples.mean(axis=0), rtol=1e-12)

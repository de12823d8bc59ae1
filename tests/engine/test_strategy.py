"""Many devices on one machine: under a MirroredStrategy the results equal single-device results.

Logical devices must be configured before TensorFlow starts, so the check runs in a fresh process
with the CPU split into two logical devices.
"""

import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import mcdrop
from tests.engine.conftest import mlp

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, mcdrop
    sys.path.insert(0, os.getcwd())
    from tests.engine.conftest import mlp
    keras.utils.set_random_seed(0)
    model = mlp(n_out=4)
    x = np.random.default_rng(0).standard_normal((101, 8)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    single = mcdrop.MCDropout(model, num_samples=9, seed=7, verbose=0, batch_size=16)
    multi = mcdrop.MCDropout(model, num_samples=9, seed=7, verbose=0, batch_size=16, strategy=strategy)
    a, b = single.predict(x, return_samples=True), multi.predict(x, return_samples=True)
    assert np.array_equal(a.samples, b.samples), np.abs(a.samples - b.samples).max()
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.expected_entropy, b.expected_entropy)
    c = mcdrop.MCDropout(model, num_samples=9, seed=7, verbose=0, strategy=strategy).predict(x)
    assert np.allclose(c.mean, a.mean, atol=1e-6)
    print("OK", multi.sampler.replicas)
""")


def test_mirrored_strategy_equals_single_device(tmp_path):
    script = tmp_path / "strategy_check.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK 2")


def test_strategy_must_be_a_tf_distribute_strategy():
    with pytest.raises(TypeError, match=r"argument `strategy`: expected a tf.distribute.Strategy, received 'gpu'"):
        mcdrop.MCDropout(mlp(), strategy="gpu")


def test_default_strategy_runs_one_replica():
    mc = mcdrop.MCDropout(mlp(), num_samples=3, seed=0, verbose=0, strategy=tf.distribute.get_strategy())
    assert mc.sampler.replicas == 1
    assert mc.predict(tf.zeros((5, 8))).mean.shape == (5, 3)

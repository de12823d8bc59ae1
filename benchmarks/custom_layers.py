"""Cost of an opted-in custom stochastic layer (``stochastic_layers=``), as ratios in one run.

Run: ``.venv/bin/python benchmarks/custom_layers.py``. The custom layer runs once per row of every
pass (that is what gives it consistent, batch-independent seeds), so it costs more than a built-in
dropout drawn as one tensor. Figures, T = 50, best of interleaved repeats:

(a) an MLP with a keras-io StochasticDepth opted in, over the same MLP with a built-in
    ``Dropout(noise_shape=(None, 1))`` at that place (the same noise: one keep/drop per row);
(b) the same, over the naive loop ``[model(x, training=True) for _ in range(T)]``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mcdrop  # noqa: E402
from engine import interleaved  # noqa: E402

T = 50


class StochasticDepth(keras.layers.Layer):
    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x, training=None):
        if training:
            keep = 1 - self.rate
            shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            mask = keras.ops.floor(keep + keras.random.uniform(shape, 0, 1, seed=self.seed_generator))
            return x / keep * mask
        return x


def model(noise):
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    h = keras.layers.Dense(256, activation="relu")(inp)
    h = keras.layers.Add()([h, noise(keras.layers.Dense(256, activation="relu")(h))])
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Dropout(0.2)(h)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    x = np.random.default_rng(0).normal(size=(args.rows, 64)).astype("float32")
    custom = model(lambda t: StochasticDepth(0.2)(t))
    builtin = model(lambda t: keras.layers.Dropout(0.2, noise_shape=(None, 1))(t))
    mc_custom = mcdrop.MCDropout(custom, T, seed=0, verbose=0, stochastic_layers=[StochasticDepth])
    mc_builtin = mcdrop.MCDropout(builtin, T, seed=0, verbose=0)
    best = interleaved({
        "custom": lambda: mc_custom.predict(x),
        "builtin": lambda: mc_builtin.predict(x),
        "naive": lambda: [custom(x, training=True) for _ in range(T)],
    }, args.repeats)
    print(f"rows={args.rows} T={T}: opted-in StochasticDepth / built-in Dropout = "
          f"{best['custom'] / best['builtin']:.1f}x; / naive training-mode loop = "
          f"{best['custom'] / best['naive']:.2f}x")


if __name__ == "__main__":
    main()

"""Engine benchmark: MC dropout against the naive loop and against the floor of the same work.

Run: ``.venv/bin/python benchmarks/engine.py`` (or ``make bench``). All figures are ratios against
baselines measured in the same run, best of several repeats, so a shared, noisy machine still
gives comparable numbers. T = 50.

(a) speed-up over ``[model(x, training=True) for _ in range(T)]``
    targets: >= 12x on the MLP, >= 30x on the CNN
(b) cost over the floor: one deterministic compiled forward pass over the T-times-tiled batch
    (for the CNN, the trunk once plus T head passes); target <= 1.2x
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mcdrop  # noqa: E402

T = 50


def interleaved(fns: dict, repeats: int) -> dict:
    """Best time of each function, the functions taking turns round after round, so that a slow
    spell of a shared machine hits every candidate alike instead of one of them."""
    for fn in fns.values():
        fn()  # warm-up (tracing)
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def mlp():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    x = np.random.default_rng(0).standard_normal((1000, 64)).astype("float32")

    deterministic = keras.Sequential([keras.Input((64,))] + [
        layer for layer in model.layers if not isinstance(layer, keras.layers.Dropout)])
    floor_fn = tf.function(lambda v: deterministic(tf.tile(v, [T, 1]), training=False))
    return model, x, lambda: floor_fn(tf.constant(x)).numpy()


def cnn():
    keras.utils.set_random_seed(0)
    trunk_layers = [
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(),
    ]
    head_layers = [
        keras.layers.Dropout(0.5), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5), keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential([keras.Input((28, 28, 1)), *trunk_layers, *head_layers])
    x = np.random.default_rng(0).standard_normal((200, 28, 28, 1)).astype("float32")

    trunk = keras.Sequential([keras.Input((28, 28, 1)), *trunk_layers])
    head = keras.Sequential([keras.Input(trunk.output_shape[1:]),
                             *[layer for layer in head_layers if not isinstance(layer, keras.layers.Dropout)]])

    @tf.function
    def floor_fn(v):
        features = trunk(v, training=False)
        return head(tf.tile(features, [T, 1]), training=False)

    return model, x, lambda: floor_fn(tf.constant(x)).numpy()


def measure(name, build, repeats, speed_target, floor_target=1.2):
    model, x, floor = build()
    xt = tf.constant(x)

    def naive():
        return [model(xt, training=True).numpy() for _ in range(T)]

    engine = mcdrop.MCDropout(model, num_samples=T, seed=0, verbose=0)
    engine_fn = lambda: engine.predict(x)  # noqa: E731
    rows = x.shape[0]
    engine_block = mcdrop.MCDropout(model, num_samples=T, seed=0, verbose=0, batch_size=rows)
    block_fn = lambda: engine_block.predict(x)  # noqa: E731

    times = interleaved({"naive": naive, "floor": floor, "engine": engine_fn, "block": block_fn}, repeats)
    t_naive, t_floor, t_engine, t_block = (times[k] for k in ("naive", "floor", "engine", "block"))
    print(f"\n{name}  (N={rows}, T={T})")
    print(f"  naive loop          {t_naive * 1e3:9.1f} ms")
    print(f"  floor               {t_floor * 1e3:9.1f} ms")
    print(f"  mcdrop (default)    {t_engine * 1e3:9.1f} ms")
    print(f"  mcdrop (one block)  {t_block * 1e3:9.1f} ms   batch_size={rows}")
    print(f"  speed-up over naive loop: {t_naive / t_engine:6.1f}x   (target >= {speed_target}x)  "
          f"{'OK' if t_naive / t_engine >= speed_target else 'MISSED'}")
    print(f"  cost over floor:          {t_engine / t_floor:6.2f}x   (target <= {floor_target}x)  "
          f"{'OK' if t_engine / t_floor <= floor_target else 'MISSED'}")
    print(f"  cost over floor, one block: {t_block / t_floor:4.2f}x")
    return {"naive_ms": t_naive * 1e3, "floor_ms": t_floor * 1e3, "engine_ms": t_engine * 1e3,
            "speedup": t_naive / t_engine, "over_floor": t_engine / t_floor}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    measure("MLP 64-256-256-10, dropout after each hidden layer", mlp, args.repeats, speed_target=12)
    measure("CNN 2x(conv+BN+pool), dropout in the head only", cnn, args.repeats, speed_target=30)


if __name__ == "__main__":
    main()

"""Benchmark the costs of issue 15's feedback: the Keras callback and the progress bars, as ratios.

    python benchmarks/feedback.py             # MLP 64-256-256-10, 5,000 training rows, 1,000 validation rows, T=20
    python benchmarks/feedback.py --quick     # smaller sizes

Every figure is a ratio of two timings taken in the same run, the candidates taking turns (best of
``--repeat``), so a slow spell of a shared machine hits both alike:

* an epoch of ``fit`` with :class:`mcdrop.callbacks.MCDropoutMetrics` against the same epoch without it;
* the callback's evaluation (T passes + metrics) against Keras' own deterministic ``model.evaluate`` of
  the same validation rows (one pass, but Keras' per-batch loop and callbacks; on small validation sets
  that overhead, not the arithmetic, sets its time);
* greedy BatchBALD with its progress bar drawn (to /dev/null) against the same selection without one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from engine import interleaved  # noqa: E402  (benchmarks/engine.py: one timing method for all scripts)

from mcdrop import acquisition as acq  # noqa: E402
from mcdrop.callbacks import MCDropoutMetrics  # noqa: E402


def data(n_train, n_val, d=64, c=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    y = rng.integers(0, c, size=n_train + n_val)
    x = (centers[y] + rng.normal(scale=2.0, size=(y.size, d))).astype("float32")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def mlp(d=64, c=10):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(c, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-T", "--num-samples", type=int, default=20)
    args = parser.parse_args(argv)
    n_train, n_val = (1000, 200) if args.quick else (5000, 1000)
    t = args.num_samples
    x, y, x_val, y_val = data(n_train, n_val)
    model = mlp()
    callback = MCDropoutMetrics((x_val, y_val), num_samples=t)
    callback.set_model(model)

    times = interleaved({
        "epoch": lambda: model.fit(x, y, epochs=1, batch_size=64, verbose=0),
        "epoch + callback": lambda: model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[callback]),
        "keras evaluate": lambda: model.evaluate(x_val, y_val, batch_size=256, verbose=0),
        "callback evaluate": callback.evaluate,
    }, args.repeat)
    assert callback.engine.sampler.traces == 1, "the callback's engine retraced"

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(1, 300, 10)) + rng.normal(size=(t, 300, 10))
    samples = np.exp(logits - logits.max(-1, keepdims=True))
    samples /= samples.sum(-1, keepdims=True)

    def with_bar():
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            acq.batch_bald(samples, 10, seed=0, verbose=1)

    bald = interleaved({"batch_bald": lambda: acq.batch_bald(samples, 10, seed=0, verbose=0),
                        "batch_bald + bar": with_bar}, args.repeat)

    print(f"CPU: {_cpu()}; T={t}, {n_train} training rows, {n_val} validation rows")
    print(f"epoch with MCDropoutMetrics / epoch without:        {times['epoch + callback'] / times['epoch']:.2f}x")
    print(f"callback evaluation (T={t}) / Keras evaluate (T=1):   "
          f"{times['callback evaluate'] / times['keras evaluate']:.1f}x")
    print(f"BatchBALD 10 of 300 with the bar / without:         "
          f"{bald['batch_bald + bar'] / bald['batch_bald']:.3f}x")
    print("absolute (best, s): " + ", ".join(f"{k} {v:.3f}" for k, v in {**times, **bald}.items()))


if __name__ == "__main__":
    main()

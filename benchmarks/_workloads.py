"""Workloads and baselines shared by ``benchmarks/engine.py`` and ``benchmarks/gpu.py``.

Each workload builder returns a :class:`Workload`: a seeded Keras model with dropout and a fixed input.
Three baselines are built from any model, without mcdrop, so that the engine is measured against
work it cannot avoid rather than against itself:

``naive``
    ``[model(x, training=True) for _ in range(T)]``, the eager loop of a first attempt.
``tiled``
    the function a savvy user writes: ``x`` repeated T times, one compiled ``model(..., training=True)``
    call, reshaped to (T, N, ...). It flips BatchNormalization to batch statistics (wrong for MC dropout,
    but what that user gets) and draws per-example masks.
``floor``
    the same arithmetic done deterministically: what comes before the first stochastic layer computed
    once on the N rows, the rest on the T-times-tiled batch with dropout off, in one compiled function.
    No implementation of T passes can do less: the masks, their draws and every statistic are extra.

This module imports TensorFlow: it is a benchmark, not part of the package.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

T = 50
L = keras.layers

# The stochastic regularisers whose noise sits in a layer of their own. Spatial dropouts subclass Dropout.
_DROPOUT_LAYERS = (L.Dropout, L.GaussianDropout, L.AlphaDropout)


@dataclass(frozen=True)
class Workload:
    name: str      # printed title
    key: str       # short name for the JSON figures
    model: keras.Model
    x: np.ndarray  # (N, ...) float32


# -- timing ----------------------------------------------------------------------------------------------

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


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` (Linux) or the platform module elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    """What the figures were measured on: CPU model, core count, load average, library versions."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "devices": [d.device_type for d in tf.config.list_logical_devices()]}


def finish(results: dict, path) -> dict:
    """Record the load average after the run on ``results`` and, with a ``path``, write them as JSON
    (atomically: no partial file). Returns ``results``."""
    import mcdrop.io

    results["machine"]["load_average_after"] = machine()["load_average"]
    if path:
        mcdrop.io.save_json(path, results)
        print(f"\nwrote {path}")
    return results


# -- workloads -------------------------------------------------------------------------------------------

def mlp(rows: int = 1000) -> Workload:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        L.Dense(256, activation="relu"), L.Dropout(0.5),
        L.Dense(256, activation="relu"), L.Dropout(0.5),
        L.Dense(10, activation="softmax"),
    ])
    x = np.random.default_rng(0).standard_normal((rows, 64)).astype("float32")
    return Workload("MLP 64-256-256-10, dropout after each hidden layer", "mlp", model, x)


def cnn(rows: int = 200) -> Workload:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.BatchNormalization(), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.BatchNormalization(), L.MaxPooling2D(),
        L.Flatten(),
        L.Dropout(0.5), L.Dense(128, activation="relu"),
        L.Dropout(0.5), L.Dense(10, activation="softmax"),
    ])
    x = np.random.default_rng(0).standard_normal((rows, 28, 28, 1)).astype("float32")
    return Workload("CNN 2x(conv+BN+pool), dropout in the head only", "cnn", model, x)


def lstm(rows: int = 200, steps: int = 20, features: int = 16) -> Workload:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((steps, features)),
        L.LSTM(64, dropout=0.2, recurrent_dropout=0.2),
        L.Dense(10, activation="softmax"),
    ])
    x = np.random.default_rng(0).standard_normal((rows, steps, features)).astype("float32")
    return Workload(f"LSTM(64) with dropout and recurrent_dropout 0.2, {steps} steps x {features}", "lstm", model, x)


def transformer(rows: int = 128, length: int = 32, width: int = 64) -> Workload:
    """One post-norm encoder block (4 heads, attention dropout, a 128-wide feed-forward with dropout),
    mean-pooled into a 10-class softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((length, width))
    attended = L.MultiHeadAttention(num_heads=4, key_dim=width // 4, dropout=0.1)(inputs, inputs)
    h = L.LayerNormalization()(L.Add()([inputs, L.Dropout(0.1)(attended)]))
    ff = L.Dense(width)(L.Dense(2 * width, activation="relu")(h))
    h = L.LayerNormalization()(L.Add()([h, L.Dropout(0.1)(ff)]))
    outputs = L.Dense(10, activation="softmax")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).standard_normal((rows, length, width)).astype("float32")
    return Workload(f"Transformer block, MultiHeadAttention dropout 0.1, sequence {length} x {width}",
                    "transformer", model, x)


WORKLOADS = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "transformer": transformer}


# -- baselines -------------------------------------------------------------------------------------------

def tile_passes(v, passes):
    return tf.tile(v, [passes] + [1] * (len(v.shape) - 1))


def is_stochastic(layer) -> bool:
    """Whether ``layer`` (or a layer inside it) draws noise at training time: a dropout-family layer,
    or a layer with a ``dropout`` / ``recurrent_dropout`` rate (RNN cells, MultiHeadAttention)."""
    for inner in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(inner, _DROPOUT_LAYERS) and inner.rate > 0:
            return True
        if any(float(getattr(inner, attr, 0) or 0) > 0 for attr in ("dropout", "recurrent_dropout")):
            return True
    return False


def split_at_first_dropout(model):
    """``(trunk, rest)``: two Keras models whose composition is ``model`` with dropout off, cut at the
    input of the first stochastic layer in topological order. ``trunk`` is None when there is nothing
    before that layer, or when the cut is not clean (a skip connection crossing it, several inputs):
    then ``rest`` is the whole model and the floor is its deterministic tiled pass.

    For the LSTM and the transformer the noise sits inside the first layer that sees the input
    (input and recurrent dropout of the LSTM, attention dropout of MultiHeadAttention), so nothing can
    be hoisted out of the passes: their floor is the deterministic pass over the tiled batch.
    """
    layers = model.layers if isinstance(model, keras.Sequential) else model.operations
    first = next((layer for layer in layers if is_stochastic(layer)), None)
    if first is None or len(model.inputs) != 1 or len(first._inbound_nodes) != 1:
        return None, model
    cuts = {id(t): t for t in first._inbound_nodes[0].input_tensors}
    if len(cuts) != 1:  # a layer of several distinct inputs: no single tensor to cut at
        return None, model
    (cut,) = cuts.values()
    if any(cut is t for t in model.inputs):
        return None, model
    try:
        trunk = keras.Model(model.inputs, cut)
        rest = keras.Model(cut, model.outputs)  # Keras 3 clones the graph from an intermediate tensor
    except (ValueError, TypeError):  # the rest also needs tensors from before the cut
        return None, model
    return trunk, rest


def split_passes(model, rows: int, passes: int, *, training: bool):
    """``(fn, hoisted)``: a compiled function of the (N, ...) input that runs the trunk before the
    first stochastic layer once and the rest over the tiled batch (with ``training`` for the rest),
    returning (T, N, ...); ``hoisted`` says whether a trunk was split off."""
    trunk, rest = split_at_first_dropout(model)

    @tf.function
    def fn(v):
        if trunk is not None:
            v = trunk(v, training=False)
        out = rest(tile_passes(v, passes), training=training)
        return tf.reshape(out, [passes, rows, *out.shape[1:]])

    return fn, trunk is not None


def baselines(model, x, passes: int = T) -> dict:
    """``{"naive", "tiled", "floor"}``: zero-argument callables, each returning numpy on the host
    (the floor's output is shaped (T, N, ...), pass-major like mcdrop's samples)."""
    xt = tf.constant(x)
    rows = x.shape[0]

    def naive():
        return [model(xt, training=True).numpy() for _ in range(passes)]

    @tf.function
    def tiled_fn(v):
        out = model(tile_passes(v, passes), training=True)
        return tf.reshape(out, [passes, rows, *out.shape[1:]])

    floor_fn, hoisted = split_passes(model, rows, passes, training=False)

    return {"naive": naive, "tiled": lambda: tiled_fn(xt).numpy(), "floor": lambda: floor_fn(xt).numpy(),
            "hoisted": hoisted}

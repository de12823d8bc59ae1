"""GPU benchmark: MC dropout passes per second for a ResNet-style CNN at T = 100.

Run: ``.venv/bin/python benchmarks/gpu.py`` on a machine with a GPU. Without one it says so and
runs on the CPU at a small size (the figures then only check that the script works).

The model is a ResNet-style classifier (a convolution stem, residual stages of two 3x3
convolutions with batch normalisation and a projected shortcut when the stage downsamples, global
average pooling) with dropout in the head only, the common MC dropout set-up for images. The
engine runs the convolutional trunk once per image and only the head T times, so the figure to
compare with is the deterministic floor of that same work: one compiled forward pass of the
trunk, then one of the head over the T-times tiled features (as in ``benchmarks/engine.py``).

Printed: passes per second (T passes over the whole batch, per second), image-passes per second,
and the engine's time over the floor's (target <= 1.2x). Best of several repeats.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mcdrop  # noqa: E402
from engine import interleaved  # noqa: E402  (benchmarks/engine.py: the same timing in both scripts)

T = 100
L = keras.layers


def residual_stage(x, width, blocks, downsample):
    for b in range(blocks):
        stride = 2 if downsample and b == 0 else 1
        shortcut = x
        y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        y = L.Activation("relu")(L.BatchNormalization()(y))
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != width:
            shortcut = L.BatchNormalization()(L.Conv2D(width, 1, strides=stride, use_bias=False)(shortcut))
        x = L.Activation("relu")(L.Add()([y, shortcut]))
    return x


def resnet(image, widths, blocks, classes=10):
    """(model, trunk, deterministic head): the head's layers are the model's, without dropout."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(image)
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(widths[0], 3, padding="same", use_bias=False)(inputs)))
    for i, width in enumerate(widths):
        x = residual_stage(x, width, blocks, downsample=i > 0)
    features = L.GlobalAveragePooling2D()(x)
    dense1, dense2 = L.Dense(256, activation="relu"), L.Dense(classes, activation="softmax")
    outputs = dense2(L.Dropout(0.5)(dense1(L.Dropout(0.5)(features))))
    model = keras.Model(inputs, outputs)
    trunk = keras.Model(inputs, features)
    head = keras.Sequential([keras.Input((widths[-1],)), dense1, dense2])
    return model, trunk, head


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="images per batch")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        print(f"GPU: {[tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]}")
        rows, widths, blocks = args.rows or 512, (64, 128, 256), 2
    else:
        print("No GPU found: running on the CPU at a small size (64 images, widths 16-32-64, one block "
              "per stage). These figures only show that the script runs; run it on a GPU machine.")
        rows, widths, blocks = args.rows or 64, (16, 32, 64), 1
    model, trunk, head = resnet((32, 32, 3), widths, blocks)
    x = np.random.default_rng(0).standard_normal((rows, 32, 32, 3)).astype("float32")
    xt = tf.constant(x)

    @tf.function
    def floor_fn(v):
        return head(tf.tile(trunk(v, training=False), [T, 1]), training=False)

    engine = mcdrop.MCDropout(model, num_samples=T, seed=0, verbose=0, batch_size=rows)
    times = interleaved({"floor": lambda: floor_fn(xt).numpy(), "engine": lambda: engine.predict(x)},
                        args.repeats)
    t_floor, t_engine = times["floor"], times["engine"]
    ratio = t_engine / t_floor
    print(f"ResNet-style CNN {len(widths)} stages x {blocks} block(s), widths {widths}, 32x32x3, "
          f"N={rows}, T={T}, {model.count_params():,} parameters")
    print(f"  floor (trunk once + T head passes)   {t_floor * 1e3:9.1f} ms")
    print(f"  mcdrop.MCDropout.predict             {t_engine * 1e3:9.1f} ms")
    print(f"  passes per second                    {T / t_engine:9.1f}   (each pass: all {rows} images)")
    print(f"  image-passes per second              {rows * T / t_engine:9,.0f}")
    print(f"  ratio to the deterministic floor     {ratio:9.2f}x  (target <= 1.2x)  "
          f"{'OK' if ratio <= 1.2 else 'MISSED'}")


if __name__ == "__main__":
    main()

"""GPU benchmark: MC dropout on a ResNet-style CNN at T = 100, with the ratios of ``benchmarks/engine.py``.

Run: ``.venv/bin/python benchmarks/gpu.py`` on a machine with a GPU. Without one it says so and
runs on the CPU at a small size (the figures then only check that the script works).

The model is a ResNet-style classifier (a convolution stem, residual stages of two 3x3
convolutions with batch normalisation and a projected shortcut when the stage downsamples, global
average pooling) with dropout in the head only, the common MC dropout set-up for images. The
candidates are those of ``benchmarks/engine.py`` (``benchmarks/_workloads.py`` builds them from the
model): the naive eager loop, the tiled ``training=True`` function, the true floor (here the
convolutional trunk once, then the head over the T-times-tiled features, deterministically) and
``MCDropout.predict``. ``--workloads`` adds the engine benchmark's MLP, CNN, LSTM and transformer
(all of them by default on a GPU).

Printed: every ratio of ``benchmarks/engine.py`` (mcdrop / floor, target <= 1.15x; mcdrop / tiled;
speed-up over the naive loop), passes per second and image-passes per second. Best of several
repeats, the candidates interleaved. ``--json PATH`` writes the figures and the machine.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _workloads import WORKLOADS, Workload, finish, machine  # noqa: E402

from engine import measure  # noqa: E402  (benchmarks/engine.py: the same candidates and ratios)

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


def resnet(rows, image, widths, blocks, classes=10) -> Workload:
    """The ResNet-style classifier, dropout in the head only, and a fixed input of ``rows`` images."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(image)
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(widths[0], 3, padding="same", use_bias=False)(inputs)))
    for i, width in enumerate(widths):
        x = residual_stage(x, width, blocks, downsample=i > 0)
    features = L.GlobalAveragePooling2D()(x)
    hidden = L.Dense(256, activation="relu")(L.Dropout(0.5)(features))
    outputs = L.Dense(classes, activation="softmax")(L.Dropout(0.5)(hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).standard_normal((rows, *image)).astype("float32")
    name = (f"ResNet-style CNN {len(widths)} stages x {blocks} block(s), widths {widths}, "
            f"{'x'.join(map(str, image))}, {model.count_params():,} parameters")
    return Workload(name, "resnet", model, x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="images per batch")
    parser.add_argument("--workloads", nargs="*", choices=list(WORKLOADS), default=None, metavar="NAME",
                        help=f"also run these of benchmarks/engine.py ({', '.join(WORKLOADS)}); "
                             "default: all on a GPU, none on the CPU")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the machine to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"argument --repeats: expected an integer >= 1, received {args.repeats}")
    if args.rows is not None and args.rows < 1:
        parser.error(f"argument --rows: expected an integer >= 1, received {args.rows}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: no such folder for {args.json!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        print(f"GPU: {[tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]}")
        rows, widths, blocks = args.rows or 512, (64, 128, 256), 2
        extra = list(WORKLOADS) if args.workloads is None else args.workloads
    else:
        print("No GPU found: running on the CPU at a small size (64 images, widths 16-32-64, one block "
              "per stage). These figures only show that the script runs; run it on a GPU machine.")
        rows, widths, blocks = args.rows or 64, (16, 32, 64), 1
        extra = args.workloads or []
    info = machine()
    print(f"CPU: {info['cpu']}, load average {info['load_average']}, tensorflow {info['tensorflow']}")
    results = {"machine": info, "gpus": [g.name for g in gpus], "repeats": args.repeats, "workloads": {}}

    figures = measure(resnet(rows, (32, 32, 3), widths, blocks), args.repeats, passes=T)
    seconds = figures["ms"]["mcdrop"] / 1e3
    print(f"  passes per second          {T / seconds:9.1f}   (each pass: all {rows} images)")
    print(f"  image-passes per second    {rows * T / seconds:9,.0f}")
    results["workloads"]["resnet"] = figures
    for key in extra:
        results["workloads"][key] = measure(WORKLOADS[key](), args.repeats)
    return finish(results, args.json)


if __name__ == "__main__":
    main()

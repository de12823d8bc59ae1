"""Heteroscedastic regression on scikit-learn's diabetes data: aleatoric vs epistemic uncertainty.

The network predicts, for each patient, a Gaussian over the disease-progression score: its last layer
has two units, a mean and a log-variance, and it is trained by Gaussian negative log-likelihood
(Kendall & Gal 2017). Dropout stays on at prediction time, so
``mcdrop.MCDropout(model, task="regression", heteroscedastic="log_variance")`` returns, per patient,

* aleatoric variance — the mean over passes of the predicted variances (noise in the data),
* epistemic variance — the variance over passes of the predicted means (the model's ignorance),
* their sum, the variance of the predictive mixture, whose quantiles give the intervals.

The script prints :func:`mcdrop.evaluate` on the test split (RMSE, mixture NLL, CRPS, interval
coverage, ...) and plots (``uncertainty.png``) the two kinds per test patient, and both along a line
that leaves the data — moving body-mass index beyond anything seen in training, where epistemic
uncertainty should grow while aleatoric need not. It also writes the 95% prediction intervals
(``intervals.png``), ``report.html`` and ``metrics.json`` to ``--out``.

Usage::

    python examples/regression_diabetes.py                 # about half a minute on 2 CPU cores
    python examples/regression_diabetes.py --fast          # a few seconds (also MCDROP_FAST=1)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

BMI = 2  # column of body-mass index in load_diabetes' features


def settings(fast: bool) -> dict:
    if fast:
        return dict(epochs=10, num_samples=10)
    return dict(epochs=150, num_samples=100)


def load_split(seed: int):
    """Standardised features and target (train statistics); 300 patients to train, 142 to test."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, train_size=300, random_state=seed)
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    y_mu, y_sd = y_train.mean(), y_train.std()

    def xs(a):
        return ((a - mu) / sd).astype(np.float32)

    def ys(a):
        return ((a - y_mu) / y_sd).astype(np.float32)

    return xs(x_train), ys(y_train), xs(x_test), ys(y_test), float(y_sd)


def gaussian_nll_loss(y_true, output):
    """Per-row Gaussian NLL of a (mean, log-variance) output, constant dropped."""
    from keras import ops

    mean, log_var = output[:, :1], output[:, 1:]
    log_var = ops.clip(log_var, -10.0, 10.0)
    y_true = ops.reshape(ops.cast(y_true, mean.dtype), ops.shape(mean))
    return ops.mean(0.5 * (log_var + ops.square(y_true - mean) * ops.exp(-log_var)), axis=-1)


def build_model(num_features: int):
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((num_features,)),
        layers.Dense(64, activation="relu"), layers.Dropout(0.2),
        layers.Dense(64, activation="relu"), layers.Dropout(0.2),
        layers.Dense(2),  # mean and log-variance halves
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=gaussian_nll_loss)
    return model


def run(*, fast: bool = False, seed: int = 0, out: Path | None = None) -> dict:
    import keras

    import mcdrop
    from mcdrop.io import save_json, staged_directory

    cfg = settings(fast)
    x_train, y_train, x_test, y_test, y_scale = load_split(seed)
    keras.utils.set_random_seed(seed)
    model = build_model(x_train.shape[1])
    model.fit(x_train, y_train, epochs=cfg["epochs"], batch_size=32, verbose=0)

    mc = mcdrop.MCDropout(model, num_samples=cfg["num_samples"], seed=seed, verbose=0,
                          task="regression", heteroscedastic="log_variance")
    pred = mc.predict(x_test)  # regression keeps the per-pass means and variances: the exact mixture
    report = mcdrop.evaluate(pred, y_test)
    print(report)

    aleatoric = np.sqrt(pred.aleatoric_variance[:, 0])
    epistemic = np.sqrt(pred.epistemic_variance[:, 0])
    print(f"\nin units of the target's standard deviation ({y_scale:.1f} points of disease progression):")
    print(f"  mean aleatoric std {aleatoric.mean():.3f}, mean epistemic std {epistemic.mean():.3f}")

    # leave the data: every feature at its training mean, body-mass index swept to 6 standard deviations
    sweep = np.linspace(-6.0, 6.0, 121, dtype=np.float32)
    probe = np.zeros((sweep.size, x_train.shape[1]), np.float32)
    probe[:, BMI] = sweep
    along = mc.predict(probe)
    seen = (float(x_train[:, BMI].min()), float(x_train[:, BMI].max()))
    inside = (sweep >= seen[0]) & (sweep <= seen[1])
    epi_line = np.sqrt(along.epistemic_variance[:, 0])
    ale_line = np.sqrt(along.aleatoric_variance[:, 0])
    print(f"  along body-mass index: epistemic std {epi_line[inside].mean():.3f} inside the training range, "
          f"{epi_line[~inside].mean():.3f} outside; aleatoric std {ale_line[inside].mean():.3f} inside, "
          f"{ale_line[~inside].mean():.3f} outside")

    results = {
        "seed": seed, "fast": fast, "metrics": report.to_dict(),
        "mean_aleatoric_std": float(aleatoric.mean()), "mean_epistemic_std": float(epistemic.mean()),
        "bmi_sweep": {"bmi": sweep.tolist(), "epistemic_std": epi_line.tolist(), "aleatoric_std": ale_line.tolist(),
                      "training_range": list(seen)},
        "epistemic_std_inside": float(epi_line[inside].mean()),
        "epistemic_std_outside": float(epi_line[~inside].mean()),
    }
    if out is not None:
        figures = _figures(pred, y_test, x_test, sweep, along, seen)
        with staged_directory(out) as stage:
            for name, fig in figures.items():
                fig.savefig(stage / name, dpi=100)
            report.to_html(stage / "report.html")
            save_json(stage / "metrics.json", results)
        print(f"\nwrote {out}/uncertainty.png, intervals.png, report.html and metrics.json")
    return results


def _figures(pred, y_test, x_test, sweep, along, seen):
    from matplotlib.figure import Figure

    from mcdrop.plotting import PredictionIntervalDisplay, RegressionCalibrationDisplay

    aleatoric = np.sqrt(pred.aleatoric_variance[:, 0])
    epistemic = np.sqrt(pred.epistemic_variance[:, 0])
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.scatter(aleatoric, epistemic, s=14, c=np.abs(pred.mean[:, 0] - y_test), cmap="viridis")
    top = max(aleatoric.max(), epistemic.max()) * 1.05
    ax1.plot([0, top], [0, top], "--", color="gray", lw=1)
    ax1.set_xlabel("aleatoric std (predicted noise)")
    ax1.set_ylabel("epistemic std (spread of the pass means)")
    ax1.set_title("Test patients (colour: absolute error)")

    order = np.argsort(x_test[:, BMI])
    bmi = x_test[order, BMI]
    mean = pred.mean[order, 0]
    total = pred.std[order, 0]
    ax2.fill_between(bmi, mean - 2 * total, mean + 2 * total, color="#c44e52", alpha=0.25,
                     label="±2 total std (aleatoric + epistemic)")
    ax2.fill_between(bmi, mean - 2 * np.sqrt(pred.aleatoric_variance[order, 0]),
                     mean + 2 * np.sqrt(pred.aleatoric_variance[order, 0]), color="#4c72b0", alpha=0.35,
                     label="±2 aleatoric std")
    ax2.scatter(bmi, y_test[order], s=8, color="black", label="truth")
    ax2.set_xlabel("body-mass index (standardised)")
    ax2.set_ylabel("disease progression (standardised)")
    ax2.set_title("Test patients by body-mass index")
    ax2.legend(fontsize="small")

    ax3.plot(sweep, np.sqrt(along.epistemic_variance[:, 0]), color="#c44e52", label="epistemic std")
    ax3.plot(sweep, np.sqrt(along.aleatoric_variance[:, 0]), color="#4c72b0", label="aleatoric std")
    ax3.axvspan(*seen, color="gray", alpha=0.15, label="training range")
    ax3.set_xlabel("body-mass index (standardised), other features at their mean")
    ax3.set_ylabel("std (standardised units)")
    ax3.set_title("Leaving the data")
    ax3.legend(fontsize="small")

    fig2 = Figure(figsize=(11, 4.5), layout="constrained")
    bx1, bx2 = fig2.subplots(1, 2)
    PredictionIntervalDisplay.from_predictions(y_test, pred, level=0.95, ax=bx1)
    RegressionCalibrationDisplay.from_predictions(y_test, pred, ax=bx2)
    return {"uncertainty.png": fig, "intervals.png": fig2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("MCDROP_FAST") == "1",
                        help="a few epochs and passes: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("out/regression_diabetes"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(fast=args.fast, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

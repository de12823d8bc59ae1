"""Time the vectorised metrics on 1,000,000 rows x 10 classes (a script, not a test).

    .venv/bin/python benchmarks/metrics.py [--rows 1000000] [--classes 10] [--repeat 3]

Prints the best of ``--repeat`` wall-clock times per metric. Input validation (checking that the rows
are probabilities) is included, as a user calling the metric would pay for it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from mcdrop import metrics
    from mcdrop.calibration import TemperatureScaling

    rng = np.random.default_rng(0)
    n, c = args.rows, args.classes
    logits = rng.normal(size=(n, c)) * 2.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    u_in, u_out = rng.gamma(2.0, 0.2, size=n // 2), rng.gamma(3.0, 0.3, size=n // 2)
    y_reg = rng.normal(size=n)
    samples = rng.normal(size=(30, n // 10))

    cases = {
        "negative_log_likelihood": lambda: metrics.negative_log_likelihood(labels, probs),
        "brier_score": lambda: metrics.brier_score(labels, probs),
        "expected_calibration_error (uniform)": lambda: metrics.expected_calibration_error(labels, probs),
        "expected_calibration_error (quantile)": lambda: metrics.expected_calibration_error(
            labels, probs, strategy="quantile"),
        "classwise_calibration_error": lambda: metrics.classwise_calibration_error(labels, probs),
        "reliability_curve": lambda: metrics.reliability_curve(labels, probs),
        "aurc": lambda: metrics.aurc(labels, probs),
        "ood_auroc (500k + 500k)": lambda: metrics.ood_auroc(u_in, u_out),
        "crps_gaussian": lambda: metrics.crps_gaussian(y_reg, np.zeros(n), np.ones(n)),
        f"crps_samples (T=30, N={n // 10})": lambda: metrics.crps_samples(y_reg[: n // 10], samples),
        f"miscalibration_area (T=30, N={n // 10})": lambda: metrics.miscalibration_area(y_reg[: n // 10], samples),
    }
    print(f"mcdrop metrics on {n:,} rows x {c} classes, best of {args.repeat}")
    for name, fn in cases.items():
        print(f"  {name:<44s} {best_time(fn, args.repeat) * 1000:9.1f} ms")

    mc_logits = rng.normal(size=(20, 50_000, c)) * 2.0
    mc_labels = rng.integers(0, c, size=50_000)
    seconds = best_time(lambda: TemperatureScaling().fit(mc_logits, mc_labels), 1)
    print(f"  {'TemperatureScaling.fit (T=20, N=50,000)':<44s} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()

"""The main demo job: where Monte Carlo dropout helps on a small image classifier, and where it does not.

``mcdrop demo`` (and ``make demo``) runs :func:`run`:

1. trains a small dropout CNN on scikit-learn's bundled 8×8 digits, classes 0–7 only
   (digits 8 and 9 are held out of training to serve as out-of-distribution inputs);
2. compares the deterministic network, MC dropout, and MC dropout followed by
   temperature scaling fitted pass by pass on a validation split (the guide's recipe) on
   the test split: accuracy, NLL, Brier score, ECE and AURC;
3. detects two shifts — the held-out digits, and the test digits inverted — by predictive
   entropy (deterministic and MC) and by mutual information, scored by AUROC, AUPR and FPR
   at 95% TPR;
4. picks the next batch to label from an unlabeled pool with BALD (top-k) and
   BatchBALD (Kirsch et al., 2019), beside a random batch, and again from the pool with
   near-copies of its most uncertain images; reports how many classes (or distinct images)
   each batch covers and a sampled estimate of its joint mutual information with the model;
5. says under each table, in a sentence computed from its numbers, what it shows;
6. writes ``report.html`` (self-contained, figures embedded), ``metrics.json`` and
   the PNG figures to the output folder, all or nothing.

Everything runs offline on a CPU in about a minute; ``fast=True`` trains a few
epochs with few passes for the tests.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from mcdrop._text import format_table
from mcdrop._validation import check_int

__all__ = ["run", "format_results", "load_digits_split", "build_model", "joint_mutual_information_estimate",
           "IN_CLASSES", "OOD_CLASSES"]

#: Digit classes the model is trained on.
IN_CLASSES = tuple(range(8))
#: Digit classes held out of training: the out-of-distribution inputs.
OOD_CLASSES = (8, 9)
#: Labeled training images: few, so that the network makes mistakes worth flagging.
TRAIN_SIZE = 200
#: Validation images, for fitting the temperature.
VAL_SIZE = 400
#: Unlabeled pool the next batch is picked from.
POOL_SIZE = 200

_MODELS = {"deterministic": "deterministic", "mc_dropout": "MC dropout", "mc_temperature": "MC + temperature"}
_METRICS = {"accuracy": "accuracy", "nll": "NLL", "brier": "Brier", "ece": "ECE", "aurc": "AURC"}
_OOD_SCORES = {
    "deterministic_entropy": "deterministic entropy",
    "mc_entropy": "MC entropy",
    "mc_mutual_information": "MC mutual information",
}
_SELECTORS = {"random": "random", "bald": "BALD (top-k)", "batch_bald": "BatchBALD"}
FIGURES = ("reliability.png", "risk_coverage.png", "uncertainty.png", "selection.png")


# --------------------------------------------------------------------------- data and model


def load_digits_split(seed: int = 0, *, train_size: int = TRAIN_SIZE) -> dict[str, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8, 1) float32 images in [0, 1], split for the demo.

    Classes 0–7 (1,443 images) are split, stratified, into train (``train_size``, 200 by
    default), validation (400), pool (200) and test (the rest, 643 by default); classes 8
    and 9 form the out-of-distribution set (354).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    inside = np.isin(labels, IN_CLASSES)
    x, y = images[inside], labels[inside]
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=train_size, stratify=y,
                                                          random_state=seed)
    x_val, x_rest, y_val, y_rest = train_test_split(x_rest, y_rest, train_size=VAL_SIZE, stratify=y_rest,
                                                    random_state=seed)
    x_pool, x_test, y_pool, y_test = train_test_split(x_rest, y_rest, train_size=POOL_SIZE, stratify=y_rest,
                                                      random_state=seed)
    return {
        "x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
        "x_pool": x_pool, "y_pool": y_pool, "x_test": x_test, "y_test": y_test,
        "x_ood": images[~inside], "y_ood": labels[~inside],
    }


def build_model(num_classes: int = len(IN_CLASSES)):
    """A small CNN for 8×8 digits with dropout after the convolutions and in the head."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


# --------------------------------------------------------------------------- the job


def run(out=None, *, fast: bool = False, seed: int = 0, progress: bool = True,
        epochs: int | None = None, num_samples: int | None = None, k: int | None = None) -> dict[str, Any]:
    """Run the demo; write its files to folder ``out`` (if given) and return the results.

    Parameters
    ----------
    out : str or path-like, optional
        Folder for ``report.html``, ``metrics.json`` and the PNG figures. Created if
        missing; files are written to a staging folder and moved in only when all are
        written.
    fast : bool, default False
        8 epochs, T = 10 passes and a batch of 5 (for tests) instead of 200 epochs,
        T = 50 and a batch of 10.
    seed : int, default 0
        Seeds the split, the weights, the training order and the dropout masks.
    progress : bool, default True
        Show a progress bar on stderr.
    epochs, num_samples, k : int, optional
        Override the training epochs, the number of MC passes and the batch size to pick.

    Returns
    -------
    dict
        ``config``, ``comparison`` (metric by model), ``temperature``, ``ood`` (scores by
        uncertainty measure), ``selection`` (by method) and ``files`` — the content of
        ``metrics.json``.
    """
    seed = check_int(seed, "seed", minimum=0)
    epochs = check_int(epochs if epochs is not None else (8 if fast else 200), "epochs", minimum=1)
    num_samples = check_int(num_samples if num_samples is not None else (10 if fast else 50), "num_samples",
                            minimum=2)
    k = check_int(k if k is not None else (5 if fast else 10), "k", minimum=1, maximum=POOL_SIZE)
    if out is not None:  # fail before a minute of training, not after
        from mcdrop.io import check_out_folder

        out = check_out_folder(out)

    from tqdm.auto import tqdm

    # one step per epoch, then one per stage after training (see the step(...) calls in _run)
    bar = tqdm(total=epochs + 6, disable=not progress, desc="train", unit="step", leave=False)
    try:
        return _run(out, fast=fast, seed=seed, epochs=epochs, num_samples=num_samples, k=k, bar=bar)
    finally:
        bar.close()


def _run(out, *, fast, seed, epochs, num_samples, k, bar):
    import mcdrop

    def step(name):
        bar.set_description(name)
        bar.update(1)

    data = load_digits_split(seed)
    model = _train(data, seed=seed, epochs=epochs, bar=bar)
    bar.set_description("predict")
    mc = mcdrop.MCDropout(model, num_samples=num_samples, seed=seed, verbose=0)
    det, mc_pred = _predict(model, mc, data)
    step("calibrate")
    scaler, calibration_warnings, predictions = _calibrate(mc_pred, det, data)
    comparison = _comparison(predictions, data["y_test"])
    step("detect")
    ood, ood_inverted = _detection(det, mc_pred, "ood"), _detection(det, mc_pred, "inverted")
    step("select")
    selection = _selection(mc_pred["pool"], data["y_pool"], k, seed)
    selection_duplicates = _near_duplicate_selection(mc, data["x_pool"], mc_pred["pool"], k, seed)
    step("figures")
    figures = _figures(data, det, mc_pred, predictions, selection)
    step("write")
    results = {
        "config": {
            "seed": seed, "fast": bool(fast), "epochs": epochs, "num_samples": num_samples, "k": k,
            "in_classes": list(IN_CLASSES), "ood_classes": list(OOD_CLASSES),
            "sizes": {part: int(len(data[f"y_{part}"])) for part in ("train", "val", "test", "pool", "ood")},
        },
        "comparison": comparison,
        "temperature": float(scaler.temperature_),
        "calibration_warnings": calibration_warnings,
        "ood": ood,
        "ood_inverted": ood_inverted,
        "selection": selection,
        "selection_duplicates": selection_duplicates,
        "files": [],
    }
    if out is not None:
        _write(out, results, figures)
    step("done")
    return results


def _train(data: dict, *, seed: int, epochs: int, bar):
    """The digits CNN, trained on the training split (one tick of ``bar`` per epoch)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()

    class _Tick(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            bar.update(1)

    model.fit(data["x_train"], data["y_train"], epochs=epochs, batch_size=32, verbose=0, shuffle=True,
              callbacks=[_Tick()])
    return model


def _predict(model, mc, data: dict) -> tuple[dict, dict]:
    """Deterministic (one pass with dropout off) and MC predictions of the splits, and of a second shift
    where the inputs change rather than the classes: the test digits inverted."""
    from mcdrop.predictive import ClassificationPrediction

    det = {part: ClassificationPrediction.from_samples(model.predict(data[f"x_{part}"], verbose=0)[None])
           for part in ("test", "ood")}
    mc_pred = {part: mc.predict(data[f"x_{part}"], return_samples=part in ("val", "test", "pool"))
               for part in ("val", "test", "ood", "pool")}
    inverted = 1.0 - data["x_test"]
    det["inverted"] = ClassificationPrediction.from_samples(model.predict(inverted, verbose=0)[None])
    mc_pred["inverted"] = mc.predict(inverted)
    return det, mc_pred


def _calibrate(mc_pred: dict, det: dict, data: dict):
    """The guide's recipe — one temperature dividing every pass's logits, fitted on the validation split's
    passes (bounded, with a log-normal prior that holds it near 1 when the split has too few errors to
    identify it). Returns the scaler, what it warned (said beside the table), and the three test predictions
    compared."""
    import warnings

    from mcdrop.calibration import CalibrationWarning, TemperatureScaling

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        scaler = TemperatureScaling().fit(mc_pred["val"], data["y_val"])
    calibration_warnings = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    predictions = {"deterministic": det["test"], "mc_dropout": mc_pred["test"],
                   "mc_temperature": scaler.transform_prediction(mc_pred["test"])}
    return scaler, calibration_warnings, predictions


def _comparison(predictions: dict, y_test: np.ndarray) -> dict:
    from mcdrop import metrics

    return {
        name: {
            "accuracy": metrics.accuracy_score(y_test, pred),
            "nll": metrics.negative_log_likelihood(y_test, pred),
            "brier": metrics.brier_score(y_test, pred),
            "ece": metrics.expected_calibration_error(y_test, pred),
            "aurc": metrics.aurc(y_test, pred),
        }
        for name, pred in predictions.items()
    }


def _detection(det: dict, mc_pred: dict, shift: str) -> dict:
    """Out-of-distribution detection of ``shift`` against the test split: the shifted inputs should be the
    uncertain ones."""
    from mcdrop import metrics

    scores_in_out = {
        "deterministic_entropy": (det["test"].entropy, det[shift].entropy),
        "mc_entropy": (mc_pred["test"].entropy, mc_pred[shift].entropy),
        "mc_mutual_information": (mc_pred["test"].mutual_information, mc_pred[shift].mutual_information),
    }
    return {
        name: {"auroc": metrics.ood_auroc(u_in, u_out), "aupr": metrics.ood_aupr(u_in, u_out),
               "fpr_at_95_tpr": metrics.fpr_at_95_tpr(u_in, u_out)}
        for name, (u_in, u_out) in scores_in_out.items()
    }


def _selection(pool, y_pool: np.ndarray, k: int, seed: int) -> dict:
    """The next batch to label from the pool, by each of the demo's methods."""
    from mcdrop import acquisition

    selection = {}
    for method in _SELECTORS:
        indices = np.asarray(acquisition.select(pool, k, method=method, seed=seed), dtype=np.int64)
        classes = y_pool[indices]
        selection[method] = {
            "indices": indices.tolist(),
            "classes": classes.tolist(),
            "distinct_classes": int(np.unique(classes).size),
            "bald_sum": float(np.sum(pool.mutual_information[indices])),
            "joint_mutual_information": joint_mutual_information_estimate(pool.samples, indices, seed=seed),
        }
    return selection


def _write(out, results: dict, figures: dict) -> None:
    """report.html, metrics.json and the figures into ``out``, all or nothing."""
    from mcdrop.io import save_bytes, save_json, save_text, staged_directory

    results["files"] = ["report.html", "metrics.json", *figures]
    with staged_directory(out) as stage:
        for name, png in figures.items():
            save_bytes(stage / name, png)
        save_text(stage / "report.html", _html(results, figures))
        save_json(stage / "metrics.json", results)


#: In the near-duplicate pool, the pool's most uncertain images (by BALD) each appear this many times more.
DUPLICATED, COPIES = 30, 2


def _near_duplicate_selection(mc, x_pool, pool, k, seed) -> dict[str, dict[str, Any]]:
    """BALD and BatchBALD on the pool plus near-copies of its most uncertain images (pixel noise of 0.03):
    the case BatchBALD is for. Top-k BALD takes an image and its copies together; BatchBALD spreads out."""
    from mcdrop import acquisition

    rng = np.random.default_rng(seed)
    top = np.argsort(-pool.mutual_information, kind="stable")[:DUPLICATED]
    copies = [np.clip(x_pool[top] + rng.normal(0, 0.03, x_pool[top].shape), 0, 1).astype(x_pool.dtype)
              for _ in range(COPIES)]
    source = np.concatenate([np.arange(len(x_pool)), np.tile(top, COPIES)])  # the image each row copies
    dup = mc.predict(np.concatenate([x_pool, *copies]), return_samples=True)
    out = {}
    for method in ("bald", "batch_bald"):
        indices = np.asarray(acquisition.select(dup, k, method=method, seed=seed), dtype=np.int64)
        out[method] = {
            "indices": indices.tolist(),
            "distinct_images": int(np.unique(source[indices]).size),
            "bald_sum": float(np.sum(dup.mutual_information[indices])),
            "joint_mutual_information": joint_mutual_information_estimate(dup.samples, indices, seed=seed),
        }
    return out


def joint_mutual_information_estimate(samples, indices, *, num_draws: int = 10000, seed: int = 0) -> float:
    r"""Monte Carlo estimate of the joint mutual information :math:`\mathbb{I}[y_A; \omega]` of a batch.

    .. math::

        \mathbb{I}[y_A; \omega] = H[y_A] - \sum_{i \in A} \frac1T \sum_t H[p_t(\cdot \mid x_i)],
        \qquad \hat H[y_A] = -\frac1M \sum_{m=1}^M \log p(y_A^{(m)}),

    where :math:`p(y_A) = \frac1T \sum_t \prod_{i\in A} p_t(y_i \mid x_i)` and each draw
    :math:`y_A^{(m)}` picks a pass t uniformly, then every label from :math:`p_t(\cdot \mid x_i)`
    — an exact draw from the joint. The exact value
    (:func:`mcdrop.acquisition.joint_mutual_information`) enumerates :math:`C^{|A|}`
    configurations, out of reach beyond a handful of points; this costs O(M·T·|A|).

    Parameters
    ----------
    samples : ndarray of shape (T, N, C)
        Per-pass probabilities drawn with consistent masks.
    indices : array-like of int, shape (K,)
    num_draws : int, default 10000
    seed : int, default 0

    Returns
    -------
    float
        In nats (standard error about :math:`\mathrm{sd}(\log p(y_A)) / \sqrt M`).
    """
    from scipy import special

    probs = np.asarray(samples, dtype=np.float64)[:, np.asarray(indices, dtype=np.int64), :]  # (T, K, C)
    t, k, c = probs.shape
    rng = np.random.default_rng(seed)
    passes = rng.integers(0, t, size=num_draws)
    cdf = np.cumsum(probs[passes], axis=-1)  # (M, K, C)
    u = rng.random((num_draws, k, 1)) * cdf[..., -1:]
    labels = np.minimum((cdf < u).sum(axis=-1), c - 1)  # (M, K)
    # log p(y_A) = log mean_t prod_i p_t(y_i | x_i), in logs for stability
    with np.errstate(divide="ignore"):
        log_p = np.log(probs[:, np.arange(k)[None, :], labels])  # (T, M, K)
    log_joint = special.logsumexp(log_p.sum(axis=-1), axis=0) - np.log(t)  # (M,)
    joint_entropy = float(-np.mean(log_joint))
    conditional = float(special.entr(probs).sum(axis=-1).mean(axis=0).sum())
    return joint_entropy - conditional


# --------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    from mcdrop._html import png

    return png(fig, dpi=110)


def _subplots(rows: int, cols: int, **kwargs):
    """A figure and its axes without pyplot: no GUI backend, no global state, nothing to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None), layout="constrained")
    return fig, fig.subplots(rows, cols, **kwargs)


def _figures(data, det, mc_pred, predictions, selection) -> dict[str, bytes]:
    from mcdrop.plotting import ReliabilityDisplay, RiskCoverageDisplay, UncertaintyDisplay

    y_test = data["y_test"]
    figures = {}

    # reliability diagrams, with the confidence histogram under each
    fig = _subplots(1, 1, figsize=(10, 5.2))[0]
    fig.clear()
    grid = fig.add_gridspec(2, 3, height_ratios=(3, 1))
    for col, (name, pred) in enumerate(predictions.items()):
        ax = fig.add_subplot(grid[0, col])
        hist_ax = fig.add_subplot(grid[1, col], sharex=ax)
        ReliabilityDisplay.from_predictions(y_test, pred, name=_MODELS[name], ax=ax, hist_ax=hist_ax)
    figures["reliability.png"] = _png(fig)

    # risk-coverage: the error rate among the most confident fraction kept
    fig, ax = _subplots(1, 1, figsize=(6, 4.5))
    for name, pred in predictions.items():
        RiskCoverageDisplay.from_predictions(y_test, pred, name=_MODELS[name], ax=ax)
    ax.set_title("Risk-coverage on the test split")
    figures["risk_coverage.png"] = _png(fig)

    # uncertainty of in-distribution test digits vs held-out digits
    fig, axes = _subplots(1, 3, figsize=(10, 3.6))
    panels = [("deterministic", det, "entropy"), ("MC dropout", mc_pred, "entropy"),
              ("MC dropout", mc_pred, "mutual_information")]
    for ax, (label, preds, measure) in zip(axes, panels):
        UncertaintyDisplay.from_ood(preds["test"], preds["ood"], measure=measure, name=label, ax=ax)
    figures["uncertainty.png"] = _png(fig)

    # the picked batches
    rows = list(selection.items())
    k = len(rows[0][1]["indices"])
    fig, axes = _subplots(len(rows), k, figsize=(1.1 * k, 1.35 * len(rows)), squeeze=False)
    for r, (method, picked) in enumerate(rows):
        for c, (index, label) in enumerate(zip(picked["indices"], picked["classes"])):
            ax = axes[r, c]
            ax.imshow(data["x_pool"][index, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(label), fontsize=9)
        axes[r, 0].set_ylabel(_SELECTORS[method], fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Next batch to label (true class above each image)", fontsize=10)
    figures["selection.png"] = _png(fig)
    return figures


# --------------------------------------------------------------------------- text and HTML


def _ood_rows(scores: dict[str, dict[str, float]]) -> list[list[Any]]:
    return [[_OOD_SCORES[name], v["auroc"], v["aupr"], v["fpr_at_95_tpr"]] for name, v in scores.items()]


def _tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]], str]]:
    """(title, headers, rows, what the numbers say) for every table the demo prints and reports."""
    cfg = results["config"]
    comparison = [[_MODELS[name]] + [values[m] for m in _METRICS] for name, values in results["comparison"].items()]
    selection = [[_SELECTORS[name], v["distinct_classes"], v["joint_mutual_information"], v["bald_sum"],
                  " ".join(str(c) for c in v["classes"])]
                 for name, v in results["selection"].items()]
    notes = _findings(results)
    temperature = (f"temperature kept at 1: too few errors in {cfg['sizes']['val']} validation images"
                   if results["temperature"] == 1.0 else
                   f"temperature {results['temperature']:.3f} fitted per pass on {cfg['sizes']['val']} "
                   "validation images")
    tables = [
        (f"Test split, digits 0-7 ({cfg['sizes']['test']} images; T={cfg['num_samples']} passes; {temperature})",
         ["model", *_METRICS.values()], comparison, notes["comparison"]),
        (f"Out-of-distribution detection: held-out digits 8-9 ({cfg['sizes']['ood']}) vs test digits 0-7",
         ["uncertainty", "AUROC", "AUPR", "FPR@95%TPR"], _ood_rows(results["ood"]), notes["ood"]),
    ]
    if "ood_inverted" in results:
        tables.append((f"Out-of-distribution detection: the test digits inverted ({cfg['sizes']['test']}) vs "
                       "test digits 0-7", ["uncertainty", "AUROC", "AUPR", "FPR@95%TPR"],
                       _ood_rows(results["ood_inverted"]), notes["ood_inverted"]))
    tables.append((f"Next batch of {cfg['k']} from a pool of {cfg['sizes']['pool']}",
                   ["method", "classes covered", "joint MI (nats, sampled)", "sum of BALD", "true classes"],
                   selection, notes["selection"]))
    if "selection_duplicates" in results:
        dup = results["selection_duplicates"]
        tables.append((f"Next batch of {cfg['k']} from the pool with near-duplicates (its {DUPLICATED} most "
                       f"uncertain images {COPIES} more times each, with pixel noise)",
                       ["method", "distinct images", "joint MI (nats, sampled)", "sum of BALD"],
                       [[_SELECTORS[m], v["distinct_images"], v["joint_mutual_information"], v["bald_sum"]]
                        for m, v in dup.items()], notes["selection_duplicates"]))
    return tables


def _findings(results: dict[str, Any]) -> dict[str, str]:
    """One or two plain sentences per table, read off the numbers: where MC dropout helps, and where not."""
    comparison = results["comparison"]
    det, mc, ts = (comparison[k] for k in ("deterministic", "mc_dropout", "mc_temperature"))
    lower = [_METRICS[m] for m in ("nll", "brier", "ece") if mc[m] < det[m]]
    higher = [_METRICS[m] for m in ("nll", "brier", "ece") if mc[m] >= det[m]]
    text = ("Lower is better for NLL, Brier, ECE and AURC. "
            + (f"MC dropout lowers the deterministic network's {', '.join(lower)}" if lower
               else "MC dropout lowers none of NLL, Brier and ECE")
            + (f"; it does not lower its {', '.join(higher)}" if higher else "")
            + (f", and its AURC is {'lower' if mc['aurc'] < det['aurc'] else 'not lower'}. "))
    if results.get("temperature") == 1.0:
        text += "No temperature was applied (it stays 1), so MC + temperature equals MC dropout."
    elif ts["nll"] <= mc["nll"]:
        text += f"The temperature lowers MC dropout's test NLL ({mc['nll']:.4f} to {ts['nll']:.4f})."
    else:
        text += (f"The temperature does not help here: MC dropout's test NLL rises from {mc['nll']:.4f} to "
                 f"{ts['nll']:.4f}.")
    if results.get("calibration_warnings"):
        text += " The fit warned: " + " ".join(results["calibration_warnings"])

    def detection(scores, shift):
        best = max(scores, key=lambda k: scores[k]["auroc"])
        d, mi = scores["deterministic_entropy"]["auroc"], scores["mc_mutual_information"]["auroc"]
        verdict = ("MC dropout helps" if max(mi, scores["mc_entropy"]["auroc"]) > d + 0.005
                   else "MC dropout does not help")
        return (f"Higher AUROC and AUPR, lower FPR are better. On {shift}, {verdict}: MC mutual information "
                f"scores AUROC {mi:.4f} against the deterministic softmax entropy's {d:.4f}; the best detector "
                f"is {_OOD_SCORES[best]}.")

    selection = results["selection"]
    shared = len(set(selection["bald"]["indices"]) & set(selection["batch_bald"]["indices"]))
    k = len(selection["bald"]["indices"])
    pick = ("so on this pool BatchBALD buys little over top-k BALD" if shared >= k - max(1, k // 5)
            else "so BatchBALD spreads the batch where top-k BALD concentrates it")
    over = ""
    above = [_SELECTORS[m] for m, v in selection.items() if v["joint_mutual_information"] > v["bald_sum"]]
    if above:
        over = (f"; where the estimate exceeds the sum ({', '.join(above)}), which bounds the exact value, the "
                "excess is sampling error")
    dup = results.get("selection_duplicates")
    dup_note = ""
    if dup:
        b, bb = dup["bald"], dup["batch_bald"]
        dup_note = (f"Where the pool holds near-copies, top-k BALD spends its {k} labels on {b['distinct_images']} "
                    f"distinct images, BatchBALD on {bb['distinct_images']}"
                    + f" (sampled joint MI {bb['joint_mutual_information']:.4f} against "
                      f"{b['joint_mutual_information']:.4f} nats)"
                    + (": this is where BatchBALD earns its cost." if bb["distinct_images"] > b["distinct_images"]
                       else ": here it does not spread the batch either."))
    return {
        "selection_duplicates": dup_note,
        "comparison": text,
        "ood": detection(results["ood"], "unseen digit classes"),
        "ood_inverted": detection(results["ood_inverted"], "inverted digits") if "ood_inverted" in results else "",
        "selection": (f"BatchBALD keeps {shared} of BALD's {k} picks, {pick}. The joint mutual information is a "
                      "sampled (Monte Carlo) estimate of the batch's information, in nats; the sum of BALD counts "
                      "shared information once per point, so it over-states a batch's value" + over + "."),
    }


def format_results(results: dict[str, Any]) -> str:
    """The demo's results as plain-text tables (what ``mcdrop demo`` prints), each with what it shows."""
    import textwrap

    blocks = []
    for title, headers, rows, note in _tables(results):
        block = format_table(headers, rows, title=title)
        if note:
            block += "\n" + textwrap.fill(note, width=100)
        blocks.append(block)
    if results.get("files"):
        blocks.append("wrote " + ", ".join(results["files"]))
    return "\n\n".join(blocks)


#: The metric behind a column of the demo's tables: its ``direction`` says which way is better (columns
#: without one are not compared).
_COLUMN_METRICS = {"accuracy": "accuracy_score", "NLL": "negative_log_likelihood", "Brier": "brier_score",
                   "ECE": "expected_calibration_error", "AURC": "aurc", "AUROC": "ood_auroc", "AUPR": "ood_aupr",
                   "FPR@95%TPR": "fpr_at_95_tpr"}

_FIGURE_TEXT = {
    "reliability.png": ("Reliability", "Accuracy against confidence per bin, under each the share of rows per "
                        "bin (log scale when one bin holds most). On the diagonal the confidences are honest; "
                        "hatched gaps above the bars are over-confidence. Pale bars hold few rows."),
    "risk_coverage.png": ("Risk–coverage", "The error rate among the most confident share of the test split. "
                          "Lower is better; the axis is zoomed to where the curves leave 0."),
    "uncertainty.png": ("Uncertainty of test digits and held-out digits", "The further apart the two histograms, "
                        "the better the score flags the held-out digits (AUROC in each title)."),
    "selection.png": ("The batches picked", "Each row is one method's batch from the pool, the true class "
                      "above each image."),
}


def _html(results: dict[str, Any], figures: dict[str, bytes]) -> str:
    from mcdrop import _html as page
    from mcdrop._text import format_value
    from mcdrop.metrics import DIRECTIONS

    sections = []
    for title, headers, rows, note in _tables(results):
        cells = [[html.escape(format_value(v)) for v in row] for row in rows]
        best = page.best_cells(rows, [DIRECTIONS.get(_COLUMN_METRICS.get(header)) for header in headers[1:]])
        sections.append(page.Section(title, note, page.table([html.escape(h) for h in headers], cells, best=best)))
    for name, png in figures.items():
        heading, intro = _FIGURE_TEXT.get(name, (name, ""))
        sections.append(page.Section(heading, intro, page.figure(png, name)))
    cfg = results["config"]
    rows = [(key.replace("_", " "), value) for key, value in cfg.items() if key != "sizes"]
    rows += [(f"{part} images", size) for part, size in cfg["sizes"].items()]
    sections.append(page.Section("Configuration", "What this run trained and measured on.",
                                 page.key_value_table(rows)))
    provenance = [("model", "the digits CNN trained in this run"), ("passes T", cfg["num_samples"]),
                  ("seed", cfg["seed"]), ("mask mode", "consistent")]
    lead = ("A small dropout CNN trained on scikit-learn's 8×8 digits, classes 0–7; digits 8 and 9 are held out "
            "as out-of-distribution inputs, and the test digits inverted are a second shift. The best value of "
            "each column is highlighted.")
    return page.page("mcdrop demo: where Monte Carlo dropout helps, and where it does not", sections,
                     provenance=provenance, lead=lead)

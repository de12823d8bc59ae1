"""Written once with the code of commit 04d72d7 (before the prediction codec) to make
tests/data/predictions_v0: the formats today's store and `mcdrop predict` wrote."""
import dataclasses, shutil
from pathlib import Path
import numpy as np
from mcdrop import store, io, cli
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction



def main():
    """Run from the repository root with the code of commit 04d72d7 checked out (it rewrites the assets)."""
    out = Path("tests/data/predictions_v0")
    rng = np.random.default_rng(20261202)
    logits = rng.normal(size=(4, 5, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    preds = {
        "cls_samples": dataclasses.replace(ClassificationPrediction.from_samples(probs, mask="per_example", seed=7),
                                           outputs="logits"),
        "cls_ensemble": dataclasses.replace(ClassificationPrediction.from_samples(probs, seed=3), members=(1, 3)),
        "cls_plain": ClassificationPrediction.from_samples(probs, keep_samples=False),
        "reg_hetero": RegressionPrediction.from_samples(rng.normal(size=(4, 5, 2)), rng.uniform(0.1, 1, (4, 5, 2)), seed=11),
        "reg_plain": RegressionPrediction.from_samples(rng.normal(size=(4, 5, 1)), keep_samples=False,
                                                       includes_aleatoric=True),
        "reg_ensemble": dataclasses.replace(RegressionPrediction.from_samples(rng.normal(size=(4, 5, 2))), members=(2, 2)),
    }
    for name, pred in preds.items():
        folder = out / f"{name}.store"
        shutil.rmtree(folder, ignore_errors=True)
        writer = store.PredictionWriter(folder)
        writer.append(pred.subset(slice(0, 3)))
        writer.append(pred.subset(slice(3, 5)))
        writer.close()
        arrays = {**pred.to_dict(), **cli._provenance(pred)}
        arrays["model"] = np.array("model.keras")
        io.save_npz(out / f"{name}.npz", arrays)
        # the exact statistics, to compare with what is read back
        fields = {f.name: getattr(pred, f.name) for f in dataclasses.fields(pred)}
        np.savez(out / f"{name}.expected.npz", **{k: v for k, v in fields.items() if isinstance(v, np.ndarray)})


if __name__ == "__main__":
    main()

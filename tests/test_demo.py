"""The main demo job (`mcdrop demo`), end to end in its fast mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcdrop import cli, demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One fast run through the command line: its JSON on stdout and its output folder."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(["demo", "--fast", "--seed", "0", "--out", str(out), "--json"])
    assert status == 0
    return json.loads(stdout.getvalue()), out


def test_writes_report_metrics_and_figures(demo_run):
    results, out = demo_run
    expected = {"report.html", "metrics.json", *demo.FIGURES}
    assert {p.name for p in out.iterdir()} == expected
    assert sorted(results["files"]) == sorted(expected)
    for name in demo.FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(demo.FIGURES)
    assert "<script" not in html and "<pre" not in html  # no JavaScript; the configuration is a table
    assert "MC + temperature" in html and "BatchBALD" in html


def test_metrics_json_is_what_was_printed(demo_run):
    results, out = demo_run
    assert json.loads((out / "metrics.json").read_text()) == results


def test_comparison_covers_three_models_and_five_metrics(demo_run):
    results, _ = demo_run
    comparison = results["comparison"]
    assert list(comparison) == ["deterministic", "mc_dropout", "mc_temperature"]
    for name, values in comparison.items():
        assert set(values) == {"accuracy", "nll", "brier", "ece", "aurc"}
        assert 0.5 < values["accuracy"] <= 1.0, name  # 8 classes: chance is 0.125
        assert 0.0 <= values["ece"] <= 1.0 and 0.0 <= values["brier"] <= 2.0 and values["nll"] > 0.0
    assert results["temperature"] > 0.0
    # the temperature was fitted to lower the NLL of MC dropout; on the test split it must not blow up
    assert comparison["mc_temperature"]["nll"] < 1.5 * comparison["mc_dropout"]["nll"]
    # a temperature keeps every pass's predicted class; the class of the pass average can move slightly
    assert abs(comparison["mc_temperature"]["accuracy"] - comparison["mc_dropout"]["accuracy"]) < 0.02


def test_ood_and_selection(demo_run):
    results, _ = demo_run
    assert set(results["ood"]) == {"deterministic_entropy", "mc_entropy", "mc_mutual_information"}
    for name, scores in results["ood"].items():
        assert 0.5 < scores["auroc"] <= 1.0, name  # held-out digits are more uncertain than chance says
        assert 0.0 <= scores["fpr_at_95_tpr"] <= 1.0
    config = results["config"]
    assert config["k"] == 5 and config["fast"] is True
    assert config["sizes"] == {"train": 200, "val": 400, "test": 643, "pool": 200, "ood": 354}
    selection = results["selection"]
    assert list(selection) == ["random", "bald", "batch_bald"]
    for method, picked in selection.items():
        assert len(set(picked["indices"])) == 5, method
        assert all(0 <= i < 200 for i in picked["indices"])
        assert all(c in demo.IN_CLASSES for c in picked["classes"])
    # BatchBALD starts from the BALD argmax, and an informed batch beats a random one
    assert selection["batch_bald"]["indices"][0] == selection["bald"]["indices"][0]
    assert selection["batch_bald"]["joint_mutual_information"] > selection["random"]["joint_mutual_information"]


def test_table_lists_every_model_and_measure(demo_run):
    results, _ = demo_run
    text = demo.format_results(results)
    for label in ("deterministic", "MC dropout", "MC + temperature", "MC mutual information", "BatchBALD",
                  "accuracy", "NLL", "Brier", "ECE", "AURC", "AUROC"):
        assert label in text


def test_split_is_stratified_and_disjoint():
    data = demo.load_digits_split(0)
    assert set(np.unique(data["y_train"])) == set(demo.IN_CLASSES)
    assert set(np.unique(data["y_ood"])) == set(demo.OOD_CLASSES)
    assert data["x_train"].shape[1:] == (8, 8, 1) and data["x_train"].dtype == np.float32
    assert 0.0 <= data["x_test"].min() and data["x_test"].max() <= 1.0
    rows = {part: {arr.tobytes() for arr in data[f"x_{part}"]} for part in ("train", "val", "pool", "test")}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["pool"] and not rows["val"] & rows["test"]


@pytest.mark.parametrize("indices", [[0, 1, 2], [3, 4, 5, 6, 7], [9]])
def test_joint_mutual_information_estimate_matches_the_exact_value(indices):
    from mcdrop.acquisition import joint_mutual_information

    probs = np.random.default_rng(0).dirichlet(np.full(4, 0.5), size=(20, 12))
    exact = joint_mutual_information(probs, indices)
    estimate = demo.joint_mutual_information_estimate(probs, indices, num_draws=40000, seed=1)
    assert estimate == pytest.approx(exact, abs=0.02)


def test_bad_output_folder_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"argument `out`: expected a folder whose parent exists"):
        demo.run(tmp_path / "no" / "such", fast=True, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"argument `out`: expected a folder.*A file of that name exists"):
        demo.run(tmp_path / "file", fast=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_second_shift_and_near_duplicate_pool(demo_run):
    results, _ = demo_run
    assert set(results["ood_inverted"]) == {"deterministic_entropy", "mc_entropy", "mc_mutual_information"}
    for name, scores in results["ood_inverted"].items():
        assert 0.0 <= scores["auroc"] <= 1.0 and 0.0 <= scores["fpr_at_95_tpr"] <= 1.0, name
    dup = results["selection_duplicates"]
    assert list(dup) == ["bald", "batch_bald"]
    n_rows = 200 + demo.DUPLICATED * demo.COPIES
    for method, picked in dup.items():
        assert len(set(picked["indices"])) == 5 and all(0 <= i < n_rows for i in picked["indices"]), method
        assert 1 <= picked["distinct_images"] <= 5


def test_printed_tables_say_what_they_show(demo_run):
    results, _ = demo_run
    text = demo.format_results(results)
    # every table is followed by its reading, computed from the numbers above it
    assert text.count("better") >= 3
    comparison = results["comparison"]
    helped = comparison["mc_temperature"]["nll"] <= comparison["mc_dropout"]["nll"]
    assert ("The temperature does not help here" in text) is (not helped)
    assert "sampled (Monte Carlo) estimate" in text and "joint MI (nats, sampled)" in text
    for key, shift in (("ood", "unseen digit classes"), ("ood_inverted", "inverted digits")):
        scores = results[key]
        mc_best = max(scores["mc_entropy"]["auroc"], scores["mc_mutual_information"]["auroc"])
        verdict = "helps" if mc_best > scores["deterministic_entropy"]["auroc"] + 0.005 else "does not help"
        assert f"On {shift}, MC dropout {verdict}" in text
    for warning in results["calibration_warnings"]:
        assert warning in " ".join(text.split())


def test_findings_are_read_off_the_numbers():
    """The sentences change with the numbers (hand-made results, no training)."""
    ood = {"deterministic_entropy": {"auroc": 0.77, "aupr": 0.7, "fpr_at_95_tpr": 0.5},
           "mc_entropy": {"auroc": 0.94, "aupr": 0.9, "fpr_at_95_tpr": 0.2},
           "mc_mutual_information": {"auroc": 0.96, "aupr": 0.9, "fpr_at_95_tpr": 0.1}}
    row = {"accuracy": 0.9, "nll": 0.3, "brier": 0.1, "ece": 0.05, "aurc": 0.01}
    pick = {"indices": [1, 2, 3], "classes": [0, 1, 2], "distinct_classes": 3, "bald_sum": 1.0,
            "joint_mutual_information": 0.8}
    results = {
        "config": {"num_samples": 50, "k": 3, "sizes": {"test": 10, "val": 10, "ood": 10, "pool": 10}},
        "temperature": 1.2, "calibration_warnings": [],
        "comparison": {"deterministic": row, "mc_dropout": {**row, "nll": 0.25},
                       "mc_temperature": {**row, "nll": 0.2}},
        "ood": {**ood, "deterministic_entropy": {"auroc": 0.99, "aupr": 0.9, "fpr_at_95_tpr": 0.01}},
        "ood_inverted": ood,
        "selection": {"random": {**pick, "joint_mutual_information": 1.1}, "bald": pick,
                      "batch_bald": {**pick, "indices": [1, 5, 6]}},
        "selection_duplicates": {"bald": {"indices": [1, 2, 3], "distinct_images": 1, "bald_sum": 3.0,
                                          "joint_mutual_information": 1.0},
                                 "batch_bald": {"indices": [1, 4, 5], "distinct_images": 3, "bald_sum": 2.5,
                                                "joint_mutual_information": 1.5}},
        "files": [],
    }
    text = " ".join(demo.format_results(results).split())
    assert "The temperature lowers MC dropout's test NLL (0.2500 to 0.2000)." in text
    assert "On unseen digit classes, MC dropout does not help" in text
    assert "On inverted digits, MC dropout helps: MC mutual information scores AUROC 0.9600" in text
    assert "BatchBALD keeps 1 of BALD's 3 picks, so BatchBALD spreads the batch" in text
    assert "where the estimate exceeds the sum (random)" in text
    assert "top-k BALD spends its 3 labels on 1 distinct images, BatchBALD on 3" in text

"""The command line's vocabularies are the library's (issue 13 item 6): every choice list of ``mcdrop`` is
read from the module that owns it, the per-task behaviour comes from the prediction types, and building the
parser still imports no numerical code."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop import acquisition, cli, heads
from mcdrop.predictive import PREDICTION_TYPES, ClassificationPrediction, RegressionPrediction

ROOT = Path(__file__).resolve().parents[1]

#: The library's list behind each option with choices: written out here, independently of cli.CHOICES.
LIBRARY = {
    "--task": heads.TASKS,
    "--outputs": heads.OUTPUTS,
    "--heteroscedastic": heads.HETEROSCEDASTIC,
    "--stochastic": acquisition.STOCHASTIC_MODES,
}


def _options_with_choices(parser: argparse.ArgumentParser):
    """(command, flag, choices) of every option of every subcommand that has a choice list."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            if action.choices is not None and action.option_strings:
                yield command, action.option_strings[-1], action.choices


def test_every_choice_list_of_the_cli_is_the_librarys():
    seen = set()
    for command, flag, choices in _options_with_choices(cli.build_parser()):
        assert flag in LIBRARY, f"`mcdrop {command} {flag}` has a choice list the test does not know"
        assert tuple(choices) == tuple(LIBRARY[flag]), (command, flag)
        seen.add(flag)
    assert seen == set(LIBRARY)
    assert {flag: tuple(c) for flag, c in cli.CHOICES.items()} == {f: tuple(v) for f, v in LIBRARY.items()}


def test_tasks_are_the_prediction_types():
    """One TASKS (in mcdrop.heads), and one prediction type per task carrying that name."""
    import mcdrop.report as report

    assert tuple(PREDICTION_TYPES) == heads.TASKS
    assert all(PREDICTION_TYPES[task].task == task for task in heads.TASKS)
    assert report.TASKS is heads.TASKS and set(report._KINDS) == set(heads.TASKS)
    assert set(acquisition.METHODS_BY_TASK) == set(heads.TASKS)


def test_method_help_lists_every_library_method():
    text = cli.build_parser()._subparsers._group_actions[0].choices["select"].format_help()
    flat = " ".join(text.split()).replace("- ", "-")
    for method in acquisition.METHODS:
        assert method in flat, method
    assert "batch_bald (batchbald)" in flat and "predictive_variance (variance)" in flat


@pytest.mark.parametrize("task", heads.TASKS)
def test_method_task_check_follows_the_library(task):
    """Each method is accepted for a task exactly when acquisition.METHODS_BY_TASK lists it there."""
    for method in acquisition.METHODS:
        if method in acquisition.METHODS_BY_TASK[task]:
            cli._check_method_task(method, task, "--task " + task)
        else:
            with pytest.raises(cli.CommandError, match=rf"expected .* for a {task} model \(--task {task}\), "
                                                       rf"received '{method}'"):
                cli._check_method_task(method, task, "--task " + task)
    assert "random" in acquisition.METHODS_BY_TASK[task]


@pytest.mark.parametrize("argv, pattern", [
    (["predict", "m.keras", "x.npy", "--heteroscedastic", "log_var"],
     r"^mcdrop predict: error: argument --heteroscedastic: invalid choice: 'log_var' \(choose from "
     r"'log_variance', 'variance', 'std', 'softplus_std'\)"),
    (["select", "m.keras", "x.npy", "-k", "1", "--stochastic", "gumbel"],
     r"argument --stochastic: invalid choice: 'gumbel' \(choose from 'power', 'softmax', 'softrank'\)"),
    (["predict", "m.keras", "x.npy", "--outputs", "scores"], r"argument --outputs: invalid choice: 'scores'"),
])
def test_a_word_outside_the_library_is_refused_by_the_parser(capsys, argv, pattern):
    """Refused while parsing: before any file is read or TensorFlow is imported."""
    status = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert status == cli.EXIT_ERROR and "\n" not in err
    assert __import__("re").search(pattern, err), err


def test_building_the_parser_imports_no_numerical_code():
    """The choice lists are read on use: parsing a command that does not give them imports none of
    mcdrop.heads, mcdrop.predictive or mcdrop.acquisition; giving --task does."""
    code = ("import sys; from mcdrop.cli import build_parser; p = build_parser(); "
            "p.parse_args(['select', 'm.keras', 'x.npy', '-k', '1']); "
            "print(sorted(m for m in ('mcdrop.heads', 'mcdrop.predictive', 'mcdrop.acquisition', 'scipy') "
            "if m in sys.modules)); p.parse_args(['predict', 'm.keras', 'x.npy', '--task', 'regression']); "
            "print('mcdrop.heads' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def _with_task_option(task, **options):
    return argparse.Namespace(task=task, outputs=None, heteroscedastic=None, **options)


@pytest.mark.parametrize("task, flag, value", [("regression", "outputs", "logits"),
                                               ("classification", "heteroscedastic", "log_variance")])
def test_a_head_option_of_the_other_task_is_refused(task, flag, value):
    args = _with_task_option(task)
    setattr(args, flag, value)
    with pytest.raises(cli.CommandError, match=rf"argument `--{flag}`: expected no --{flag} with --task {task}"):
        cli._check_model_options(args)
    args = _with_task_option(None)
    setattr(args, flag, value)
    cli._check_model_options(args)  # no task declared: the model decides


def test_per_row_output_comes_from_the_prediction():
    p = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5], [0.4, 0.6]]])  # (T=2, N=2, C=2)
    clf = ClassificationPrediction.from_samples(p)
    rows = cli._per_row(clf)
    mean = p.mean(axis=0)
    assert rows["predicted_class"] == [0, 1] and rows["confidence"] == pytest.approx([0.6, 0.7])
    assert rows["entropy"] == pytest.approx((-(mean * np.log(mean)).sum(axis=1)).tolist())
    table = cli._rows_table(clf).splitlines()
    assert table[0].split() == ["row", "class", "confidence", "entropy", "mutual_info"]
    assert table[2].split()[:3] == ["0", "0", "0.6000"]
    reg = RegressionPrediction.from_samples(np.array([[1.0, 4.0], [3.0, 4.0]]))  # (T=2, N=2)
    assert cli._per_row(reg)["mean"] == [[2.0], [4.0]] and cli._per_row(reg)["std"] == [[1.0], [0.0]]
    assert cli._rows_table(reg).splitlines()[0].split() == ["row", "mean", "std", "epistemic_var",
                                                             "aleatoric_var"]

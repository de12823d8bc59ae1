"""The ``mcdrop`` command line: a thin layer over the public API.

Each subcommand parses its options, loads its inputs safely (:mod:`mcdrop.io`),
calls the library, and writes its outputs atomically. Any failure — a missing file,
an unreadable format, data the model cannot take, a bad option — prints one line
to stderr and exits with status 2, leaving no partial output file behind.

Every check that needs no model — options, their combinations, input paths, the
output's folder — runs before TensorFlow is imported (5 to 7 s); the task check runs
right after the model loads, before any pass over the data. On a terminal a status line
says what is happening within a second of starting (reading inputs, loading TensorFlow,
loading and tracing the model, writing the result). Error messages use the command
line's words: flags and positional names (``DATA``, ``--seed``), never the library's
parameter names.

Set ``MCDROP_TRACEBACK=1`` in the environment to see the full traceback of an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcdrop._text import format_table
from mcdrop._validation import MAX_SEED

__all__ = ["main", "build_parser", "EXIT_ERROR"]

#: Exit status of every failure.
EXIT_ERROR = 2

_EPILOGS = {
    "demo": """example:
  mcdrop demo --out demo-out
  mcdrop demo --fast --json > demo.json""",
    "predict": """example:
  mcdrop predict model.keras x_test.npy -T 50 --seed 0 --out preds.npz
  mcdrop predict model.keras rows.csv --json          # per-row statistics on stdout
  mcdrop predict model.keras pool.npy --seed 0 --ray local --out preds.npz

The .npz holds mean, variance, entropy, expected_entropy, mutual_information,
variation_ratio, predicted_class, confidence, standard_error and votes for a
classifier (mean, variance, std, epistemic_variance, aleatoric_variance and
standard_error for regression), the samples with --samples, and task,
num_samples, mask and seed.""",
    "evaluate": """example:
  mcdrop evaluate preds.npz y_test.npy --out report/
  mcdrop evaluate probs.npy labels.csv --json

PREDS is an .npz written by `mcdrop predict`, or one array of class
probabilities (N, C) or of per-pass probabilities (T, N, C).

  mcdrop evaluate preds.npz y_test.npy --ood preds_ood.npz --calibration preds_cal.npz y_cal.npy

--ood adds out-of-distribution detection (AUROC, AUPR, FPR at 95% TPR of each
uncertainty score); --calibration adds split conformal sets or intervals fitted
on held-out rows, with their coverage and size at alpha 0.1 and 0.05.""",
    "select": """example:
  mcdrop select model.keras pool.npy -k 100 --method batchbald --out indices.csv
  mcdrop select model.keras pool.npy -k 10 --method bald --json""",
}


class CommandError(Exception):
    """An error to print as one line, with exit status 2."""


class _UsageError(CommandError):
    """A usage error found by argparse; its message already names the (sub)command."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line instead of usage text and exit."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        raise _UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------- option types


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer >= 1, received {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} expects an integer >= 1, received {value}")
        return value

    return parse


def _int(name: str):
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer, received {text!r}") from None

    return parse


#: The demo seeds NumPy's legacy generator too, which takes 32-bit seeds.
MAX_DEMO_SEED = 2**32 - 1


def _seed(name: str, maximum: int):
    as_int = _int(name)

    def parse(text: str) -> int:
        value = as_int(text)
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{name} expects an integer in [0, {maximum}], received {value}")
        return value

    return parse


def _number(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects a number, received {text!r}") from None
        return value

    return parse


# --------------------------------------------------------------------------- the library's vocabularies


class _LibraryChoices(Sequence):
    """A choice list the library owns (``module.NAME``, plus the command line's own ``extra`` spellings),
    read the first time argparse looks at it: when the option is given, or for ``--help``. Building the
    parser so imports no numerical code, and the command line never keeps a copy of the library's words."""

    def __init__(self, module: str, name: str, extra: Sequence[str] = ()):
        self.module, self.name, self.extra = module, name, tuple(extra)
        self._values: tuple | None = None

    @property
    def values(self) -> tuple:
        if self._values is None:
            import importlib

            self._values = (*getattr(importlib.import_module(self.module), self.name), *self.extra)
        return self._values

    def __getitem__(self, index):
        return self.values[index]

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


class _LibraryText:
    """Help text built from the library's vocabularies when the help is shown (argparse asks for it with
    ``text % params`` after ``text.strip()``)."""

    def __init__(self, make):
        self.make = make

    def __str__(self) -> str:
        return self.make()

    def strip(self) -> str:
        return str(self).strip()

    def __mod__(self, params) -> str:
        return str(self) % params


def _listed(values: Sequence[str], last: str = "or") -> str:
    """``a, b or c``."""
    values = list(values)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} {last} {values[-1]}"


#: Every choice list of the command line, by the option that takes it; each is the library's own.
CHOICES = {
    "--task": _LibraryChoices("mcdrop.heads", "TASKS"),
    "--outputs": _LibraryChoices("mcdrop.heads", "OUTPUTS"),
    "--heteroscedastic": _LibraryChoices("mcdrop.heads", "HETEROSCEDASTIC"),
    "--stochastic": _LibraryChoices("mcdrop.acquisition", "STOCHASTIC_MODES"),
}


def _method_help() -> str:
    from mcdrop import acquisition

    aliases = {name: alias for alias, name in _METHOD_ALIASES.items()}

    def named(methods):
        return [f"{m} ({aliases[m]})" if m in aliases else m for m in methods]

    return (f"acquisition method (default: bald): {', '.join(named(acquisition.CLASSIFICATION_METHODS))}; "
            f"{_listed(named(acquisition.REGRESSION_METHODS))} for regression (the library's names, or the "
            "spellings in parentheses)")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mcdrop`` command (no TensorFlow import)."""
    from mcdrop import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars and no human-readable output (errors still print)")
    common.add_argument("--json", action="store_true",
                        help="print machine-readable JSON on stdout instead of tables")

    parser = _Parser(
        prog="mcdrop",
        description="Monte Carlo dropout uncertainty for Keras 3 models.",
        epilog="run `mcdrop COMMAND --help` for the options and an example of each command",
    )
    parser.add_argument("--version", action="version", version=f"mcdrop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                              epilog=_EPILOGS[name], formatter_class=argparse.RawDescriptionHelpFormatter)

    for add_command in (_add_demo, _add_predict, _add_evaluate, _add_select):
        add_command(add)
    return parser


def _add_demo(add) -> None:
    demo = add("demo", "Train a small dropout CNN on scikit-learn's digits and show what MC dropout buys: "
                       "calibration, out-of-distribution detection and the next batch to label.")
    demo.add_argument("--out", default="demo-out", metavar="DIR",
                      help="folder for report.html, metrics.json and the PNG figures (default: demo-out)")
    demo.add_argument("--fast", action="store_true",
                      help="a few epochs and passes: seconds instead of a minute (for tests, not for reading)")
    demo.add_argument("--seed", type=_seed("--seed", MAX_DEMO_SEED), default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_cmd_demo)


def _add_predict(add) -> None:
    predict = add("predict", "Run T stochastic passes of a model over data and save the predictive statistics.")
    predict.add_argument("model", metavar="MODEL", nargs="+", help=_MODEL_HELP)
    predict.add_argument("data", metavar="DATA", help="inputs as .npy, .npz or .csv (one row per input)")
    _add_sampling_options(predict)
    predict.add_argument("--samples", action="store_true",
                         help="also save the per-pass outputs, shape (T, N, ...)")
    predict.add_argument("--out", metavar="FILE", help="write the statistics to this .npz file (with --ray, a "
                                                       "folder: the workers write a store and Parquet rows there)")
    predict.add_argument("--ray", metavar="ADDRESS", default=None,
                         help="score on a Ray cluster (needs mcdrop[ray]): 'local' starts one on this machine, "
                              "'auto' joins a running one, or a ray:// address; results are bit-identical to "
                              "the single-process run")
    predict.add_argument("--columns", nargs="+", metavar="NAME", default=None,
                         help="with --ray and a Parquet DATA (a file or folder): the columns holding the model "
                              "inputs, in the model's input order")
    predict.add_argument("--resume", action="store_true",
                         help="with --ray and an --out folder: continue the job in that folder, skipping the "
                              "groups of rows it finished (same model, data, -T, --seed and options)")
    predict.set_defaults(func=_cmd_predict)


def _add_evaluate(add) -> None:
    evaluate = add("evaluate", "Evaluate saved predictions against labels: calibration and uncertainty quality.")
    evaluate.add_argument("preds", metavar="PREDS", help="an .npz from `mcdrop predict`, or a probabilities array")
    evaluate.add_argument("labels", metavar="LABELS", help="true labels (N,) as .npy, .npz or .csv")
    evaluate.add_argument("--out", metavar="DIR", help="write report.html and metrics.json to this folder")
    evaluate.add_argument("--ood", metavar="PREDS",
                          help="the same model's predictions on out-of-distribution inputs (as PREDS): adds the "
                               "out-of-distribution section")
    evaluate.add_argument("--calibration", nargs=2, metavar=("PREDS", "LABELS"),
                          help="predictions and labels of held-out calibration rows: adds the conformal section")
    evaluate.set_defaults(func=_cmd_evaluate)
    _add_header_option(evaluate, "LABELS")


def _add_select(add) -> None:
    select = add("select", "Pick the next inputs to label from an unlabeled pool.")
    select.add_argument("model", metavar="MODEL", nargs="+", help=_MODEL_HELP)
    select.add_argument("pool", metavar="POOL", help="the unlabeled pool as .npy, .npz or .csv")
    select.add_argument("-k", type=_positive_int("-k"), required=True, help="how many inputs to pick")
    select.add_argument("--method", default="bald", help=_LibraryText(_method_help))
    select.add_argument("--stochastic", choices=CHOICES["--stochastic"], metavar="MODE", default=None,
                        help="sample the batch in proportion to the scores instead of taking the top k, MODE one "
                             "of %(choices)s (stochastic batch acquisition; --method bald --stochastic power is "
                             "PowerBALD)")
    select.add_argument("--beta", type=_number("--beta"), default=None,
                        help="inverse temperature for --stochastic, >= 0 (default: 1)")
    _add_sampling_options(select)
    select.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="score the pool on a Ray cluster and select globally from per-group top-k "
                             "('local', 'auto' or a ray:// address); batchbald then picks among the "
                             "10*k rows of highest BALD")
    select.add_argument("--columns", nargs="+", metavar="NAME", default=None,
                        help="with --ray and a Parquet POOL: the columns holding the model inputs, in order")
    select.add_argument("--out", metavar="FILE", help="write the picked indices to this .csv file")
    select.set_defaults(func=_cmd_select)


_MODEL_HELP = ("a .keras file (also .h5, or a SavedModel folder); several MODEL files make an ensemble, "
               "-T passes each (-T 1: each runs without dropout, a deep ensemble)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-T", "--num-samples", type=_positive_int("-T"), default=50, metavar="T",
                   help="number of stochastic passes (default: 50)")
    p.add_argument("--seed", type=_seed("--seed", MAX_SEED), default=None,
                   help="seed for reproducible passes, in [0, 2**62 - 1]")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None, metavar="B",
                   help="rows per batch (default: chosen under a memory budget)")
    p.add_argument("--key", default=None, help="which array of an .npz file to read (default: the only one, or x)")
    p.add_argument("--task", choices=CHOICES["--task"], metavar="TASK",
                   help="state the task (%(choices)s) instead of detecting it from the model")
    p.add_argument("--outputs", choices=CHOICES["--outputs"], metavar="OUTPUTS",
                   help="state whether a classifier outputs probabilities or logits (%(choices)s)")
    p.add_argument("--heteroscedastic", choices=CHOICES["--heteroscedastic"], metavar="PARAM",
                   help="regression model with a Gaussian head whose second half is PARAM, one of %(choices)s "
                        "(log_variance: outputs are mean and log-variance halves)")
    p.add_argument("--unsafe", action="store_true",
                   help="allow models holding Python code (Lambda layers) and SavedModel graphs; "
                        "only for files you trust")
    p.add_argument("--allow-nonfinite-inputs", action="store_true",
                   help="accept NaN or infinite input values, for a model built to take them "
                        "(by default such rows are an error, named before the model runs)")
    _add_header_option(p)


def _add_header_option(p: argparse.ArgumentParser, what: str = "input") -> None:
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help=f"whether the first line of a .csv {what} is a header (default: only when none of "
                        "its fields is a number)")


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, or 2 on any error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported
    parser = build_parser()
    debug = os.environ.get("MCDROP_TRACEBACK", "") not in ("", "0")
    prog = "mcdrop"
    status = _Status(None, prog)
    args = None
    try:
        args = parser.parse_args(argv)
        prog = f"mcdrop {args.command}"
        status = args.status = _Status(args, prog)
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            _quiet_tensorflow_logs()
            return int(args.func(args) or 0)
    except CommandError as exc:
        status.clear()
        print(str(exc) if isinstance(exc, _UsageError) else f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): not an error of ours
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        status.clear()
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        status.clear()
        print(f"{prog}: error: {_in_cli_words(_message(exc), args)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        status.clear()


class _Status:
    """One transient status line on stderr ("mcdrop predict: loading TensorFlow…"), rewritten in place.

    Shown only where progress bars are (a terminal, no --quiet), so scripts and pipes see stderr hold
    nothing but a one-line error; cleared before any output, error or progress bar.
    """

    def __init__(self, args, prog: str):
        self.on = args is not None and _show_progress(args)
        self.prog = prog
        self.shown = False

    def __call__(self, text: str) -> None:
        if self.on:
            sys.stderr.write(f"\r\033[K{self.prog}: {text}…")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def _message(exc: BaseException) -> str:
    """One line for any exception: library errors carry their own message; others name their type."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines) if lines else ""
    if isinstance(exc, (ValueError, TypeError)) and text:
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: The library's argument names in the command line's words, by command. "DATA" stands for the
#: command's input positional (DATA for predict, POOL for select).
_CLI_WORDS = {
    "x": "DATA", "inputs": "DATA", "data": "DATA", "x_pool": "DATA", "pool": "DATA",
    "model": "MODEL", "key": "--key", "num_samples": "-T", "seed": "--seed", "batch_size": "--batch-size",
    "task": "--task", "outputs": "--outputs", "heteroscedastic": "--heteroscedastic", "unsafe": "--unsafe",
    "header": "--header", "out": "--out", "method": "--method", "k": "-k", "beta": "--beta",
    "stochastic": "--stochastic", "address": "--ray",
    "y_true": "LABELS", "labels": "LABELS", "y": "LABELS",
    "samples": "PREDS", "probs": "PREDS", "prediction": "PREDS", "prediction_or_predictions": "PREDS",
}
#: Flags that take no value (``unsafe=True`` reads ``--unsafe``).
_SWITCHES = {"--unsafe", "--header"}


def _summary(match: re.Match) -> str:
    """A short summary of an array or list printed in a message: its shape and a few values."""
    body = match.group(1) if match.lastindex else match.group(0)
    import ast

    try:
        values = np.asarray(ast.literal_eval(body))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # e.g. holds nan: keep its start
        return body[:40] + "…]"
    flat = values.ravel()
    head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat[:3].tolist())
    more = ", …" if flat.size > 3 else ""
    return f"an array of shape {values.shape} ([{head}{more}])"


def _in_cli_words(message: str, args=None) -> str:
    """A library error message in the command line's words.

    Argument names become flags or positional names (```x``` -> ```DATA```, ```seed``` -> ```--seed```),
    ``name=value`` advice becomes the flag (``unsafe=True`` -> ``--unsafe``, ``task='regression'`` ->
    ``--task regression``), and a sentence of API advice with no matching flag is dropped.
    """
    command = getattr(args, "command", None)
    words = dict(_CLI_WORDS)
    data = {"predict": "DATA", "select": "POOL"}.get(command)
    for name, word in words.items():
        if word == "DATA":
            words[name] = data or "DATA"
    if command in ("predict", "select"):  # the per-pass outputs and probabilities are the model's
        for name in ("samples", "probs", "prediction"):
            words[name] = "MODEL"

    def argument(match: re.Match) -> str:
        name, rest = match.group(1), match.group(2)
        word = words.get(name)
        return f"argument `{word}{rest}`" if word else match.group(0)

    text = re.sub(r"argument `([A-Za-z_]\w*)((?:\[[^\]]*\])?)`", argument, message)
    text = re.sub(r"argument `(--[\w-]+)`: expected None\b", r"argument `\1`: expected no \1", text)
    # "unsafe=True (--unsafe on the command line)" -> "--unsafe"
    text = re.sub(r"\b\w+=\S+ \((--[\w-]+)[^)]*? on the command line\)", r"\1", text)

    def advice(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        word = words.get(name)
        if word is None or not word.startswith("-"):
            return match.group(0)
        if value == "True":
            return word
        if value in ("False", "None"):
            return f"no {word}"
        return f"{word} {value.strip(chr(39))}"

    text = re.sub(r"\b([a-z_]\w*)=('[^']*'|True|False|None|-?\d[\w.+-]*)", advice, text)
    sentences = re.split(r"(?<=[.!?])\s+", text)
    kept = [sentences[0]] + [x for x in sentences[1:] if not re.search(r"\b[a-z_]\w*=\S", x)]
    text = " ".join(kept)
    text = re.sub(r"array\((\[[^()]*\])(?:, dtype=(\w+))?\)", _summary, text)  # never an array's repr
    text = re.sub(r"\[[-+\d.e, \[\]]{60,}\]", _summary, text)  # nor a long list of numbers
    if command in ("predict", "select") and getattr(args, "model", None):  # the model by its path, not its repr
        models = args.model if isinstance(args.model, (str, Path)) else ", ".join(map(str, args.model))
        text = re.sub(r"received <[^>]*>(?: \(of type [\w.]+\))?", f"received {models!r}", text)
    return text


def _quiet_tensorflow_logs() -> None:
    import logging

    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ runtime writes start-up notes (no CUDA driver, absl not initialised)
    straight to the stderr descriptor, before ``TF_CPP_MIN_LOG_LEVEL`` is read; the
    command line keeps stderr for its own one-line errors. An import error is still
    raised, after stderr is restored.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


# --------------------------------------------------------------------------- helpers


def _show_progress(args) -> bool:
    """Progress bars go to stderr, only when it is a terminal and --quiet is not given."""
    try:
        return not args.quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(args, table: str | None, payload: Any) -> None:
    """Print the JSON payload with --json, else the table unless --quiet."""
    if getattr(args, "status", None) is not None:
        args.status.clear()
    if args.json:
        from mcdrop.io import to_json

        print(to_json(payload))
    elif not args.quiet and table:
        print(table)


def _status(args, text: str) -> None:
    if getattr(args, "status", None) is not None:
        args.status(text)


def _check_out_file(path: str | None, suffix: str) -> Path | None:
    """Fail before any work when an output file cannot be written where asked."""
    from mcdrop import io

    if path is None:
        return None
    out = io.check_out_file(path, suffix=suffix)
    io.check_writable(out.parent, path)
    return out


def _check_out_dir(path: str | None) -> Path | None:
    from mcdrop import io

    if path is None:
        return None
    out = io.check_out_folder(path)
    io.check_writable(out.parent, path)  # the files are staged beside it
    if out.is_dir():
        io.check_writable(out, path)
    return out


def _check_inputs(args, path: str, name: str) -> None:
    """The checks of an input file that need no reading: --key fits its format."""
    if args.key is not None and Path(path).suffix.lower() in (".npy", ".csv") and Path(path).is_file():
        raise CommandError(f"Invalid value for argument `--key`: expected no --key for {name} {path!r}, "
                           f"received {args.key!r}. A {Path(path).suffix.lower()} file holds one array; "
                           "--key chooses among the arrays of an .npz file.")


def _check_exists(path: str, name: str) -> None:
    if not Path(path).exists():
        raise CommandError(f"Invalid value for argument `{name}`: expected an existing file, received {path!r}. "
                           "No such file or folder.")


#: Head options, the field of the prediction that records each, and why another task refuses it.
_HEAD_OPTIONS = (("--outputs", "outputs", " (it describes class scores)"), ("--heteroscedastic", "heteroscedastic", ""))


def _check_model_options(args) -> None:
    """Contradictory head declarations, refused before anything is loaded. A head option belongs to the
    task whose prediction records it (``outputs`` on a classification prediction, ``heteroscedastic`` on a
    regression one)."""
    if args.task is not None:  # argparse has read the library's TASKS for it, so its types are loaded
        from mcdrop.predictive import PREDICTION_TYPES

        fields = {field.name for field in dataclasses.fields(PREDICTION_TYPES[args.task])}
        for flag, field, why in _HEAD_OPTIONS:
            value = getattr(args, field)
            if value is not None and field not in fields:
                raise CommandError(f"Invalid value for argument `{flag}`: expected no {flag} with --task "
                                   f"{args.task}{why}, received {value!r}.")
    if args.heteroscedastic is not None and args.outputs is not None:
        raise CommandError("Invalid value for argument `--heteroscedastic`: expected no --heteroscedastic "
                           f"with --outputs (a Gaussian head is a regression head), received "
                           f"{args.heteroscedastic!r}.")


def _check_ray(args) -> None:
    if getattr(args, "ray", None) is None:
        return
    import importlib.util

    if not args.ray.strip():
        raise CommandError("Invalid value for argument `--ray`: expected 'local', 'auto' or a cluster address, "
                           f"received {args.ray!r}.")
    if importlib.util.find_spec("ray") is None:
        raise CommandError('--ray needs Ray, which is not installed: pip install "mcdrop[ray]".')


def _load_inputs(args, path: str, name: str) -> np.ndarray:
    from mcdrop import io

    _status(args, f"reading {name} {path}")
    x = io.load_array(path, key=args.key, name=name, header=args.header)
    if not getattr(args, "allow_nonfinite_inputs", True):
        from mcdrop._validation import check_finite_rows

        check_finite_rows([x], name, total=len(x), advice="Pass --allow-nonfinite-inputs if the model is built "
                                                          "to take them.")
    return x


def _fit_to_model(model, x: np.ndarray, from_csv: bool) -> np.ndarray:
    """Cast integer data to float for a float model; unflatten CSV rows to the model's input shape."""
    spec_shape, spec_dtype = None, None
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1:
        spec_shape = tuple(inputs[0].shape)
        spec_dtype = str(getattr(inputs[0], "dtype", "float32"))
    if x.dtype.kind in "biu" and (spec_dtype is None or "float" in spec_dtype):
        x = x.astype(spec_dtype if spec_dtype and "float" in spec_dtype else np.float32)
    elif x.dtype == np.float64 and spec_dtype == "float32":
        x = x.astype(np.float32)
    if from_csv and x.ndim == 1 and spec_shape is not None and len(spec_shape) == 2:
        x = x[:, None]  # one feature per row
    if from_csv and spec_shape is not None and x.ndim == 2 and len(spec_shape) > 2:
        inner = spec_shape[1:]
        if all(d is not None for d in inner) and int(np.prod(inner)) == x.shape[1]:
            x = x.reshape((x.shape[0], *inner))
    return x


def _make_engine(args, model, **options):
    import mcdrop

    kwargs = dict(num_samples=args.num_samples, seed=args.seed, verbose=1 if _show_progress(args) else 0)
    kwargs["allow_nonfinite_inputs"] = args.allow_nonfinite_inputs
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    kwargs.update({k: v for k, v in options.items() if v is not None})
    try:
        return mcdrop.MCDropout(model, **kwargs)
    except ValueError as exc:
        if _is_tfsm(model):
            raise CommandError(f"{_in_cli_words(_message(exc), args)} MODEL is a SavedModel folder, which Keras 3 loads as an "
                               "inference-only TFSMLayer with its dropout traced off: save the model as "
                               ".keras to use MC dropout.") from None
        raise


def _load_models(args):
    """Import TensorFlow (status shown), then load every MODEL, each in safe mode unless --unsafe (several
    make an Ensemble)."""
    from mcdrop import io

    if len(args.model) > 1 and getattr(args, "ray", None) is not None:
        raise CommandError("Invalid value for argument `--ray`: expected one MODEL, received "
                           f"{len(args.model)} (an ensemble runs in this process).")
    _status(args, "loading TensorFlow")
    _import_tensorflow_quietly()
    models = []
    for path in args.model:
        _status(args, f"loading MODEL {path}")
        models.append(io.load_model(path, unsafe=args.unsafe, name="MODEL"))
    return models


def _make_ensemble(args, models, **options):
    import mcdrop

    kwargs = dict(num_samples=args.num_samples, seed=args.seed, verbose=1 if _show_progress(args) else 0,
                  batch_size=args.batch_size)
    kwargs.update({k: v for k, v in options.items() if v is not None})
    return mcdrop.Ensemble(models, **kwargs)


def _is_tfsm(model) -> bool:
    return any(type(layer).__name__ == "TFSMLayer" for layer in getattr(model, "layers", ()))


# --------------------------------------------------------------------------- commands


def _cmd_demo(args) -> int:
    from mcdrop import demo

    out = _check_out_dir(args.out)
    _status(args, "loading TensorFlow")
    _import_tensorflow_quietly()
    if getattr(args, "status", None) is not None:
        args.status.clear()  # the demo draws its own progress
    results = demo.run(out, fast=args.fast, seed=args.seed, progress=_show_progress(args))
    _emit(args, demo.format_results(results), results)
    return 0


def _cmd_predict(args) -> int:
    from mcdrop import io

    # everything that needs no model, before TensorFlow is imported
    if args.ray is not None and args.out is not None and Path(args.out).suffix.lower() != ".npz":
        _check_model_options(args)
        _check_ray(args)
        io.check_model_path(_ray_model(args), unsafe=args.unsafe, name="MODEL")
        return _cmd_predict_stream(args)
    if args.resume or args.columns:
        flag = "--resume" if args.resume else "--columns"
        raise CommandError(f"Invalid value for argument `{flag}`: expected --ray and an --out folder with it.")
    out = _check_out_file(args.out, ".npz")
    _check_model_options(args)
    _check_ray(args)
    for path in args.model:
        io.check_model_path(path, unsafe=args.unsafe, name="MODEL")
    _check_inputs(args, args.data, "DATA")
    x = _load_inputs(args, args.data, "DATA")
    models = _load_models(args)
    model = models[0]
    x = _fit_to_model(model, x, from_csv=Path(args.data).suffix.lower() == ".csv")
    make = _make_engine if len(models) == 1 else _make_ensemble
    mc = make(args, model if len(models) == 1 else models, task=args.task, outputs=args.outputs,
              heteroscedastic=args.heteroscedastic)
    _status(args, "tracing the model")
    # None: the engine's default, which keeps the per-pass outputs for regression (its mixture needs them)
    return_samples = True if args.samples else None
    if args.ray is not None:
        from mcdrop import distributed

        pred = distributed.predict_pool(
            args.model[0], x, num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
            unsafe=args.unsafe, address=None if args.ray == "local" else args.ray, return_samples=return_samples,
            task=args.task, outputs=args.outputs, heteroscedastic=args.heteroscedastic,
            allow_nonfinite_inputs=args.allow_nonfinite_inputs, verbose=_show_progress(args))
    else:
        pred = mc.predict(x, return_samples=return_samples)
    if out is not None:
        _status(args, f"writing {out}")  # the model is shown in `mcdrop evaluate`'s provenance
        io.save_prediction(out, pred, model=", ".join(map(str, args.model)))
    summary = _prediction_summary(pred)
    if out is not None:
        summary["out"] = str(out)
    payload: dict[str, Any] = {"summary": summary}
    if out is None:
        payload["rows"] = _per_row(pred)
    table = format_table(["statistic", "value"], list(summary.items()),
                         title=f"{pred.task} prediction: {len(pred)} rows, T={pred.num_samples}")
    if out is None and not args.json:
        table += "\n\n" + _rows_table(pred)
    _emit(args, table, payload)
    return 0


def _prediction_summary(pred) -> dict[str, Any]:
    return pred.summary()


def _per_row(pred) -> dict[str, list]:
    return {name: getattr(pred, name).tolist() for name in pred.row_statistics}


#: Column headings of the per-row table, where shorter than the statistic's name.
_ROW_HEADINGS = {"predicted_class": "class", "mutual_information": "mutual_info",
                 "epistemic_variance": "epistemic_var", "aleatoric_variance": "aleatoric_var"}


def _rows_table(pred) -> str:
    """One line per row: the prediction's ``row_statistics`` (the first output of a multi-output model)."""
    columns = []
    for name in pred.row_statistics:
        values = getattr(pred, name)
        values = values[:, 0] if values.ndim == 2 else values
        columns.append(values.tolist() if values.dtype.kind in "iub" else values.astype(float).tolist())
    rows = [(i, *cells) for i, cells in enumerate(zip(*columns))]
    return format_table(["row", *(_ROW_HEADINGS.get(n, n) for n in pred.row_statistics)], rows)


def _report_provenance(args) -> dict[str, Any]:
    """The files a report came from: the model (recorded by `mcdrop predict`), PREDS and LABELS."""
    model = None
    if str(args.preds).endswith(".npz"):
        with np.load(args.preds, allow_pickle=False) as arrays:
            if "model" in arrays.files:
                model = str(arrays["model"])
    return {"model file": model, "predictions file": args.preds, "labels file": args.labels}


def _cmd_evaluate(args) -> int:
    import mcdrop
    from mcdrop import io

    out = _check_out_dir(args.out)
    _check_exists(args.preds, "PREDS")
    _check_exists(args.labels, "LABELS")
    _status(args, f"reading LABELS {args.labels}")
    y = io.load_array(args.labels, name="LABELS", header=args.header)
    _status(args, f"reading PREDS {args.preds}")
    try:
        pred = _load_prediction(args.preds)
    except ValueError as exc:  # one array is never read as regression: say how PREDS is read
        raise CommandError(f"{_message(exc)} One array as PREDS is read as class probabilities: apply a "
                           "softmax to scores or logits first, or evaluate the .npz `mcdrop predict` "
                           "writes (it records the task).") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    _status(args, "computing the metrics")
    if len(y) != len(pred):
        raise CommandError(f"Invalid value for argument `LABELS`: expected {len(pred)} labels (one per row of "
                           f"PREDS), received {len(y)}.")
    report = mcdrop.evaluate(pred, y, **_evaluate_sections(args, pred))
    if out is not None:
        _status(args, f"writing {out}")
        with io.staged_directory(out) as stage:
            report.to_html(stage / "report.html", provenance=_report_provenance(args))
            report.to_json(stage / "metrics.json")
    payload = report.to_dict()
    _emit(args, str(report), payload)
    if out is not None and not args.quiet and not args.json:
        print(f"\nwrote {out / 'report.html'} and {out / 'metrics.json'}")
    return 0


def _load_prediction(path: str, name: str = "PREDS"):
    """A prediction from an .npz of `mcdrop predict` (any version), or from an array of probabilities."""
    from mcdrop import io
    from mcdrop._validation import check_probs
    from mcdrop.predictive import ClassificationPrediction

    arrays = io.load_arrays(path, name=name)
    if "mean" in arrays:
        try:
            return io.prediction_from_npz(arrays, name=name, source=path)
        except io.InputError as exc:
            raise CommandError(str(exc)) from None
    if len(arrays) != 1:
        raise CommandError(f"Invalid value for argument `{name}`: expected an .npz written by `mcdrop predict` "
                           f"or one probabilities array, received {path!r} holding {', '.join(sorted(arrays))}.")
    (probs,) = arrays.values()
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3:
        raise CommandError(f"Invalid value for argument `{name}`: expected probabilities of shape (N, C) or "
                           f"(T, N, C), received an array of shape {probs.shape}.")
    return ClassificationPrediction.from_samples(check_probs(probs, name, ndim=3), keep_samples=False)


def _evaluate_sections(args, pred) -> dict:
    """``ood`` and ``calibration`` for :func:`mcdrop.evaluate` from --ood and --calibration, checked here so
    that errors name the flags."""
    from mcdrop import io
    from mcdrop._validation import check_labels

    options = {}
    if args.ood is not None:
        pred_ood = _load_prediction(args.ood, "--ood")
        if type(pred_ood) is not type(pred):
            raise CommandError(f"Invalid value for argument `--ood`: expected {pred.task} predictions like PREDS, "
                               f"received {pred_ood.task} predictions from {args.ood!r}.")
        options["ood"] = pred_ood
    if args.calibration is not None:
        preds_path, labels_path = args.calibration
        pred_cal = _load_prediction(preds_path, "--calibration PREDS")
        y_cal = io.load_array(labels_path, name="--calibration LABELS")
        if y_cal.ndim == 2 and y_cal.shape[1] == 1:
            y_cal = y_cal[:, 0]
        if type(pred_cal) is not type(pred) or pred_cal.mean.shape[1:] != pred.mean.shape[1:]:
            raise CommandError(f"Invalid value for argument `--calibration PREDS`: expected {pred.task} predictions "
                               f"of the shape of PREDS' rows {pred.mean.shape[1:]}, received {pred_cal.task} "
                               f"predictions of {pred_cal.mean.shape[1:]} from {preds_path!r}.")
        if len(y_cal) != len(pred_cal):
            raise CommandError(f"Invalid value for argument `--calibration LABELS`: expected {len(pred_cal)} labels "
                               f"(one per row of --calibration PREDS), received {len(y_cal)}.")
        if hasattr(pred, "num_classes"):  # class labels, checked against the classes of PREDS
            y_cal = check_labels(y_cal, "--calibration LABELS", n_classes=pred.mean.shape[1])
        options["calibration"] = (pred_cal, y_cal)
    return options


def _cmd_select(args) -> int:
    from mcdrop import acquisition, io

    # everything that needs no model, before TensorFlow is imported
    out = _check_out_file(args.out, ".csv")
    _check_stochastic(args, _METHOD_ALIASES.get(args.method, args.method))  # no import needed: first
    method = _check_method(args.method)
    _check_model_options(args)
    if args.task is not None:
        _check_method_task(method, args.task, "--task " + args.task)
    if args.ray is not None:
        _check_ray(args)
        io.check_model_path(_ray_model(args), unsafe=args.unsafe, name="MODEL")
        return _cmd_select_ray(args, out, method)
    if args.columns:
        raise CommandError("Invalid value for argument `--columns`: expected --ray with it.")
    for path in args.model:
        io.check_model_path(path, unsafe=args.unsafe, name="MODEL")
    _check_inputs(args, args.pool, "POOL")
    pool = _load_inputs(args, args.pool, "POOL")
    if args.k > len(pool):
        raise CommandError(f"Invalid value for argument `-k`: expected an integer <= {len(pool)} (the pool "
                           f"size), received {args.k}.")
    models = _load_models(args)
    model = models[0]
    pool = _fit_to_model(model, pool, from_csv=Path(args.pool).suffix.lower() == ".csv")
    make = _make_engine if len(models) == 1 else _make_ensemble
    mc = make(args, model if len(models) == 1 else models, task=args.task, outputs=args.outputs,
              heteroscedastic=args.heteroscedastic)
    _status(args, "tracing the model")
    _check_method_task(method, _model_task(mc, pool), "the model")  # right after loading, before the pool
    pred = mc.predict(pool, return_samples=True if method in _SAMPLE_METHODS else None)
    options = {"seed": args.seed}
    if method == "batch_bald":  # its progress bar follows --quiet, as the engine's does
        options["verbose"] = 1 if _show_progress(args) else 0
    if args.stochastic is not None:
        options.update(stochastic=args.stochastic, beta=1.0 if args.beta is None else args.beta)
    _status(args, f"selecting {args.k} with {method}")
    indices = np.asarray(acquisition.select(pred, args.k, method=method, **options), dtype=np.int64)
    return _emit_selection(args, out, method, indices, f"{len(pool)} pool inputs")


def _emit_selection(args, out, method, indices, of) -> int:
    from mcdrop import io

    if out is not None:
        _status(args, f"writing {out}")
        io.save_csv(out, {"rank": np.arange(len(indices)), "index": indices})
    payload = {"method": method, "k": args.k, "num_samples": args.num_samples, "indices": indices.tolist()}
    if out is not None:
        payload["out"] = str(out)
    table = format_table(["rank", "index"], list(enumerate(indices.tolist())),
                         title=f"{method}: {len(indices)} of {of}, T={args.num_samples}")
    _emit(args, table, payload)
    return 0


#: Methods that need the per-pass samples (joint entropies over passes).
_SAMPLE_METHODS = {"batch_bald"}
#: Spellings the command line accepts besides the library's own names.
_METHOD_ALIASES = {"batchbald": "batch_bald", "entropy": "max_entropy", "variance": "predictive_variance"}


def _check_method(method: str) -> str:
    """Refuse an unknown acquisition method before any model is loaded."""
    from mcdrop import acquisition

    method = _METHOD_ALIASES.get(method, method)
    known = acquisition.METHODS
    if method not in known:
        listed = ", ".join(repr(m) for m in (*known, *_METHOD_ALIASES))
        raise CommandError(f"Invalid value for argument `--method`: expected one of {listed}, received {method!r}.")
    return method


def _check_method_task(method: str, task: str | None, source: str) -> None:
    """A method for the other task's predictions (BALD for a regression model, or the reverse) is refused
    before any pass; the library says which methods take which task (``acquisition.METHODS_BY_TASK``)."""
    from mcdrop import acquisition

    if task is None:
        return
    allowed = acquisition.METHODS_BY_TASK[task]
    if method not in allowed:
        raise CommandError(f"Invalid value for argument `--method`: expected {_listed(allowed)} for a {task} "
                           f"model ({source}), received {method!r}.")


def _model_task(mc, pool: np.ndarray) -> str | None:
    """The task the engine reads from the model, found on the first pool row (which also traces the step)."""
    if mc.heads is None:
        verbose, mc.verbose = mc.verbose, 0
        try:
            mc.predict(pool[:1])
        finally:
            mc.verbose = verbose
    heads = mc.heads or ()
    return heads[0].task if len(heads) == 1 else None  # several outputs: the library checks each


def _check_stochastic(args, method: str) -> None:
    """--stochastic and --beta: their combinations with --method and each other, and --beta's range."""
    if args.stochastic is not None and method == "batch_bald":
        raise CommandError(f"Invalid value for argument `--stochastic`: expected no --stochastic with --method "
                           f"batchbald (BatchBALD picks its batch jointly), received {args.stochastic!r}.")
    if args.beta is not None:
        if args.stochastic is None:
            raise CommandError(f"Invalid value for argument `--beta`: expected --beta only with --stochastic "
                               f"(it is the sampling temperature), received {args.beta!r}.")
        if not np.isfinite(args.beta) or args.beta < 0:
            raise CommandError(f"Invalid value for argument `--beta`: expected a finite number >= 0, "
                               f"received {args.beta!r}.")


# --------------------------------------------------------------------------- Ray jobs that stream

#: The library's argument names in a streaming job's messages, as the command line spells them.
_RAY_ARGUMENTS = {"model_path": "MODEL", "data": "DATA", "out": "--out", "resume": "--resume",
                  "columns": "--columns", "num_samples": "-T", "seed": "--seed", "batch_size": "--batch-size"}


def _ray_model(args) -> str:
    """The one MODEL a Ray job loads on its workers (an ensemble runs in this process)."""
    if len(args.model) > 1:
        raise CommandError("Invalid value for argument `--ray`: expected one MODEL, received "
                           f"{len(args.model)} (an ensemble runs in this process).")
    return args.model[0]


def _ray_job(args, data_name: str, **options):
    """Run :func:`mcdrop.distributed.stream_pool` for a command, its messages in the command's words."""
    import re

    from mcdrop import distributed

    try:
        return distributed.stream_pool(
            _ray_model(args), getattr(args, data_name.lower()), num_samples=args.num_samples, seed=args.seed,
            batch_size=args.batch_size, key=args.key, unsafe=args.unsafe,
            columns=args.columns[0] if args.columns and len(args.columns) == 1 else args.columns,
            address=None if args.ray == "local" else args.ray, verbose=_show_progress(args),
            **{k: v for k, v in (("task", args.task), ("outputs", args.outputs),
                                 ("heteroscedastic", args.heteroscedastic)) if v is not None},
            allow_nonfinite_inputs=args.allow_nonfinite_inputs,
            **options)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as exc:
        names = dict(_RAY_ARGUMENTS, data=data_name)
        names.update({f"select[{m!r}]": "-k" for m in distributed.SELECTABLE})
        text = re.sub(r"argument `([\w\[\]']+)`", lambda m: f"argument `{names.get(m.group(1), m.group(1))}`",
                      _message(exc))
        text = text.replace("overwrite=True", "another --out").replace("resume=True", "--resume")
        raise CommandError(text) from None


def _cmd_predict_stream(args) -> int:
    """`predict --ray ... --out DIR`: the workers write the job folder; the driver stays flat."""
    job = _ray_job(args, "DATA", out=args.out, resume=args.resume, parquet=True,
                   return_samples=True if args.samples else None)
    summary = {"out": str(job.out), "rows": job.num_rows, "num_samples": args.num_samples,
               "groups_run": job.groups_run, "groups_skipped": job.groups_skipped}
    _emit(args, format_table(["statistic", "value"], list(summary.items()),
                             title=f"{job.num_rows} rows scored on Ray into {job.out}"), {"summary": summary})
    return 0


def _cmd_select_ray(args, out, method) -> int:
    """`select --ray`: the global top-k from per-group top-k, or BatchBALD among the top BALD rows."""
    from mcdrop import acquisition, distributed

    if args.stochastic is not None:
        raise CommandError("Invalid value for argument `--stochastic`: expected no value with --ray (it samples "
                           "from every row's score; --ray keeps only the top k).")
    if method != "batch_bald" and method not in distributed.SELECTABLE:
        raise CommandError(f"Invalid value for argument `--method`: expected one of "
                           f"{', '.join(repr(m) for m in (*distributed.SELECTABLE, 'batch_bald'))} with --ray, "
                           f"received {method!r}.")
    if method == "batch_bald":
        job = _ray_job(args, "POOL", candidates=10 * args.k)
        if args.k > job.num_rows:
            raise CommandError(f"Invalid value for argument `-k`: expected an integer <= {job.num_rows} (the pool "
                               f"size), received {args.k}.")
        picked = acquisition.batch_bald(job.candidate_samples, args.k, seed=args.seed)
        indices = job.candidates[np.asarray(picked, dtype=np.int64)]
    else:
        job = _ray_job(args, "POOL", select={method: args.k})
        indices = job.top[method]
    return _emit_selection(args, out, method, indices, f"{job.num_rows} pool inputs on Ray")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

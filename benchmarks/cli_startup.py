"""How soon the command line speaks: time to its first output on a terminal, and to an argument error
(a script, not a test).

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5]

Each figure is the median of ``--repeat`` fresh processes, measured in the same run as two baselines:
a bare Python start (``python -c pass``) and ``import tensorflow``. The command line runs on a
pseudo-terminal (``pty``) so it shows its status line as it would to a person; the clock stops at
the first byte it writes there, or at its exit for an error. Figures:

* first output of ``mcdrop predict MODEL DATA`` (a small dropout model, 24 rows);
* an argument error (``--beta`` without ``--stochastic``), a missing DATA file, and an unwritable
  ``--out``: each must be reported without importing TensorFlow, so it costs about a Python start;
* the whole ``mcdrop predict`` run, for scale.

Ratios against the baselines, not seconds, are what carry over to another machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def on_terminal(argv: list[str]) -> tuple[float, float, int, bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal: (seconds to its first byte there, seconds to exit,
    exit status, every byte it wrote there). Stdout is discarded."""
    main_fd, child_fd = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child_fd,
                            env=_env())
    os.close(child_fd)
    first, seen = None, b""
    try:
        while True:
            ready, _, _ = select.select([main_fd], [], [], 600)
            if not ready:
                break
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            if first is None:
                first = time.perf_counter() - start
            seen += chunk
    finally:
        status = proc.wait(timeout=600)
        end = time.perf_counter() - start
        os.close(main_fd)
    return (end if first is None else first), end, status, seen


def timed(argv: list[str]) -> tuple[float, float, int]:
    """(seconds to the first byte on the terminal, seconds to exit, exit status) of one fresh process."""
    return on_terminal(argv)[:3]


def median_of(argv: list[str], repeat: int, which: int) -> tuple[float, int]:
    runs = [timed(argv) for _ in range(repeat)]
    return statistics.median(r[which] for r in runs), runs[-1][2]


def unwritable_folder(folder: Path) -> str | None:
    """A folder this process cannot create files in, or None (root ignores permissions; /sys is read-only)."""
    locked = Path(folder) / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for candidate in (locked, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return str(candidate)
        os.close(fd)
        os.unlink(probe)
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="mcdrop-cli-bench-"))
    subprocess.run([sys.executable, "-c", (
        "import numpy as np, keras, sys\n"
        "keras.utils.set_random_seed(0)\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation='relu'),\n"
        "                      keras.layers.Dropout(0.5), keras.layers.Dense(3, activation='softmax')])\n"
        "m.save(sys.argv[1] + '/clf.keras')\n"
        "np.save(sys.argv[1] + '/x.npy', np.random.default_rng(0).normal(size=(24, 4)).astype('float32'))\n"
    ), str(folder)], check=True, env=_env(), capture_output=True)
    locked = unwritable_folder(folder)
    if locked is None:
        raise SystemExit("no unwritable folder on this machine")
    model, data = str(folder / "clf.keras"), str(folder / "x.npy")
    cli = [sys.executable, "-m", "mcdrop.cli"]

    python, _ = median_of([sys.executable, "-c", "pass"], args.repeat, 1)
    tf_import, _ = median_of([sys.executable, "-c", "import tensorflow"], args.repeat, 1)
    cases = {
        "first output of `mcdrop predict`": (cli + ["predict", model, data, "-T", "10"], 0, 0),
        "argument error (--beta without --stochastic)":
            (cli + ["select", model, data, "-k", "2", "--beta", "2"], 1, 2),
        "missing DATA file": (cli + ["predict", model, str(folder / "missing.npy")], 1, 2),
        "unwritable --out": (cli + ["predict", model, data, "--out", f"{locked}/p.npz"], 1, 2),
        "whole `mcdrop predict` (T=10, 24 rows)": (cli + ["predict", model, data, "-T", "10"], 1, 0),
    }
    print(f"mcdrop command line start-up on {cpu_model()} ({os.cpu_count()} CPUs), median of {args.repeat}")
    print(f"  baseline `python -c pass`:        {python:6.2f} s")
    print(f"  baseline `import tensorflow`:     {tf_import:6.2f} s")
    print(f"  {'case':<44} {'seconds':>8} {'/ python':>9} {'/ TF import':>11}")
    for name, (argv, which, expected) in cases.items():
        seconds, status = median_of(argv, args.repeat, which)
        flag = "" if status == expected else f"  (exit {status}, expected {expected})"
        print(f"  {name:<44} {seconds:8.2f} {seconds / python:9.1f} {seconds / tf_import:11.2f}{flag}")


if __name__ == "__main__":
    main()

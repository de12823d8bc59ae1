"""Progress bars on stderr for the numpy-side steps that can take a while (BatchBALD, the labeling loop).

One convention with the engine (:class:`mcdrop.MCDropout`'s ``verbose``): ``1``/``True`` always shows the
bar, ``0``/``False`` never does, ``"auto"`` shows it when stderr is a terminal. Under ``"auto"`` a bar
appears only once its step has run for :data:`AUTO_DELAY` seconds, so quick calls print nothing.
"""

from __future__ import annotations

import sys

from mcdrop._validation import check_choice

__all__ = ["VERBOSE", "AUTO_DELAY", "check_verbose", "progress"]

#: Accepted values of a ``verbose`` argument.
VERBOSE = ("auto", 0, 1, True, False)

#: Seconds an ``"auto"`` bar waits before it first draws (tqdm's ``delay``).
AUTO_DELAY = 1.0

#: Fewest seconds between two redraws (tqdm's ``mininterval``).
MIN_INTERVAL = 0.1


def check_verbose(verbose, name: str = "verbose"):
    """Return ``verbose`` if it is one of :data:`VERBOSE`."""
    return check_choice(verbose, name, VERBOSE)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(total: int | None, *, verbose, desc: str, unit: str, leave: bool = False):
    """A tqdm bar on stderr, shown as ``verbose`` asks (see the module docstring); use as a context manager."""
    from tqdm.auto import tqdm

    if verbose == "auto":
        show, delay = _is_terminal(sys.stderr), AUTO_DELAY
    else:
        show, delay = bool(verbose), 0.0
    return tqdm(total=total, disable=not show, desc=desc, unit=unit, leave=leave, delay=delay,
                mininterval=MIN_INTERVAL, file=sys.stderr, dynamic_ncols=True)

"""Plain-text tables for the command line and the demo (no dependency beyond the standard library)."""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["format_table", "format_value"]


def format_value(value: Any, digits: int = 4) -> str:
    """A number to a short string; ``None`` and NaN to ``"-"``.

    Floats get ``digits`` decimals, and more below 0.01 so that at least three significant digits show
    (0.00150, 0.00146 and 0.00148 stay apart); below 1e-6, scientific notation.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and math.isfinite(value) and abs(value) < 1e-6:
            return f"{value:.2e}"
        if value != 0 and math.isfinite(value):
            digits = max(digits, 2 - math.floor(math.log10(abs(value))))
        return f"{value:.{digits}f}"
    try:  # numpy scalars
        return format_value(value.item(), digits)
    except AttributeError:
        return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                 digits: int = 4, left: int = 1) -> str:
    """Render ``rows`` under ``headers``: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[format_value(v, digits) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(list(headers)))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells)
    return "\n".join(out)

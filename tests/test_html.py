"""The one HTML writer's helpers shared by the report and the demo."""

import math

import numpy as np
import pytest

from mcdrop import _html


def test_best_cells_marks_the_best_number_of_each_compared_column():
    rows = [["a", "x", 0.9, 0.2, None],
            ["b", "y", 0.7, 0.1, 0.3],
            ["c", "z", 0.9, math.nan, 0.4]]
    best = _html.best_cells(rows, [0, 1, -1, -1])
    assert best == [[False, True, False, False],   # ties are all best
                    [False, False, True, True],    # NaN is never best; None is skipped
                    [False, True, False, False]]
    assert _html.best_cells([["a", 0.1]], [1]) == [[False]]  # one number: nothing to compare
    assert _html.best_cells(rows, [None, None, None, None]) == [[False] * 4] * 3


def test_png_is_a_cropped_png():
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot(np.arange(3))
    data = _html.png(fig, dpi=50)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and matplotlib is not None

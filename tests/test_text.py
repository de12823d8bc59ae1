"""Numbers in the printed tables and the report: enough digits to tell close small values apart."""

import pytest

from mcdrop._text import format_table, format_value


@pytest.mark.parametrize("value, text", [
    (0.1816, "0.1816"), (0.0500, "0.0500"), (0.0015, "0.00150"), (0.00146, "0.00146"), (0.000123, "0.000123"),
    (2.5e-8, "2.50e-08"), (0.0, "0.0000"), (-0.0015, "-0.00150"), (12.0, "12.0000"), (3, "3"), (None, "-"),
    (float("nan"), "-"), (True, "yes"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_close_aurcs_stay_apart_in_a_table():
    table = format_table(["model", "AURC"], [["a", 0.00150], ["b", 0.00146], ["c", 0.00148]])
    assert [line.split()[-1] for line in table.splitlines()[2:]] == ["0.00150", "0.00146", "0.00148"]


def test_leading_columns_can_be_left_aligned():
    table = format_table(["model", "score", "auroc"], [["a", "entropy", 0.5], ["bb", "mi", 0.75]], left=2)
    assert table.splitlines() == ["model  score     auroc",
                                  "-----  -------  ------",
                                  "a      entropy  0.5000",
                                  "bb     mi       0.7500"]

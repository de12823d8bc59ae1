"""The demo's numbers in the docs come from one run: docs/demo/metrics.json, the `metrics.json` a full
`mcdrop demo` wrote. Every text block marked ``<!-- demo-output -->`` must be exactly what the demo prints
for that file, so a hand-edited or stale number fails here. To refresh after changing the demo: run
``mcdrop demo --out demo-out``, copy ``demo-out/metrics.json`` to ``docs/demo/metrics.json``, and paste
the expected text this test shows."""

import json
import re
from pathlib import Path

import pytest

from mcdrop import demo

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "docs" / "demo" / "metrics.json"
PAGES = [ROOT / "docs" / "guide.md", ROOT / "docs" / "benchmarks.md"]
MARKER = re.compile(r"<!-- demo-output -->\s*```text\n(.*?)```", re.S)


def expected() -> str:
    results = json.loads(METRICS.read_text())
    assert not results["config"]["fast"] and results["config"]["num_samples"] == 50  # a full run
    return demo.format_results({**results, "files": []}).rstrip() + "\n"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_show_the_recorded_run(page):
    blocks = MARKER.findall(page.read_text())
    assert blocks, f"{page.name} has no <!-- demo-output --> block"
    for block in blocks:
        assert block == expected(), f"{page.name} disagrees with docs/demo/metrics.json; expected:\n{expected()}"


def test_no_unmarked_copy_of_the_tables():
    """A copy of the tables outside a marked block would escape the check above."""
    for page in [*PAGES, ROOT / "README.md"]:
        text = MARKER.sub("", page.read_text())
        assert "Next batch of 10 from a pool of 200" not in text, page.name

"""The HTML report in a real browser: headless Chromium (Debian's package; `.ci/run` installs it) renders
it at a desktop's and at a phone's width; a screenshot must come out, and no element may stick out of
the page. The report itself has no JavaScript; the test injects its own measurement into a copy."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import warnings

import numpy as np
import pytest
from scipy import special

from mcdrop.calibration import CalibrationWarning, TemperatureScaling
from mcdrop.predictive import ClassificationPrediction
from mcdrop.report import evaluate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")

WIDTHS = (1280, 390)  # a desktop window, a phone

#: A probe page: the report in a frame exactly ``width`` px wide (headless Chromium will not make a window
#: narrower than 500 px), measured after load. Every element that reaches past the frame's right edge
#: without an ancestor that scrolls it inside the page is listed; the result is written into the DOM.
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="%(src)s" style="border:0;width:%(width)dpx;height:1600px"></iframe>
<script>
document.getElementById("f").addEventListener("load", function () {
  var doc = this.contentDocument, win = this.contentWindow;
  var vw = doc.documentElement.clientWidth, bad = [];
  doc.body.querySelectorAll("*").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width === 0 || (r.right <= vw + 0.5 && r.left >= -0.5)) return;
    for (var a = el.parentElement; a && a !== doc.body; a = a.parentElement) {
      var ov = win.getComputedStyle(a).overflowX;
      if (ov === "auto" || ov === "scroll" || ov === "hidden") {
        var ar = a.getBoundingClientRect();
        if (ar.right <= vw + 0.5 && ar.left >= -0.5) return;
        break;
      }
    }
    bad.push(el.tagName + "." + el.className + " right=" + Math.round(r.right));
  });
  var out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({viewport: vw, scrollWidth: doc.documentElement.scrollWidth,
    overflowing: bad, images: Array.prototype.map.call(doc.images, function (i) {
      return [i.naturalWidth, Math.round(i.getBoundingClientRect().width)]; })});
  document.body.appendChild(out);
});
</script></body></html>"""


def chromium(tmp_path, *args):
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)) * 3
    passes = np.exp(special.log_softmax(logits[None] + rng.normal(size=(5, 400, 3)), axis=-1))
    y = (rng.random((400, 1)) > np.exp(special.log_softmax(logits / 2, axis=-1)).cumsum(1)).sum(1).clip(0, 2)
    mc = ClassificationPrediction.from_samples(passes, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        scaled = TemperatureScaling().fit(mc, y).transform_prediction(mc)
    report = evaluate({"deterministic": np.exp(special.log_softmax(logits, axis=-1)), "MC dropout": mc,
                       "MC + temperature": scaled}, y)
    path = tmp_path_factory.mktemp("browser") / "report.html"
    # a long unbroken path is the usual culprit of a page wider than a phone
    report.to_html(path, provenance={"model file": "/data/experiments/" + "a_very_long_folder_name_" * 4 + "m.keras"})
    return path


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_itself_has_no_script_and_fetches_nothing(report_file):
    text = report_file.read_text()
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', text)


@pytest.mark.parametrize("width", WIDTHS)
def test_screenshot_renders(report_file, tmp_path, width):
    shot = tmp_path / f"report-{width}.png"
    chromium(tmp_path, f"--window-size={width},1600", f"--screenshot={shot}", report_file.as_uri())
    data = shot.read_bytes()
    assert png_size(data) == (width, 1600)
    assert len(data) > 20_000  # text, tables and a figure, not a blank page


def measure(page, width, tmp_path) -> dict:
    """Layout of ``page`` in a frame ``width`` px wide, measured by :data:`PROBE`."""
    probe = page.parent / f"probe-{page.stem}-{width}.html"
    probe.write_text(PROBE % {"src": page.name, "width": width})
    dom = chromium(tmp_path, "--window-size=1400,1700", "--allow-file-access-from-files",
                   "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the measurement did not run"
    measured = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert measured["viewport"] == width
    return measured


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_overflows_the_page(report_file, tmp_path, width):
    measured = measure(report_file, width, tmp_path)
    assert measured["overflowing"] == []
    assert measured["scrollWidth"] <= measured["viewport"]
    # every figure is shown, and shrunk to the column rather than cropped
    assert len(measured["images"]) == 1 + 2 * 3
    assert all(0 < shown <= measured["viewport"] for _, shown in measured["images"])


def test_probe_sees_an_overflow(tmp_path):
    """The measurement is not vacuous: an unbroken 600 px element on a phone is caught, a scrolled one is not."""
    page = tmp_path / "wide.html"
    page.write_text('<!DOCTYPE html><html><body><div style="overflow-x:auto"><div style="width:900px">scrolled'
                    '</div></div><p style="width:600px" class="wide">too wide</p></body></html>')
    measured = measure(page, 390, tmp_path)
    assert [e.split(" ")[0] for e in measured["overflowing"]] == ["P.wide"]


def test_demo_report_fits_a_phone(tmp_path):
    """The demo's page (same stylesheet, wider tables, long headings) at a phone's width, built from its
    recorded run (no training) with one stand-in figure."""
    import base64
    import json as _json
    from pathlib import Path

    from mcdrop import demo

    results = _json.loads((Path(__file__).resolve().parents[1] / "docs" / "demo" / "metrics.json").read_text())
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    page = tmp_path / "demo.html"
    page.write_text(demo._html(results, {"reliability.png": png}))
    text = page.read_text()
    assert "<script" not in text.lower() and "<th>seed</th><td>0</td>" in text
    measured = measure(page, 390, tmp_path)
    assert measured["overflowing"] == []
    assert measured["scrollWidth"] <= measured["viewport"]

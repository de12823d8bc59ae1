"""One self-contained HTML page for the reports (``mcdrop.evaluate``'s ``to_html`` and the demo): no
JavaScript, no external file, readable from a phone's width to a desktop's.

A page is a title, a provenance table and a list of :class:`Section` objects, each a heading, one or two
sentences saying what its numbers mean and which direction is better, and its body. A new section is one
more object in the list.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import math
import numbers
from importlib import metadata
from typing import Any, Iterable, Sequence

__all__ = ["Section", "page", "table", "best_cells", "figure", "png", "versions", "escape"]

escape = html.escape

#: The stylesheet: a centred column, tables that scroll inside their own box rather than widen the page,
#: images that shrink to the column, long words (paths) that wrap.
CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1140px;margin:0 auto;
 padding:1em;color:#222;line-height:1.45;overflow-wrap:break-word}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;margin:1.6em 0 .3em;border-bottom:1px solid #ddd}
p.intro{margin:.2em 0 .8em;color:#333;max-width:75ch}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0 1em}
th,td{padding:.3em .7em;border-bottom:1px solid #e3e3e3;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{background:#f4f4f8}
td.best{font-weight:bold;background:#e6f2e6}
table.kv th{text-align:left;font-weight:600;color:#444;white-space:nowrap}
table.kv td{text-align:left;overflow-wrap:anywhere}
td{font-variant-numeric:tabular-nums}
tbody td:not(:first-child){white-space:nowrap}
@media (max-width:600px){body{padding:.6em;font-size:15px}th,td{padding:.25em .4em}
 table.kv th{white-space:normal}}
details summary{cursor:pointer}
details .formula{font-family:"STIX Two Math","Cambria Math",serif;font-size:.95em;color:#333;
 padding:.2em 0 .2em .8em;max-width:40ch;text-align:left;font-weight:normal}
.dir{color:#666;font-size:.85em;white-space:nowrap}
code{font-size:.85em;color:#555}
figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}
.figs{display:flex;flex-wrap:wrap;gap:0 1.5em}.figs figure{flex:1 1 460px;max-width:560px;min-width:0}
figcaption{color:#444;font-size:.95em;margin-top:.3em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
"""


@dataclasses.dataclass(frozen=True)
class Section:
    """One part of a report page.

    Attributes
    ----------
    title : str
        The heading (plain text).
    intro : str
        One or two sentences (plain text): what the numbers mean and which direction is better.
    body : str
        The section's HTML (tables, figures), already escaped.
    """

    title: str
    intro: str
    body: str

    def render(self) -> str:
        intro = f'<p class="intro">{escape(self.intro)}</p>' if self.intro else ""
        return f"<section><h2>{escape(self.title)}</h2>{intro}{self.body}</section>"


def versions() -> dict[str, str]:
    """Installed versions of mcdrop, TensorFlow and Keras, read from the package metadata (nothing is
    imported, so a numpy-only report never loads TensorFlow)."""
    out = {}
    for label, dist in (("mcdrop", "mcdrop"), ("TensorFlow", "tensorflow"), ("Keras", "keras")):
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "mcdrop":
                from mcdrop import __version__

                out[label] = __version__
            elif dist == "tensorflow":  # CPU-only wheels are published under another name
                try:
                    out[label] = metadata.version("tensorflow-cpu")
                except metadata.PackageNotFoundError:
                    out[label] = "not installed"
            else:
                out[label] = "not installed"
    return out


def provenance_rows(extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, str]]:
    """(label, value) rows for the top of a report: the versions, the date (UTC), then ``extra``."""
    rows = [(f"{name} version", value) for name, value in versions().items()]
    rows.append(("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    rows.extend((label, str(value)) for label, value in extra if value is not None)
    return rows


def key_value_table(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of labels and values (provenance, configuration)."""
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="kv"><tbody>{body}</tbody></table></div>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, best: Sequence[Sequence[bool]] = ()) -> str:
    """An HTML table; cells are HTML already (escape plain text first). ``best[r][c]`` marks a cell of the
    value columns (every column but the first) as the best one."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    lines = []
    for r, row in enumerate(rows):
        marks = best[r] if r < len(best) else ()
        cells = [f"<td>{row[0]}</td>"] + [
            f'<td class="best">{v}</td>' if c < len(marks) and marks[c] else f"<td>{v}</td>"
            for c, v in enumerate(row[1:])]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table></div>'


def best_cells(rows: Sequence[Sequence[Any]], directions: Sequence[int | None]) -> list[list[bool]]:
    """``best`` for :func:`table` from the raw values: ``best[r][c]`` marks the best number of value column ``c``
    (``rows[r][c + 1]``), the highest where ``directions[c]`` is 1 and the lowest where it is -1. A column whose
    direction is 0 or None, or that holds fewer than two numbers, is not marked; None and NaN never are."""
    marks = [[False] * (len(row) - 1) for row in rows]
    for c, direction in enumerate(directions):
        numbers_ = [(r, row[c + 1]) for r, row in enumerate(rows) if _is_number(row[c + 1])]
        if not direction or len(numbers_) < 2:
            continue
        top = (max if direction > 0 else min)(v for _, v in numbers_)
        for r, v in numbers_:
            marks[r][c] = v == top
    return marks


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def png(fig, *, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes, cropped to its content, for :func:`figure`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """A PNG embedded as base64 with its caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def figures(items: Sequence[str]) -> str:
    """Several :func:`figure` blocks side by side where the page is wide enough, stacked where not."""
    return f'<div class="figs">{"".join(items)}</div>'


def page(title: str, sections: Sequence[Section], *, provenance: Iterable[tuple[str, Any]] = (),
         lead: str = "") -> str:
    """The whole document: title, an optional lead paragraph, provenance, then the sections in order."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if lead:
        parts.append(f'<p class="intro">{escape(lead)}</p>')
    parts.append(Section("Provenance", "Where these numbers come from.",
                         key_value_table(provenance_rows(provenance))).render())
    parts.extend(section.render() for section in sections)
    parts.append("</body></html>\n")
    return "\n".join(parts)

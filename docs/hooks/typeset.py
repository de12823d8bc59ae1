"""MkDocs hook: typeset the site's formulas as MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps each formula of the Markdown — ``$...$`` inline,
``$$...$$`` on its own lines — in ``<span class="arithmatex">\\(...\\)</span>`` or
``<div class="arithmatex">\\[...\\]</div>``. This hook replaces those by MathML from
``latex2mathml``, which browsers render natively: the site needs no JavaScript and no network to
show its mathematics. A formula the converter cannot read stays as its TeX source and is logged.

Docstrings are written in numpy style with reStructuredText maths (``.. math::`` blocks and
``:math:`...``` roles, as Sphinx and torchmetrics use); mkdocstrings passes those through as a
paragraph followed by a code block, and as a code span. The hook typesets them too, so the API
reference shows the same formulas as the guides.
"""

from __future__ import annotations

import html
import logging
import re

log = logging.getLogger("mkdocs.hooks.mathml")

_INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.S)
# docstrings: ".. math::" then an indented block (rendered as code), or ".. math:: tex" on one line
_RST_BLOCK = re.compile(
    r'<p>\.\. math::</p>\s*<div class="highlight"><pre>(?:<span></span>)?<code>(.+?)</code></pre></div>', re.S)
_RST_LINE = re.compile(r'<p>\.\. math:: (.+?)</p>', re.S)
_RST_ROLE = re.compile(r':math:<code>(.+?)</code>', re.S)


def _convert(tex: str, display: str, page) -> str | None:
    from latex2mathml.converter import convert

    try:
        return convert(html.unescape(tex).strip(), display=display)
    except Exception as exc:  # an unsupported macro: keep the TeX source, say where
        log.info("mathml: kept TeX source in %s: %s (%s)", page.file.src_path, tex.strip()[:60], exc)
        return None


def on_page_content(content: str, page, config, files) -> str:
    def block(match):
        mathml = _convert(" ".join(match.group(1).split("\n")), "block", page)
        return match.group(0) if mathml is None else f'<div class="arithmatex">{mathml}</div>'

    def inline(match):
        mathml = _convert(match.group(1), "inline", page)
        return match.group(0) if mathml is None else f'<span class="arithmatex">{mathml}</span>'

    content = _BLOCK.sub(block, content)
    content = _RST_BLOCK.sub(block, content)
    content = _RST_LINE.sub(block, content)
    content = _RST_ROLE.sub(inline, content)
    return _INLINE.sub(inline, content)

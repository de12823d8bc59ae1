"""MkDocs hook: typeset the site's formulas as MathML, and tidy reST roles, when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps each formula of the Markdown — ``$...$`` inline,
``$$...$$`` on its own lines — in ``<span class="arithmatex">\\(...\\)</span>`` or
``<div class="arithmatex">\\[...\\]</div>``. This hook replaces those by MathML from
``latex2mathml``, which browsers render natively: the site needs no JavaScript and no network to
show its mathematics. A formula the converter cannot read stays as its TeX source and is logged.

Docstrings are written in numpy style with reStructuredText maths (``.. math::`` blocks and
``:math:`...``` roles, as Sphinx and torchmetrics use); mkdocstrings passes those through as a
paragraph followed by a code block, and as a code span. The hook typesets them too, so the API
reference shows the same formulas as the guides. Cross-reference roles of those docstrings
(``:func:`name```, ``:class:`~mcdrop.X```) come through as the role's name before a code span;
the hook drops the role (and Sphinx's ``~``), leaving the code span.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata

log = logging.getLogger("mkdocs.hooks.typeset")

_INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.S)
# docstrings: ".. math::" then an indented block (rendered as code), or ".. math:: tex" on one line
_RST_BLOCK = re.compile(
    r'<p>\.\. math::</p>\s*<div class="highlight"><pre>(?:<span></span>)?<code>(.+?)</code></pre></div>', re.S)
_RST_LINE = re.compile(r'<p>\.\. math:: (.+?)</p>', re.S)
_RST_ROLE = re.compile(r':math:<code>(.+?)</code>', re.S)
_XREF_ROLE = re.compile(r':(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc):<code>~?([^<]+)</code>')


# macros latex2mathml leaves as text
_MACROS = [(re.compile(r"\\arg\b"), r"\\operatorname{arg}")]
# Chromium's MathML Core ignores mathvariant: spell script and double-struck letters in Unicode instead
_VARIANT = re.compile(r'<m([in]) mathvariant="(script|double-struck|bold)">([A-Za-z0-9])</m\1>')
_DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()


def _letter(variant: str, char: str) -> str | None:
    style = {"script": "SCRIPT", "double-struck": "DOUBLE-STRUCK", "bold": "BOLD"}[variant]
    if char.isdigit():
        names = [f"MATHEMATICAL {style} DIGIT {_DIGITS[int(char)]}"]
    else:
        case = "CAPITAL" if char.isupper() else "SMALL"
        # letters that predate the Mathematical Alphanumeric block live elsewhere (e.g. SCRIPT CAPITAL B)
        names = [f"MATHEMATICAL {style} {case} {char.upper()}", f"{style} {case} {char.upper()}"]
    for name in names:
        try:
            return unicodedata.lookup(name)
        except KeyError:
            continue
    return None


def _unicode_variants(mathml: str) -> str:
    def repl(match):
        letter = _letter(match.group(2), match.group(3))
        return match.group(0) if letter is None else f"<m{match.group(1)}>{letter}</m{match.group(1)}>"

    return _VARIANT.sub(repl, mathml)


def _convert(tex: str, display: str, page) -> str | None:
    from latex2mathml.converter import convert

    tex = html.unescape(tex).strip()
    for pattern, replacement in _MACROS:
        tex = pattern.sub(replacement, tex)
    try:
        return _unicode_variants(convert(tex, display=display))
    except Exception as exc:  # an unsupported macro: keep the TeX source, say where
        log.info("typeset: kept TeX source in %s: %s (%s)", page.file.src_path, tex[:60], exc)
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
    content = _XREF_ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", content)
    return _INLINE.sub(inline, content)

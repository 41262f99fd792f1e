"""What a reader sees does not change with how the HTML is made: the visible text of reports rendered now equals the
text the f-string renderer produced before the report moved to Jinja2 templates (tests/report/fixed/*.txt, written by
fixed/make_fixed.py from that version). Compared: the whole report of the legacy study folder (tests/golden/legacy,
with its old-format audit), and the audit and "Where the models look" sections of the current-format folders in
fixed/ (patients, a leak, an exact copy, the shortcut check).

Intended changes to the visible text since the fixtures were written, applied to the old text in INTENDED:
- the shortcut check's note points at docs/explanations.md for its measured error rates, not at the README that no
  longer holds them."""

from __future__ import annotations

from pathlib import Path

from visible import visible_text

from xferlab.report.audit import render_audit_section
from xferlab.report.explain import render_explain_section

FIXED = Path(__file__).parent / "fixed"
INTENDED = [("(benchmarks/shortcut_check.py, README)", "(benchmarks/shortcut_check.py, docs/explanations.md)")]


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _expected(name: str) -> list[str]:
    text = (FIXED / name).read_text()
    for old, new in INTENDED:
        text = text.replace(old, new)
    return _lines(text)


def test_the_legacy_study_report_reads_as_before(legacy_report):
    _, _, report = legacy_report
    assert _lines(visible_text(report.read_text())) == _expected("report.txt")


def test_the_audit_section_reads_as_before():
    assert _lines(visible_text(render_audit_section(FIXED / "audit"))) == _expected("audit.txt")


def test_the_explain_section_reads_as_before():
    assert _lines(visible_text(render_explain_section(FIXED))) == _expected("explain.txt")


def test_visible_text_leaves_markup_styles_and_figures_out():
    html = ('<html><head><style>p { color: red; }</style></head><body><h1>a &amp; b</h1><p>one\n   two <span>'
            'three</span></p><img alt="a figure" src="data:image/png;base64,AAAA"></body></html>')
    assert visible_text(html) == "a & b\none two\nthree\n[image: a figure]\n"

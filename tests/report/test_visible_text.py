"""What a reader sees does not change with how the HTML is made: the visible text of reports rendered now equals the
text the f-string renderer produced before the report moved to Jinja2 templates (tests/report/fixed/*.txt, written by
fixed/make_fixed.py from that version). Compared: the whole report of the legacy study folder (tests/golden/legacy,
with its old-format audit), and the audit and "Where the models look" sections of the current-format folders in
fixed/ (patients, a leak, an exact copy, the shortcut check).

Intended changes to the visible text since the fixtures were written: none."""

from __future__ import annotations

from pathlib import Path

from visible import visible_text

from xferlab.report.audit import render_audit_section
from xferlab.report.explain import render_explain_section

FIXED = Path(__file__).parent / "fixed"


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_the_legacy_study_report_reads_as_before(legacy_report):
    _, _, report = legacy_report
    assert _lines(visible_text(report.read_text())) == _lines((FIXED / "report.txt").read_text())


def test_the_audit_section_reads_as_before():
    assert _lines(visible_text(render_audit_section(FIXED / "audit"))) == _lines((FIXED / "audit.txt").read_text())


def test_the_explain_section_reads_as_before():
    assert _lines(visible_text(render_explain_section(FIXED))) == _lines((FIXED / "explain.txt").read_text())


def test_visible_text_leaves_markup_styles_and_figures_out():
    html = ('<html><head><style>p { color: red; }</style></head><body><h1>a &amp; b</h1><p>one\n   two <span>'
            'three</span></p><img alt="a figure" src="data:image/png;base64,AAAA"></body></html>')
    assert visible_text(html) == "a & b\none two\nthree\n[image: a figure]\n"

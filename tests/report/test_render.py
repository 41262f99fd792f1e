"""The report's templates: values are escaped unless a template made them, a cell's note and flag render, a name a
template needs but is not given is an error (not an empty string), and every template file is package data (a wheel
carries it)."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import jinja2
import pytest

import xferlab
from xferlab.report.render import Cell, render

ROOT = Path(__file__).resolve().parents[2]


def test_values_are_escaped_and_rendered_markup_is_kept():
    hostile = '<img src=x onerror="alert(1)">'
    row = [hostile, Cell(hostile, hostile, "flag")]
    html = render("tables.html", sid="s", title=hostile, intro=hostile,
                  tables=[{"heading": hostile, "header": [hostile], "rows": [row]}])
    # title, intro, heading, header, a plain cell, a Cell's text and its note
    assert "<img" not in html and html.count("&lt;img src=x onerror=&#34;alert(1)&#34;&gt;") == 7
    page = render("page.html", title="t", what="w", data_path="p", data_format="f", built="b",
                  sections=[{"id": "s", "title": "S", "html": html}])
    assert html in page  # a section's HTML, made by its template, is not escaped twice


def test_a_cell_renders_its_note_and_class():
    rows = [["x", Cell("0.750", "[0.5, 1.0]")], ["y", Cell("bad", cls="flag")]]
    html = render("tables.html", sid="s", title="t", intro="", tables=[{"heading": "h", "header": ["a", "b"],
                                                                        "rows": rows}])
    assert '<td>0.750<br><span class="ci">[0.5, 1.0]</span></td>' in html
    assert '<td><span class="flag">bad</span></td>' in html


def test_a_name_the_template_needs_is_required():
    with pytest.raises(jinja2.UndefinedError):
        render("tables.html", sid="s", title="t", intro="")


def test_every_template_is_package_data():
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"^xferlab = \[(.*?)\]", section, re.M).group(1))
    package = Path(xferlab.__file__).parent
    templates = [p.relative_to(package).as_posix() for p in (package / "report" / "templates").iterdir()]
    assert templates and all(any(fnmatch(t, g) for g in globs) for t in templates), (templates, globs)

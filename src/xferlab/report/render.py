"""The report's HTML comes from Jinja2 templates (package data in report/templates/): every value a template prints is
escaped (autoescape), except markup another template made (Markup, which render returns), and a name a template uses
but is not given is an error, not an empty string. Tables' cells are plain values or a Cell."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
from markupsafe import Markup

ENV = jinja2.Environment(loader=jinja2.PackageLoader("xferlab.report", "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class Cell:
    """A table cell with more than a value: a second, smaller line (`note`: a CI, what a model trains) and a CSS class
    for its text (`cls`: 'flag')."""

    text: str
    note: str | None = None
    cls: str | None = None


def render(template: str, **context) -> Markup:
    """The template (a file in report/templates/) filled in; Markup, so a template it is passed to keeps it as is."""
    return Markup(ENV.get_template(template).render(**context))

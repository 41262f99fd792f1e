"""The report's "Where the models look" section, drawn from a study's explain folders (DIR/explain/<run>/: their
explain.json and the contact sheets it names, read through xferlab.artifacts) only; xferlab.explain writes them."""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path

from xferlab import artifacts
from xferlab.errors import XferlabError
from xferlab.report.figures import png_uri

log = logging.getLogger(__name__)

SECTION_ID = "explain"
TITLE = "Where the models look"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _rows(name: str, result: dict) -> list[list[str]]:
    rows = []
    for split, part in result["splits"].items():
        for group, values in part["summary"].items():
            rows.append([name, split, group, str(values["n"]), _fmt(values.get("accuracy")),
                         _fmt(values.get("border_share")), _fmt(values.get("roi_share")),
                         _fmt(values.get("marker_share"))])
    return rows


def _table(rows: list[list[str]]) -> str:
    header = ["run", "split", "images", "n", "accuracy", "border band", "region of interest", "marker"]
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="left">{escape(c)}</td>' if i < 3 else f"<td>{escape(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _sheet(folder: Path, file: str | None, caption: str) -> str:
    if not file or not (folder / file).is_file():
        return ""
    uri = png_uri((folder / file).read_bytes())
    return (f'<figure><img src="{uri}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption>'
            "</figure>")


def render_explain_section(study_dir: Path) -> str:
    """The section's HTML, or '' when the study folder holds no finished explanation."""
    folders = artifacts.study_explanations(study_dir)
    if not folders:
        return ""
    rows, sheets = [], []
    for folder in folders:
        try:
            result = artifacts.read_explain(folder)
        except XferlabError as err:  # one damaged explanation is noted, the rest of the report still built
            log.warning("%s", err)
            continue
        name = folder.name
        rows += _rows(name, result)
        for split, part in result["splits"].items():
            sheets.append(_sheet(folder, part.get("contact_sheet"),
                                 f"{name} · {split} (layer {result.get('cam_layer')}): errors first, then correct "
                                 "cases per class"))
    intro = ("Grad-CAM maps of each run's predicted class. Each map is min-max scaled on its own, so the table "
             "compares shares of a map's mass: in the border band (the outer eighth of each side, where markers and "
             "text sit), in the data's region of interest (the phantoms' lung fields) and on burned-in markers where "
             "the data records them. Uniform maps would put 44 % in the border band; evidence concentrated there or "
             "outside the region of interest suggests a shortcut.")
    return (f'<section id="{SECTION_ID}"><h2>{TITLE}</h2><p class="muted">{escape(intro)}</p>{_table(rows)}'
            f"<details><summary>Contact sheets ({len([s for s in sheets if s])})</summary>{''.join(sheets)}"
            "</details></section>")

"""The report's "Where the models look" section, drawn from a study's explain folders (DIR/explain/<run>/: their
explain.json and the contact sheets it names, read through xferlab.artifacts) only; xferlab.explain writes them."""

from __future__ import annotations

import logging
from pathlib import Path

from xferlab import artifacts
from xferlab.errors import XferlabError
from xferlab.report.figures import png_uri
from xferlab.report.render import render
from xferlab.style import format_number

log = logging.getLogger(__name__)

SECTION_ID = "explain"
TITLE = "Where the models look"


def _share(value) -> str:
    return format_number(None if value is None else float(value), 2, scientific=False)


def _rows(name: str, result: dict) -> list[list[str]]:
    rows = []
    for split, part in result["splits"].items():
        for group, values in part["summary"].items():
            rows.append([name, split, group, str(values["n"]), _share(values.get("accuracy")),
                         _share(values.get("border_share")), _share(values.get("roi_share")),
                         _share(values.get("marker_share"))])
    return rows


def _sheet(folder: Path, file: str | None, caption: str) -> dict | None:
    if not file or not (folder / file).is_file():
        return None
    return {"uri": png_uri((folder / file).read_bytes()), "alt": caption}


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
    return render("explain.html", sid=SECTION_ID, title=TITLE, intro=intro, rows=rows,
                  sheets=[s for s in sheets if s])

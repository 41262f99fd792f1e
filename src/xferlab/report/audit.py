"""The audit as a self-contained HTML fragment (`<section id="audit">`, figures inline as base64 PNG) for the study
report to embed; it reads only what run_audit saved. The verdict is audit.json's; below it, every check's block
(xferlab.audit.checks: each entry names its block, neutral data from xferlab.audit.blocks) is rendered the same way,
so a new check needs nothing here."""

from __future__ import annotations

from pathlib import Path

from xferlab import artifacts
from xferlab.audit.blocks import Block, Figure, Items, Table, Text, dataset_block
from xferlab.audit.checks import CHECKS
from xferlab.audit.entry import check_block
from xferlab.report.figures import png_uri
from xferlab.report.render import render
from xferlab.style import format_number

TITLE = "Split audit"


def _part(part, audit_dir: Path) -> dict | None:
    """A block's part as the template reads it; a figure whose file is missing is left out."""
    if isinstance(part, Table):
        return {"kind": "table", "header": part.header,
                "rows": [[format_number(c) for c in row] for row in part.rows]}
    if isinstance(part, Figure):
        path = audit_dir / part.file if part.file else None
        if path is None or not path.is_file():
            return None
        return {"kind": "figure", "alt": part.alt, "uri": png_uri(path.read_bytes())}
    if isinstance(part, Items):
        return {"kind": "items", "items": part.items}
    if isinstance(part, Text):
        return {"kind": "text", "text": part.text, "muted": part.muted}
    raise TypeError(f"a report block holds Text, Items, Table or Figure parts, not {type(part).__name__}")


def _blocks(result: dict, audit_dir: Path) -> list[dict]:
    """The dataset's block, then each check's in the registry's order (checks an older audit.json lacks: none)."""
    blocks: list[Block | None] = [dataset_block(result)]
    blocks += [check_block(check, result) for check in CHECKS.values() if check.name in result]
    return [{"title": b.title, "parts": [p for p in (_part(part, audit_dir) for part in b.parts) if p]}
            for b in blocks if b is not None]


def _excluded(result: dict) -> str:
    excluded = result["dataset"].get("excluded")  # an audit.json written before data.exclude has no such key
    return f" ({excluded['count']} more excluded by {excluded['file']})" if excluded else ""


def render_audit_section(audit_dir: Path) -> str:
    """`<section id="audit">` with the verdict, tables and inline figures of the audit saved in `audit_dir`."""
    audit = artifacts.read_audit(Path(audit_dir))
    result = audit.result
    cfg = result["config"]["audit"]
    meta = (f"Backbone {cfg['backbone']} ({cfg['weights']}), {cfg['permutations']} permutations, alpha "
            f"{cfg['alpha']}, seed {cfg['seed']}; {result['dataset']['images']} images{_excluded(result)}; "
            f"{result['seconds']['total']:.0f} s.")
    return render("audit.html", title=TITLE, verdict=result["verdict"], blocks=_blocks(result, audit.path), meta=meta)

"""The report: figures (matplotlib) and the self-contained report.html, drawn from saved records only.

  figures.py  matplotlib figures from records (curves, comparison, timing, confusion, ROC); a run's curves.png
  html.py     report.html: one Section entry per section in SECTIONS (id, title, render function), in order
  render.py   the Jinja2 environment: templates/ (package data), autoescaped; Cell, a table cell with a note
  audit.py    the audit's section, from the audit folder's record (xferlab.artifacts.read_audit) and every check's
              report block (xferlab.audit.checks)
  calibration.py  the calibration section: ECE/Brier before and after temperature scaling, operating points,
                  reliability diagrams
  explain.py  the "Where the models look" section, from the study's explain folders
"""

from __future__ import annotations

from pathlib import Path


def build_outputs(out: str | Path):
    """From the saved run folders in `out`: every run's curves.png (where missing), results.csv, results.json and
    report.html. `out` may also be a single run folder (`xferlab report RUN`): its curves.png (where missing) and
    RUN/report.html. Returns (StudyResults, report path)."""
    from xferlab import artifacts
    from xferlab.report.figures import write_run_curves  # matplotlib is only needed here
    from xferlab.report.html import write_report
    from xferlab.study.results import collect_results, collect_run, write_results

    single = artifacts.is_run_folder(out)
    results = collect_run(out) if single else collect_results(out)
    for record in results.records:
        write_run_curves(record.path, record.history, record.config, missing_only=True)
    if not single:
        write_results(results)
    return results, write_report(results)

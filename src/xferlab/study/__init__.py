"""Studies: a grid of backbones × regimes × seeds, run with resume, evaluated with bootstrap CIs, and reported.

  grid.py         study YAML -> one resolved TrainConfig per run (per-backbone / per-regime overrides)
  runner.py       run_study: train missing runs into DIR/runs/<name>, the optional audit into DIR/audit
  results.py      read saved run folders, evaluate predictions, results.csv / results.json, mean ± sd over seeds
  summary.py      ranking and the terminal table
  answers.py      the reference's questions answered in words from the numbers
  environment.py  versions, CPU/GPU names -> DIR/environment.json
"""

from __future__ import annotations

from pathlib import Path

from xferlab.study.grid import RunSpec, expand_grid, load_study
from xferlab.study.results import StudyResults, collect_results, write_results
from xferlab.study.runner import StudyOutcome, run_study

__all__ = ["RunSpec", "StudyOutcome", "StudyResults", "build_outputs", "collect_results", "expand_grid",
           "load_study", "run_study", "write_results"]


def build_outputs(out: str | Path) -> tuple[StudyResults, Path]:
    """From the saved run folders in `out`: results.csv, results.json and report.html. Returns (results, report)."""
    from xferlab.report.html import write_report  # matplotlib is only needed here

    results = collect_results(out)
    write_results(results)
    return results, write_report(results)

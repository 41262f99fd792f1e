"""Studies: a grid of backbones × regimes × seeds, run with resume, evaluated with bootstrap CIs (the report, with
xferlab.report.build_outputs, sits above).

  grid.py         study YAML -> one resolved TrainConfig per run (per-backbone / per-regime overrides)
  runner.py       run_study: train missing runs into DIR/runs/<name>, the optional audit into DIR/audit
  results.py      read saved run folders, evaluate predictions, results.csv / results.json, mean ± sd over seeds
  summary.py      ranking and the terminal table
  answers.py      the reference's questions answered in words from the numbers
  environment.py  versions, CPU/GPU names -> DIR/environment.json
"""

from __future__ import annotations

from xferlab.study.grid import RunSpec, expand_grid, load_study
from xferlab.study.results import StudyResults, collect_results, write_results
from xferlab.study.runner import StudyOutcome, run_study

__all__ = ["RunSpec", "StudyOutcome", "StudyResults", "collect_results", "expand_grid",
           "load_study", "run_study", "write_results"]


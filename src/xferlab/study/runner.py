"""Run a study: every grid cell into DIR/runs/<name> (finished runs skipped), the optional split audit into DIR/audit,
then results.csv, results.json and report.html.

Resuming relies on engine.run.train's staging: a run folder is renamed into place only when complete, and a
`.NAME.partial` leftover of a killed run is cleared when that run starts again. So an existing run folder is a
finished run, and anything else is run (again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from xferlab import io
from xferlab.config import AuditConfig, DataConfig, StudyConfig, TrainConfig, build, read_yaml, to_yaml
from xferlab.errors import XferlabError
from xferlab.study.environment import capture_environment
from xferlab.study.grid import RunSpec, expand_grid, preflight

log = logging.getLogger(__name__)

RUNS = "runs"
AUDIT = "audit"
AUDIT_JSON = "audit.json"
STUDY_YAML = "study.yaml"
ENVIRONMENT_JSON = "environment.json"
# Settings that choose where and how fast a run computes, not what it computes: a finished run stays valid when they
# change (e.g. a study resumed on a GPU machine).
EXECUTION_KEYS = ("device", "num_threads")


@dataclass
class StudyOutcome:
    out: Path
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    audited: bool = False


def run_study(study: StudyConfig, out: str | Path, force: bool = False, progress: bool = True) -> StudyOutcome:
    """Train every missing run of `study` under `out`, run its audit if asked; `force` redoes everything.

    Writes out/study.yaml (the resolved study) and out/environment.json first, so `xferlab report` can rebuild the
    report from the folder alone. Results and the report are written by xferlab.study.build_outputs.
    """
    from xferlab.engine.run import train

    out = Path(out)
    specs = expand_grid(study, where=STUDY_YAML)
    preflight(specs)
    run_audit = _audit_function() if study.audit is not None else None  # before training: fail fast
    finished = set() if force else {s.name for s in specs if (out / RUNS / s.name).is_dir()}
    for spec in specs:
        if spec.name in finished:
            check_finished_run(out / RUNS / spec.name, spec)
    _prepare_folder(out, study)
    outcome = StudyOutcome(out)
    steps = len(specs) + (study.audit is not None)
    with tqdm(total=steps, desc="study", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for spec in specs:
            run_dir = out / RUNS / spec.name
            bar.set_postfix_str(spec.name)
            if spec.name in finished:
                outcome.skipped.append(spec.name)
            else:
                train(spec.config, run_dir, overwrite=force, progress=progress)
                outcome.trained.append(spec.name)
            bar.update()
        if study.audit is not None:
            bar.set_postfix_str("split audit")
            outcome.audited = run_study_audit(run_audit, study.data, study.audit, out, force, progress)
            bar.update()
    return outcome


def _prepare_folder(out: Path, study: StudyConfig) -> None:
    try:
        (out / RUNS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XferlabError(f"cannot create {out} ({err.strerror or err}); choose a writable --out") from None
    io.write_text(out / STUDY_YAML, to_yaml(study))
    io.write_json(out / ENVIRONMENT_JSON, capture_environment())


def check_finished_run(run_dir: Path, spec: RunSpec) -> None:
    """A finished run is reused only if it was trained with this study's settings for it; otherwise say so."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise XferlabError(f"{run_dir} is not a run folder (no config.yaml); remove it or pass --force")
    saved = build(TrainConfig, read_yaml(saved_file), where=str(saved_file)).model_dump(mode="json")
    wanted = spec.config.model_dump(mode="json")
    for key in wanted:
        if key not in EXECUTION_KEYS and saved.get(key) != wanted[key]:
            raise XferlabError(f"{run_dir} was trained with {key} = {saved.get(key)!r}, the study now asks for "
                               f"{wanted[key]!r}; pass --force to rerun it, or choose another --out")


def _audit_function() -> Callable:
    """xferlab.audit.run_audit, imported only when a study asks for the audit (it is heavier than a study needs)."""
    try:
        from xferlab.audit import run_audit
    except ImportError as err:
        raise XferlabError(f"the study has an audit: section but the split audit (xferlab.audit) cannot be imported "
                           f"({err}); remove audit: from the study YAML or repair the installation") from None
    return run_audit


def run_study_audit(run_audit: Callable, data: DataConfig, audit: AuditConfig, out: Path, force: bool,
                    progress: bool) -> bool:
    """Run the split audit into out/audit unless its audit.json exists (and not `force`). True if it ran."""
    audit_dir = out / AUDIT
    if (audit_dir / AUDIT_JSON).is_file() and not force:
        return False
    run_audit(data, audit, audit_dir, progress=progress)
    return True

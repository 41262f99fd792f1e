"""Run a study: every grid cell into DIR/runs/<name> (finished runs skipped), the optional split audit into DIR/audit,
then results.csv, results.json and report.html.

Resuming relies on engine.run.train's staging: a run folder is renamed into place only when complete, and a
`.NAME.partial` leftover of a killed run is cleared when that run starts again. So an existing run folder is a
finished run, and anything else is run (again).

A run whose losses diverge (xferlab.engine.guards.Diverged) does not end the study: its folder records it as diverged
(config.yaml, history.csv, diverged.json; no results), the rest of the grid runs, and the results and report say so.
A resumed study keeps a diverged run as it is unless asked to retry it (`retry_diverged`, --retry-diverged).

Job arrays: with shard=(I, N) only the I-th of N disjoint parts of the grid is trained (grid.shard_specs), so N jobs
can share one study folder. Each writes the same study.yaml and its own environment-shard-I-of-N.json; shard 1 runs
the audit; results and the report are built once every shard has finished (`xferlab report DIR`).

Under torchrun every rank runs each cell's training (xferlab.engine.distributed); rank 0 alone writes the study's
files, and the ranks leave their process group once the grid is trained, so rank 0 runs the audit (which is not
distributed) and builds the report on its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xferlab import artifacts, files
from xferlab.artifacts import (  # noqa: F401  (re-exported: the study folder's names)
    AUDIT,
    AUDIT_JSON,
    ENVIRONMENT_JSON,
    RUNS,
    SHARD_ENVIRONMENT_JSON,
    SHARD_ENVIRONMENT_NAME,
    STUDY_YAML,
    environment_file,
    find_environment,
)
from xferlab.checks import read_metrics
from xferlab.config import AuditConfig, DataConfig, StudyConfig, TrainConfig, build, to_yaml
from xferlab.data.exclude import file_digest
from xferlab.data.sources import check_exclude
from xferlab.engine.distributed import is_main_process, shutdown
from xferlab.engine.guards import Diverged
from xferlab.errors import XferlabError
from xferlab.evaluation.evaluate import BootstrapSettings
from xferlab.study.environment import capture_environment
from xferlab.study.grid import RunSpec, expand_grid, preflight, shard_specs
from xferlab.tracking import session as tracking
from xferlab.tracking.base import Tracker, epoch_hooks

log = logging.getLogger(__name__)

# Settings that choose where and how fast a run computes, not what it computes: a finished run stays valid when they
# change (e.g. a study resumed on a GPU machine).
EXECUTION_KEYS = ("device", "num_threads", "cuda_graphs", "inference_batch_size",  # speed only
                  "track", "track_uri")  # tracking never changes results


@dataclass
class StudyOutcome:
    out: Path
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)  # runs of this study (or shard) recorded as diverged
    audited: bool = False
    shard: tuple[int, int] | None = None  # (I, N): the I-th of N parts of the grid; None: the whole grid


def run_study(study: StudyConfig, out: str | Path, force: bool = False, progress: bool = True,
              shard: tuple[int, int] | None = None, tracker: Tracker | None = None,
              retry_diverged: bool = False) -> StudyOutcome:
    """Train every missing run of `study` under `out`, run its audit if asked; `force` redoes everything,
    `retry_diverged` the runs recorded as diverged (kept as they are otherwise).
    `shard` (I, N) limits this to the I-th of N parts of the grid (grid.shard_specs); the audit belongs to part 1.
    `tracker`: the study's parent run (xferlab.tracking.session.study_run); by default one is opened, and finished
    on return, when the study asks for `track:`.

    Writes out/study.yaml (the resolved study) and the environment record first, so `xferlab report` can rebuild the
    report from the folder alone. Results and the report are written by xferlab.report.build_outputs.
    """
    out = Path(out)
    all_specs = expand_grid(study, where=STUDY_YAML)
    preflight(all_specs)  # the whole grid: every shard of a bad study fails the same way, before training
    specs = shard_specs(all_specs, shard)
    if not specs:
        log.warning("shard %s/%s has no runs: the grid has only %d", *shard, len(all_specs))
    main = is_main_process()  # under torchrun every rank trains each run; rank 0 alone writes and audits
    progress = progress and main
    audit = study.audit if (shard is None or shard[0] == 1) and main else None
    run_audit = _audit_function() if audit is not None else None  # before training: fail fast
    explain = study.explain and main and shard is None  # with shards: `xferlab explain` per run once all have finished
    if explain:  # the grad-cam extra is checked before training too
        from xferlab.explain.cam import grad_cam_classes

        grad_cam_classes()
    finished = set() if force else {s.name for s in specs if (out / RUNS / s.name).is_dir()}
    if retry_diverged:
        finished -= {name for name in finished if artifacts.is_diverged_run(out / RUNS / name)}
    digest = file_digest(Path(study.data.exclude)) if study.data.exclude and Path(study.data.exclude).is_file() \
        else None
    for spec in specs:
        if spec.name in finished:
            check_finished_run(out / RUNS / spec.name, spec, digest)
    if main and study.data.exclude is not None and any(s.name not in finished for s in specs):
        check_exclude(study.data)  # unknown ids fail now, before the study folder is written
    if main:
        _prepare_folder(out, study, shard)
    outcome = StudyOutcome(out, shard=shard)
    with contextlib.ExitStack() as stack:
        parent = tracker if tracker is not None else stack.enter_context(tracking.study_run(study, out, main))
        bar = stack.enter_context(tqdm(total=len(specs) + (audit is not None), desc=_bar_label(shard), unit="step",
                                       disable=not progress, dynamic_ncols=True))
        _train_runs(specs, finished, out, force, progress, outcome, bar, parent, BootstrapSettings.of_study(study))
        shutdown()  # under torchrun the ranks part here: rank 0's audit and report must not keep them waiting
        if audit is not None:
            bar.set_postfix_str("split audit")
            outcome.audited = run_study_audit(run_audit, study.data, audit, out, force, progress)
            tracking.audit_done(parent, out / AUDIT, ran=outcome.audited)
            bar.update()
    if explain:
        from xferlab.explain.run import explain_study

        explain_study(out, [s.name for s in specs if s.name not in outcome.diverged], force)
    return outcome


def _train_runs(specs: list[RunSpec], finished: set[str], out: Path, force: bool, progress: bool,
                outcome: StudyOutcome, bar: tqdm, parent: Tracker, bootstrap: BootstrapSettings) -> None:
    """Train the runs of `specs` not in `finished`, recording trained and skipped names in `outcome`; each is a
    nested run of the `parent` tracker (a skipped one is logged from its folder unless it was before)."""
    from xferlab.engine.run import train

    for spec in specs:
        bar.set_postfix_str(spec.name)
        run_dir = out / RUNS / spec.name
        if spec.name in finished:
            outcome.skipped.append(spec.name)
            if artifacts.is_diverged_run(run_dir):
                outcome.diverged.append(spec.name)
            else:
                tracking.finished_cell(parent, spec.name, run_dir, bootstrap)
        else:
            try:
                with tracking.cell_run(parent, spec.name, spec.config) as tracker:
                    hooks = {"hooks": epoch_hooks(tracker)} if tracker else {}  # untracked: train's call of before
                    train(spec.config, run_dir, overwrite=force or run_dir.is_dir(), progress=progress,
                          bootstrap=bootstrap, **hooks)
                    tracking.finished_run(tracker, run_dir, bootstrap)
            except Diverged as err:  # the study goes on; the run is recorded as diverged
                record_diverged(run_dir, spec, err)
                outcome.diverged.append(spec.name)
            outcome.trained.append(spec.name)
        bar.update()


def record_diverged(run_dir: Path, spec: RunSpec, err: Diverged) -> None:
    """Write a diverged run's folder (config.yaml, history.csv, diverged.json; staged like a finished one), on the
    main process, and say so on the terminal."""
    log.warning("%s diverged (%s); the study goes on with the other runs", spec.name, err.divergence.reason())
    if is_main_process():
        with files.staged_dir(run_dir, overwrite=True) as stage:
            artifacts.write_diverged_run(stage, to_yaml(spec.config), err.history, err.divergence.as_dict())


def _bar_label(shard: tuple[int, int] | None) -> str:
    return "study" if shard is None else f"study shard {shard[0]}/{shard[1]}"


def _prepare_folder(out: Path, study: StudyConfig, shard: tuple[int, int] | None) -> None:
    """Create out/runs; write study.yaml (the same from every shard, atomically: racing shards are fine) and the
    environment record."""
    artifacts.write_study_header(out, to_yaml(study), capture_environment(), shard)


def check_finished_run(run_dir: Path, spec: RunSpec, exclude_digest: str | None = None) -> None:
    """A finished (or diverged) run is reused only if it was trained with this study's settings for it (and, with
    data.exclude, the file's contents then: `exclude_digest`, its sha256 now); otherwise say so."""
    saved_file = run_dir / artifacts.CONFIG_YAML
    saved = build(TrainConfig, artifacts.read_run_config(run_dir), where=str(saved_file)).model_dump(mode="json")
    wanted = spec.config.model_dump(mode="json")
    rerun = "pass --retry-diverged to train it again" if artifacts.is_diverged_run(run_dir) else \
        "pass --force to rerun it"
    for key in wanted:
        if key not in EXECUTION_KEYS and saved.get(key) != wanted[key]:
            raise XferlabError(f"{run_dir} was trained with {key} = {saved.get(key)!r}, the study now asks for "
                               f"{wanted[key]!r}; {rerun}, or choose another --out")
    if exclude_digest is None or not artifacts.is_finished_run(run_dir):
        return  # no exclude file (a missing one is the data loader's error, with its fix), or no metrics
    recorded = (read_metrics(run_dir / artifacts.METRICS_JSON).get("excluded") or {}).get("sha256")
    if recorded is not None and recorded != exclude_digest:
        raise XferlabError(f"{run_dir} was trained without the images {spec.config.data.exclude} listed then; the "
                           f"file has changed since (its sha256 differs); {rerun}, or choose another --out")


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
    if artifacts.is_finished_audit(audit_dir) and not force:
        return False
    run_audit(data, audit, audit_dir, progress=progress)
    return True

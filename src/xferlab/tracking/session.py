"""Opening and closing tracked runs for `xferlab train`, `study` and `audit`: which tools, where they write, and the
run's life (started with params and tags, finished FINISHED / FAILED / KILLED, then its queued calls awaited).

Where things land (docs/tracking.md): MLflow at --track-uri, else $MLFLOW_TRACKING_URI, else a SQLite store
`mlflow.db` beside --out (MLflow 3 refuses its old ./mlruns file store by default and prefers SQLite) with artifacts
in `mlartifacts/` beside it; experiment $MLFLOW_EXPERIMENT_NAME or 'xferlab'. TensorBoard: a study's runs under
DIR/tb/<run>, a single run or audit under tb/<name> beside --out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from xferlab import artifacts, extras
from xferlab.config import AuditConfig, DataConfig, StudyConfig, TrainConfig
from xferlab.errors import XferlabError
from xferlab.evaluation.evaluate import BootstrapSettings
from xferlab.tracking import records
from xferlab.tracking.base import CLOSE_TIMEOUT_S, NULL, FanOut, Handle, Tracker, _Worker

TOOLS = ("mlflow", "tensorboard")
EXTRA = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # tool -> the pip extra that installs it
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TB_DIR = "tb"
DEFAULT_EXPERIMENT = "xferlab"
AUDIT_KEY = "audit"
# Schemes MLflow's tracking stores accept (SQLAlchemy databases, a tracking server, Databricks).
URI_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
STUDY_OUTPUTS = (artifacts.REPORT_HTML, artifacts.RESULTS_CSV, artifacts.RESULTS_JSON)
INTERRUPTED_CLOSE_S = 10.0


def tools(track: Sequence[str]) -> tuple[str, ...]:
    """The requested tools, each once, after checking that their packages are installed."""
    chosen = tuple(dict.fromkeys(track))
    for tool in chosen:
        if tool not in TOOLS:
            raise XferlabError(f"unknown tracker '{tool}'; choose mlflow or tensorboard")
        extras.check_installed(tool, EXTRA[tool], f"--track {tool}")
    return chosen


def mlflow_uri(given: str | None, store_dir: Path) -> str:
    """--track-uri, else $MLFLOW_TRACKING_URI, else sqlite:///STORE_DIR/mlflow.db; an unusable URI is an error."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(store_dir) / STORE_FILE).resolve()}"
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in URI_SCHEMES:
        raise XferlabError(f"tracking URI {uri!r} is not one MLflow can use; give e.g. sqlite:///PATH/mlflow.db "
                           "(a local store) or http://HOST:5000 (a tracking server) with --track-uri")
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise XferlabError(f"tracking URI {uri!r}: MLflow 3 refuses its file store; use sqlite:///PATH/mlflow.db, "
                           "or set MLFLOW_ALLOW_FILE_STORE=true")
    return uri


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, artifacts in mlartifacts/ beside the database file (MLflow's default would be ./mlruns
    under whatever folder the command ran in); a server or database chooses its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIR)


def _open(kinds: Sequence[str], name: str, uri: str | None, logdir: Path, fresh: bool, with_hparams: bool,
          resume_key: str | None = None) -> FanOut:
    """Start one top-level run per tool, each on its own worker thread (the opening itself runs there too)."""
    handles = []
    for kind in kinds:
        if kind == "mlflow":
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT

            def opener(experiment=experiment) -> Tracker:
                from xferlab.tracking.mlflow_tracker import MLflowTracker

                return MLflowTracker.open(uri, experiment, artifact_location(uri), name, resume_key)
        else:
            def opener() -> Tracker:
                from xferlab.tracking.tensorboard_tracker import TensorBoardTracker

                return TensorBoardTracker(logdir, with_hparams=with_hparams, fresh=fresh)
        handles.append(Handle.start(_Worker(kind), opener))
    return FanOut(handles, owns_workers=True)


@contextlib.contextmanager
def _lifetime(tracker: FanOut, close: bool = True, discard: bool = True) -> Iterator[FanOut]:
    """Finish the run FINISHED, FAILED (an exception, or losses that diverged: its epochs are a result) or KILLED
    (Ctrl-C), or with `discard` remove it when it ended on bad input (XferlabError: nothing half-written); `close`:
    then await its queued calls."""
    from xferlab.engine.guards import Diverged

    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except XferlabError as err:
        status = "DISCARD" if discard and not isinstance(err, Diverged) else "FAILED"
        raise
    finally:
        if status == "DISCARD":
            tracker.run(lambda t: t.discard())
        else:
            tracker.finish(status)
        if close:  # after Ctrl-C the user wants the prompt back: a short wait for what is queued
            tracker.close(INTERRUPTED_CLOSE_S if status == "KILLED" else CLOSE_TIMEOUT_S)


@contextlib.contextmanager
def train_run(cfg: TrainConfig, out: str | os.PathLike, enabled: bool = True) -> Iterator[FanOut]:
    """The tracked run of `xferlab train`: the trackers cfg.track asks for (none: NULL), params and tags logged."""
    kinds = tools(cfg.track) if enabled else ()
    if not kinds:
        yield NULL
        return
    out = Path(out).resolve()
    uri = mlflow_uri(cfg.track_uri, out.parent) if "mlflow" in kinds else None
    tracker = _open(kinds, out.name, uri, out.parent / TB_DIR / out.name, fresh=True, with_hparams=True)
    config = cfg.model_dump(mode="json")
    tracker.run(lambda t: records.start_run(t, config))
    with _lifetime(tracker):
        yield tracker


def finished_run(tracker: Tracker, run_dir: str | os.PathLike, settings: BootstrapSettings | None = None,
                 history: bool = False) -> None:
    """Queue the logging of a finished run folder (final metrics with CIs, confusion matrices, files); `settings`:
    the bootstrap's (default: xferlab.evaluation's)."""
    if tracker:
        run_dir, settings = Path(run_dir), settings or BootstrapSettings()
        tracker.run(lambda t: records.log_run_folder(t, run_dir, settings, history))


def study_key(out: Path) -> str:
    """What identifies a study's parent run across resumes: its folder."""
    return hashlib.sha256(f"study:{Path(out).resolve()}".encode()).hexdigest()[:32]


@contextlib.contextmanager
def study_run(study: StudyConfig, out: str | os.PathLike, enabled: bool = True) -> Iterator[FanOut]:
    """The parent run of a study (reopened when the study resumes), its params and tags logged."""
    kinds = tools(study.track) if enabled else ()
    if not kinds:
        yield NULL
        return
    out = Path(out).resolve()
    uri = mlflow_uri(study.track_uri, out.parent) if "mlflow" in kinds else None
    tracker = _open(kinds, out.name, uri, out / TB_DIR, fresh=False, with_hparams=False, resume_key=study_key(out))
    params = records.flatten(study.model_dump(mode="json", exclude={"track", "track_uri"}))
    tags = {"study": study.name, "study_dir": str(out)}
    data_path = study.data.path
    tracker.run(lambda t: (t.log_params(params), t.set_tags({**tags, **records.common_tags(data_path)})))
    with _lifetime(tracker, discard=False):  # its finished cells stay, under a FAILED parent
        yield tracker


@contextlib.contextmanager
def cell_run(parent: Tracker, name: str, cfg: TrainConfig) -> Iterator[Tracker]:
    """A grid cell's nested run; the parent records it as done once it finished. Its queued calls are awaited with
    the parent's, so the next cell trains while this one's files are logged."""
    if not parent:
        yield NULL
        return
    child = parent.child(name)
    config = cfg.model_dump(mode="json")
    child.run(lambda t: records.start_run(t, config))
    with _lifetime(child, close=False):
        yield child
    parent.mark_done(name)


def finished_cell(parent: Tracker, name: str, run_dir: Path, settings: BootstrapSettings) -> None:
    """A cell a resumed study skips: logged from its run folder, history included, unless it was logged before."""
    if not parent:
        return

    def job(t: Tracker) -> None:
        if t.done(name):
            return
        child = t.child(name)
        records.start_run(child, dict(artifacts.read_run_config(run_dir)))
        records.log_run_folder(child, run_dir, settings, history=True)
        child.finish("FINISHED")
        t.mark_done(name)

    parent.run(job)


def audit_done(parent: Tracker, audit_dir: Path, ran: bool) -> None:
    """The study's audit on its parent run: when it `ran` now, or when it ran earlier but was never logged."""
    if not parent or not artifacts.is_finished_audit(audit_dir):
        return

    def job(t: Tracker) -> None:
        if ran or not t.done(AUDIT_KEY):
            records.log_audit_folder(t, audit_dir)
            t.mark_done(AUDIT_KEY)

    parent.run(job)


def study_outputs(parent: Tracker, out: Path) -> None:
    """The study's report.html, results.csv and results.json as artifacts of its parent run."""
    files = [Path(out) / name for name in STUDY_OUTPUTS if (Path(out) / name).is_file()]
    if parent and files:
        parent.log_artifacts(files)


@contextlib.contextmanager
def audit_run(track: Sequence[str], track_uri: str | None, data: DataConfig, audit: AuditConfig,
              out: str | os.PathLike, enabled: bool = True) -> Iterator[FanOut]:
    """The tracked run of `xferlab audit`: the data and audit settings as params, the common tags."""
    kinds = tools(track) if enabled else ()
    if not kinds:
        yield NULL
        return
    out = Path(out).resolve()
    uri = mlflow_uri(track_uri, out.parent) if "mlflow" in kinds else None
    tracker = _open(kinds, out.name, uri, out.parent / TB_DIR / out.name, fresh=True, with_hparams=False)
    params = records.flatten({"data": data.model_dump(mode="json"), "audit": audit.model_dump(mode="json")})
    data_path = data.path
    tracker.run(lambda t: (t.log_params(params), t.set_tags({"kind": "audit", **records.common_tags(data_path)})))
    with _lifetime(tracker):
        yield tracker


def audited(tracker: Tracker, audit_dir: str | os.PathLike) -> None:
    """Queue the logging of a finished audit folder: verdict, statistics, files."""
    if tracker:
        audit_dir = Path(audit_dir)
        tracker.run(lambda t: records.log_audit_folder(t, audit_dir))


__all__ = ["audit_done", "audit_run", "audited", "cell_run", "finished_cell", "finished_run", "study_outputs",
           "study_run", "tools", "train_run"]

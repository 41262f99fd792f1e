"""The MLflow adapter: one MLflow run per xferlab run, a study as a parent run with nested runs (MlflowClient, no
global fluent state, so several runs can be open at once on the worker thread).

Imported only when `--track mlflow` is asked for: importing mlflow takes seconds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from xferlab.tracking.base import Tracker

for _name in ("mlflow", "alembic"):  # creating a store logs its migrations at INFO: the CLI owns the terminal
    logging.getLogger(_name).setLevel(logging.WARNING)

# MLflow's per-request limits (mlflow.utils.validation: MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH).
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
DONE_TAG = "xferlab.done.{}"  # on a parent run: the nested run (or the audit) of that name is fully logged
ATTEMPT_TAG = "xferlab.attempt.{}"  # on a parent run: the id of the latest nested run of that name


def _key(name: str) -> str:
    """A key MLflow accepts (letters, digits, _ - . / and spaces): a class name such as 'COVID-19 (mild)' in an audit
    statistic would otherwise fail the whole batch."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if missing (with `artifact_location` for a local store)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created meanwhile by another process (a job array's shards)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MLflowTracker(Tracker):
    """One MLflow run, driven through MlflowClient."""

    def __init__(self, client: MlflowClient, experiment: str, run_id: str, reopened: bool = False):
        self.client, self.experiment, self.run_id, self.reopened = client, experiment, run_id, reopened

    @classmethod
    def open(cls, uri: str, experiment: str, artifact_location: str | None, name: str,
             resume_key: str | None = None) -> MLflowTracker:
        """Start a run named `name`. With `resume_key` (a study), reopen the run tagged with that key if there is one,
        so a resumed study keeps one parent run."""
        client = MlflowClient(tracking_uri=uri)
        exp = experiment_id(client, experiment, artifact_location)
        if resume_key is not None:
            found = client.search_runs([exp], filter_string=f"tags.`xferlab.key` = '{resume_key}'", max_results=1)
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return cls(client, exp, found[0].info.run_id, reopened=True)
        tags = {"xferlab.key": resume_key} if resume_key else None
        return cls(client, exp, client.create_run(exp, run_name=name, tags=tags).info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        # MLflow params cannot change value; a reopened study run keeps the values it was first given (a new run has
        # none: no server round trip for it).
        existing = self.client.get_run(self.run_id).data.params if self.reopened else {}
        new = [Param(_key(k), str(v)) for k, v in params.items() if _key(k) not in existing]
        for chunk in _chunks(new, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        for chunk in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for chunk in _chunks([RunTag(_key(k), str(v)) for k, v in tags.items()], PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifacts(self, files: Sequence[Path], subdir: str = "") -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path=subdir or None)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def discard(self) -> None:
        if self.reopened:
            self.client.set_terminated(self.run_id, status="FAILED")
        else:
            self.client.delete_run(self.run_id)

    def child(self, name: str) -> MLflowTracker:
        """A nested run; an earlier attempt of the same name left RUNNING (a killed process) is marked KILLED."""
        previous = self.client.get_run(self.run_id).data.tags.get(ATTEMPT_TAG.format(name))
        if previous:
            run = self.client.get_run(previous)
            if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
                self.client.set_terminated(previous, status="KILLED")
        run_id = self.client.create_run(self.experiment, run_name=name,
                                        tags={MLFLOW_PARENT_RUN_ID: self.run_id}).info.run_id
        self.client.set_tag(self.run_id, ATTEMPT_TAG.format(name), run_id)
        return MLflowTracker(self.client, self.experiment, run_id)

    def done(self, key: str) -> bool:
        return self.client.get_run(self.run_id).data.tags.get(DONE_TAG.format(key)) == "true"

    def mark_done(self, key: str) -> None:
        self.client.set_tag(self.run_id, DONE_TAG.format(key), "true")

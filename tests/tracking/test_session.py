"""Tracked train, study and audit, read back through MLflow's client and TensorBoard's EventAccumulator: params,
per-epoch metric histories, final metrics with CIs, artifacts, nested runs, resume without double logging."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tinydata import write_tiny_npy
from xferlab import artifacts
from xferlab.cli import main
from xferlab.errors import XferlabError
from xferlab.study import load_study, run_study
from xferlab.tracking import records, session

TRAIN = ["--weights", "none", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--num-threads", "1"]
BOTH = ["--track", "mlflow", "--track", "tensorboard"]


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), pytest.approx(float(r[key]))) for r in rows]


def _mlflow_series(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _accumulator(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _tb_series(acc, key: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(key)]


def _tb_hparams(logdir: Path, *keys: str) -> list[str]:
    """String hparams of a run's HParams session (where TensorBoard shows a run's tags)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _accumulator(logdir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return [start.session_start_info.hparams[k].string_value for k in keys]


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id])) if exp is not None else []


@pytest.fixture(scope="module")
def tracked_train(tmp_path_factory, mlflow_uri) -> Path:
    """`xferlab train ... --track mlflow --track tensorboard`, once: the run folder."""
    root = tmp_path_factory.mktemp("tracked_train")
    data = write_tiny_npy(root / "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "train-test")
        assert main(["train", "--data", str(data), *TRAIN, "--out", str(root / "runs" / "r1"), *BOTH,
                     "--track-uri", mlflow_uri]) == 0
    return root / "runs" / "r1"


def test_a_tracked_run_lands_in_mlflow_with_params_histories_final_metrics_and_files(tracked_train, client, tmp_path):
    (run,) = _runs(client, "train-test")
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    config = yaml.safe_load((tracked_train / "config.yaml").read_text())
    assert run.data.params["lr"] == "0.001" and run.data.params["epochs"] == "2"
    assert run.data.params["data.path"] == config["data"]["path"]
    tags = run.data.tags
    assert (tags["backbone"], tags["regime"], tags["seed"]) == ("resnet18", "frozen", "0")
    assert tags["data_digest"] == records.data_digest(config["data"]["path"])[0] and tags["xferlab_version"]
    rows = _history(tracked_train)
    for key in ("train_loss", "val_acc", "test_loss"):
        assert _mlflow_series(client, run.info.run_id, key) == _series(rows, key)
    saved = json.loads((tracked_train / "metrics.json").read_text())
    final = run.data.metrics
    assert final["best_epoch"] == saved["best_epoch"]
    assert final["test_accuracy"] == pytest.approx(saved["test"]["accuracy"])
    assert final["val_auroc"] == pytest.approx(saved["val"]["auroc"])
    assert final["test_accuracy_low"] <= final["test_accuracy"] <= final["test_accuracy_high"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "history.csv", "metrics.json", "model.pt", "predictions.npz", "curves.png",
                         "confusion.png"}
    copy = client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path))
    assert Path(copy).read_bytes() == (tracked_train / "history.csv").read_bytes()


def test_a_tracked_run_lands_in_tensorboard_with_scalars_images_and_hparams(tracked_train):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = _accumulator(tracked_train.parent / "tb" / "r1")
    rows = _history(tracked_train)
    for key in ("train_acc", "val_loss", "test_acc"):
        assert _tb_series(acc, key) == _series(rows, key)
    assert {"curves", "confusion"} <= set(acc.Tags()["images"])
    saved = json.loads((tracked_train / "metrics.json").read_text())
    assert _tb_series(acc, "test_accuracy") == [(0, pytest.approx(saved["test"]["accuracy"]))]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["regime"].string_value == "frozen"
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(1e-3)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "test_accuracy_high" in {m.name.tag for m in experiment.metric_infos}


def test_a_run_refused_on_bad_input_leaves_nothing_in_the_trackers(tracked_train, client, mlflow_uri, monkeypatch,
                                                                    capsys):
    """The run folder exists and --overwrite is missing: an error line, no new MLflow run, TensorBoard untouched."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "train-test")
    logdir = tracked_train.parent / "tb" / "r1"
    before = {p.name: p.stat().st_mtime_ns for p in logdir.iterdir()}
    data = yaml.safe_load((tracked_train / "config.yaml").read_text())["data"]["path"]
    assert main(["train", "--data", data, *TRAIN, "--out", str(tracked_train), *BOTH, "--track-uri", mlflow_uri]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [r.info.run_name for r in _runs(client, "train-test")] == ["r1"]  # the refused attempt's run deleted
    assert {p.name: p.stat().st_mtime_ns for p in logdir.iterdir()} == before


def _write_study(path: Path, data: Path, regimes: list[str], audit: bool = False) -> Path:
    doc = {"name": "tracked study", "data": {"path": str(data)}, "backbones": ["resnet18"], "regimes": regimes,
           "seeds": [0], "train": {"weights": "none", "epochs": 2, "batch_size": 8, "device": "cpu", "num_threads": 1},
           "bootstrap_resamples": 200}
    if audit:
        doc["audit"] = {"backbone": "resnet18", "weights": "none", "resplits": 0, "permutations": 99, "device": "cpu",
                        "num_threads": 1}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_study_is_a_parent_run_with_nested_runs_logged_once_across_resumes(tmp_path, client, mlflow_uri,
                                                                              monkeypatch):
    """A study trained without tracking, resumed with it (its run backfilled from the folder), then grown by one
    regime and an audit (the new run logged live, the finished one not again)."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study-test")
    data, out = write_tiny_npy(tmp_path / "tiny"), tmp_path / "study"
    one = _write_study(tmp_path / "one.yaml", data, ["frozen"])
    both = _write_study(tmp_path / "both.yaml", data, ["frozen", "adabn"], audit=True)
    track = [*BOTH, "--track-uri", mlflow_uri]
    run_study(load_study(one), out, progress=False)  # untracked (the library call: no report needed here)
    assert _runs(client, "study-test") == [] and not (out / "tb").exists()
    assert main(["study", str(one), "--out", str(out), *track]) == 0
    assert main(["study", str(both), "--out", str(out), *track]) == 0

    runs = _runs(client, "study-test")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"resnet18-frozen-seed0", "resnet18-adabn-seed0"}
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.params["bootstrap_resamples"] == "200"
    with open(out / "results.csv", newline="") as f:
        results = {row["run"]: row for row in csv.DictReader(f)}
    for name, child in children.items():
        rows = _history(out / "runs" / name)
        assert _mlflow_series(client, child.info.run_id, "val_acc") == _series(rows, "val_acc")
        for key in ("test_accuracy", "test_accuracy_low", "test_accuracy_high", "val_auroc_low"):
            assert child.data.metrics[key] == pytest.approx(float(results[name][key]))  # the report's own CIs
        assert _tb_series(_accumulator(out / "tb" / name), "val_acc") == _series(rows, "val_acc")  # not doubled
        flags = {"flags.val": results[name]["val_flags"] or "none", "flags.test": results[name]["test_flags"] or "none",
                 "degenerate": results[name]["degenerate"].lower()}  # results.csv's degenerate-run flags
        assert {k: child.data.tags[k] for k in flags} == flags
        assert _tb_hparams(out / "tb" / name, *(f"tag.{k}" for k in flags)) == list(flags.values())
    assert {"report.html", "results.csv", "results.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    audit = artifacts.read_audit(out / "audit").result  # as the tracker reads it (no schema_version)
    assert parent.data.tags["audit.verdict"] == audit["verdict"]["level"]
    expected = records.audit_metrics(audit)  # every number of audit.json
    assert len(expected) > 10 and all(parent.data.metrics[k] == pytest.approx(v) for k, v in expected.items())
    assert "audit/audit.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "audit")}
    root = _accumulator(out / "tb")  # the study's own TensorBoard folder: the audit's figures and statistics
    assert {f"audit/{p.stem}" for p in (out / "audit").glob("*.png")} <= set(root.Tags()["images"])
    assert _tb_series(root, "audit.seconds.total") == [(0, pytest.approx(audit["seconds"]["total"]))]


def test_a_tracked_audit_lands_in_tensorboard(tiny_npy, tmp_path):
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(tiny_npy), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
                 "--resplits", "0", "--permutations", "99", "--device", "cpu", "--num-threads", "1",
                 "--track", "tensorboard"]) == 0
    audit = artifacts.read_audit(out).result
    acc = _accumulator(tmp_path / "tb" / "audit")
    figures = {f"audit/{Path(p).stem}" for p in out.glob("*.png")}
    assert figures and figures <= set(acc.Tags()["images"])
    for key, value in records.audit_metrics(audit).items():
        assert _tb_series(acc, key) == [(0, pytest.approx(value))]


def test_the_default_store_is_sqlite_beside_the_output_and_bad_uris_are_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = session.mlflow_uri(None, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert session.artifact_location(uri) == str(tmp_path.resolve() / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert session.mlflow_uri(None, tmp_path) == "http://tracking:5000"
    assert session.mlflow_uri("sqlite:////x/m.db", tmp_path) == "sqlite:////x/m.db"  # --track-uri wins
    with pytest.raises(XferlabError, match="not one MLflow can use; give e.g. sqlite:///"):
        session.mlflow_uri("runs/mlflow", tmp_path)
    with pytest.raises(XferlabError, match="refuses its file store"):
        session.mlflow_uri("file:///tmp/mlruns", tmp_path)


def test_a_missing_tracking_package_names_the_extra(monkeypatch, tiny_npy, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["train", "--data", str(tiny_npy), *TRAIN, "--out", str(tmp_path / "r"), "--track", "mlflow"]) == 2
    assert "pip install 'xferlab[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_data_digest_follows_the_content(tmp_path):
    a, b = write_tiny_npy(tmp_path / "a"), write_tiny_npy(tmp_path / "b")
    assert records.data_digest(a) == records.data_digest(b) and records.data_digest(a)[1] == "content"
    write_tiny_npy(tmp_path / "b", seed=1)
    assert records.data_digest(a)[0] != records.data_digest(b)[0]


def test_track_is_read_from_run_study_and_audit_yaml(tmp_path, tiny_npy, capsys):
    from xferlab.cli import _audit_configs, build_parser
    from xferlab.config import StudyConfig, TrainConfig, build, read_yaml

    run = tmp_path / "run.yaml"
    run.write_text(f"data: {{path: {tiny_npy}}}\ntrack: [mlflow, tensorboard]\ntrack_uri: sqlite:////x/m.db\n")
    cfg = build(TrainConfig, read_yaml(run), where=str(run))
    assert cfg.track == ["mlflow", "tensorboard"] and cfg.track_uri == "sqlite:////x/m.db"
    run.write_text(f"data: {{path: {tiny_npy}}}\ntrack: [wandb]\n")
    with pytest.raises(XferlabError, match=r"run.yaml line 2: 'track.0' = 'wandb' is invalid"):
        build(TrainConfig, read_yaml(run), where=str(run))
    study = {"data": {"path": str(tiny_npy)}, "backbones": ["resnet18"], "train": {"track": ["mlflow"]}}
    with pytest.raises(XferlabError, match="'track' is set for the whole study: write it at the top"):
        build(StudyConfig, study)
    assert build(StudyConfig, {**study, "train": {}, "track": ["tensorboard"]}).track == ["tensorboard"]
    audit = tmp_path / "audit.yaml"
    audit.write_text(f"data: {{path: {tiny_npy}}}\naudit: {{resplits: 0}}\ntrack: [tensorboard]\n")
    _, _, track = _audit_configs(build_parser().parse_args(["audit", "-c", str(audit), "--track", "mlflow"]))
    assert track.track == ["mlflow"]  # the command line wins over the file
    _, _, track = _audit_configs(build_parser().parse_args(["audit", "-c", str(audit)]))
    assert track.track == ["tensorboard"] and track.track_uri is None


def test_a_bad_tracking_uri_is_an_error_line_before_training(tiny_npy, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_npy), *TRAIN, "--out", str(tmp_path / "r"), "--track", "mlflow",
                 "--track-uri", "localhost:5000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking URI 'localhost:5000' is not one MLflow can use") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no run folder, no store, no log folder


def test_track_options_come_from_the_config_fields_and_repeat():
    """--track / --track-uri are built from the config models' fields (xferlab.cli.add_model_options): a list field
    becomes a repeatable option with the Literal's choices, the same on train, study and audit."""
    from xferlab.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--out", "r"], ["study", "s.yaml"], ["audit"]):
        args = parser.parse_args([*argv, *BOTH, "--track-uri", "sqlite:////x/m.db"])
        assert args.track == ["mlflow", "tensorboard"] and args.track_uri == "sqlite:////x/m.db"
        assert parser.parse_args(argv).track is None  # not given: the YAML's track: stands
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "r", "--track", "wandb"])


def test_the_epoch_hook_hands_each_history_row_to_the_tracker():
    from xferlab.engine.fit import EpochRecord, FitState
    from xferlab.tracking import NULL, EpochMetrics, Tracker, epoch_hooks

    class Rows(Tracker):
        def __init__(self):
            self.rows = []

        def __bool__(self):
            return True

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

    record = EpochRecord(3, 0.5, 0.8, 0.6, 0.7, None, None, 1.0, 0.2)
    tracker = Rows()
    [hook] = epoch_hooks(tracker)
    assert isinstance(hook, EpochMetrics) and epoch_hooks(NULL) == []
    hook.on_epoch_end(record, FitState(epochs=3))
    assert tracker.rows == [(3, record.row())]

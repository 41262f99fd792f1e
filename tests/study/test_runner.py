import json
import sys

import pytest

import xferlab.engine.run as engine_run
from xferlab.errors import XferlabError
from xferlab.study import load_study, run_study
from xferlab.study.runner import AUDIT, RUNS


class CountingTrain:
    """engine.run.train, counting its calls; raises KeyboardInterrupt (a kill) on call number `fail_on`."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.fail_on, self.real = [], fail_on, engine_run.train

    def __call__(self, cfg, out, overwrite=False, progress=True, **kwargs):
        self.calls.append(out.name)
        if len(self.calls) == self.fail_on:
            raise KeyboardInterrupt
        return self.real(cfg, out, overwrite=overwrite, progress=progress, **kwargs)


def _mtimes(out):
    return {p.name: (p / "metrics.json").stat().st_mtime_ns for p in (out / RUNS).iterdir()}


def test_a_killed_study_continues_without_redoing_finished_runs(study_yaml, tmp_path, monkeypatch):
    study = load_study(study_yaml(seeds=[0, 1]))
    out = tmp_path / "out"
    killed = CountingTrain(fail_on=2)
    monkeypatch.setattr(engine_run, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, progress=False)
    assert [p.name for p in (out / RUNS).iterdir()] == ["resnet18-frozen-seed0"]
    first = _mtimes(out)

    resumed = CountingTrain()
    monkeypatch.setattr(engine_run, "train", resumed)
    outcome = run_study(study, out, progress=False)
    assert outcome.skipped == ["resnet18-frozen-seed0"]
    assert resumed.calls == outcome.trained == ["resnet18-frozen-seed1", "resnet18-finetune-seed0",
                                                 "resnet18-finetune-seed1"]
    assert _mtimes(out)["resnet18-frozen-seed0"] == first["resnet18-frozen-seed0"]  # untouched
    assert sorted(p.name for p in (out / RUNS).iterdir()) == sorted(resumed.calls + outcome.skipped)

    again = CountingTrain()
    monkeypatch.setattr(engine_run, "train", again)
    assert run_study(study, out, progress=False).skipped == [s for s in outcome.skipped + outcome.trained]
    assert again.calls == []


def test_a_run_cut_off_mid_way_is_redone_and_force_redoes_everything(study_yaml, tmp_path, monkeypatch):
    study = load_study(study_yaml(regimes=["frozen"]))
    out = tmp_path / "out"
    partial = out / RUNS / ".resnet18-frozen-seed0.partial"
    partial.mkdir(parents=True)
    (partial / "history.csv").write_text("epoch\n1\n")  # what a kill during training leaves behind
    counting = CountingTrain()
    monkeypatch.setattr(engine_run, "train", counting)
    run_study(study, out, progress=False)
    assert counting.calls == ["resnet18-frozen-seed0"] and not partial.exists()
    before = _mtimes(out)
    run_study(study, out, force=True, progress=False)
    assert counting.calls == ["resnet18-frozen-seed0"] * 2 and _mtimes(out) != before


def test_a_finished_run_with_other_settings_is_not_reused_silently(study_yaml, tmp_path):
    out = tmp_path / "out"
    run_study(load_study(study_yaml(regimes=["frozen"])), out, progress=False)
    changed = load_study(study_yaml("changed.yaml", regimes=["frozen"], train={"weights": "none", "epochs": 2,
                                                                               "batch_size": 8, "num_threads": 1}))
    with pytest.raises(XferlabError, match="trained with epochs = 1, the study now asks for 2; pass --force"):
        run_study(changed, out, progress=False)
    # where and how fast a run computes does not change what it computed: a device change reuses it
    moved = load_study(study_yaml("moved.yaml", regimes=["frozen"], train={"weights": "none", "epochs": 1,
                                                                           "batch_size": 8, "device": "auto",
                                                                           "num_threads": 1}))
    assert run_study(moved, out, progress=False).skipped == ["resnet18-frozen-seed0"]


def test_the_study_folder_records_the_study_and_the_environment(study_yaml, tmp_path):
    from xferlab.config import StudyConfig, build, read_yaml

    study = load_study(study_yaml(regimes=["frozen"]))
    out = tmp_path / "out"
    run_study(study, out, progress=False)
    assert build(StudyConfig, read_yaml(out / "study.yaml")) == study
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"] and env["cpu"] and env["python"]


def test_the_audit_runs_once_into_dir_audit(study_yaml, tmp_path, fake_audit):
    study = load_study(study_yaml(regimes=["frozen"], audit={"resplits": 3, "seed": 4}))
    out = tmp_path / "out"
    assert run_study(study, out, progress=False).audited
    (data_cfg, audit_cfg, audit_dir), = fake_audit
    assert data_cfg == study.data and audit_cfg.resplits == 3 and audit_cfg.seed == 4 and audit_dir == out / AUDIT
    assert not run_study(study, out, progress=False).audited and len(fake_audit) == 1  # audit.json exists: skipped
    assert run_study(study, out, force=True, progress=False).audited and len(fake_audit) == 2


def test_an_audit_that_cannot_be_imported_is_a_clear_error_before_any_training(study_yaml, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xferlab.audit", None)  # makes `import xferlab.audit` fail
    study = load_study(study_yaml(regimes=["frozen"], audit={}))
    with pytest.raises(XferlabError, match="audit: section but the split audit"):
        run_study(study, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_xferlab_study_trains_reports_and_prints_the_summary(study_yaml, tmp_path, monkeypatch, capsys):
    from xferlab.cli import main

    path = study_yaml("mystudy.yaml", regimes=["frozen"])
    monkeypatch.chdir(tmp_path)
    assert main(["study", str(path), "--device", "cpu"]) == 0
    out = tmp_path / "runs" / "mystudy"  # default: runs/<YAML name>
    printed = capsys.readouterr().out
    assert "1 runs trained, 0 already finished" in printed and "resnet18  frozen" in printed
    assert printed.rstrip().endswith("report: runs/mystudy/report.html")
    assert {p.name for p in out.iterdir()} >= {"runs", "study.yaml", "environment.json", "results.csv",
                                               "results.json", "report.html"}
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert "0 runs trained, 1 already finished" in capsys.readouterr().out


def test_xferlab_study_errors_are_one_line(study_yaml, tmp_path, capsys):
    from xferlab.cli import main

    assert main(["study", str(study_yaml(regimes=["frozn"])), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "did you mean 'frozen'" in err
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err

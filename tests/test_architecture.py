"""The structure's promises: backbones exist once xferlab.backbones is imported, a misspelt backbone fails when the
config is read, every CLI option shows its default, fit-loop hooks see every epoch and can stop training, and
docs/architecture.md's "Where to add things" states how many places each addition touches and names what exists (a
dummy audit check and a dummy report section, each one entry, are added in tests/audit/test_checks.py and
tests/report/test_html.py)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xferlab.cli import main
from xferlab.config import DataConfig, TrainConfig, build
from xferlab.errors import XferlabError


def test_the_registry_knows_the_backbones_in_a_fresh_interpreter():
    code = ("from xferlab.backbones.registry import create_model, list_backbones; "
            "m = create_model('resnet18', 2, 'none', image_size=32); print(len(list_backbones()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 7


def test_an_unknown_backbone_fails_when_the_config_is_read(tmp_path):
    with pytest.raises(XferlabError, match=r"'backbone' = 'resnet81'.*did you mean 'resnet18'"):
        build(TrainConfig, {"data": {"path": str(tmp_path)}, "backbone": "resnet81"})


@pytest.mark.parametrize("command", ["train", "audit", "phantoms", "bench"])
def test_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    expected = {"train": ["(default: 30)", "(default: resnet18)", "(default: ordered)", "(default: 0.001)"],
                "audit": ["(default: efficientnet_lite0)", "(default: 20)", "(default: runs/audit)"],
                "phantoms": ["default: 64", "(default: none)"], "bench": ["default: 32", "(default finetune)"]}
    for default in expected[command]:
        assert default in text, default


def test_fit_hooks_see_every_epoch_and_can_stop_training(tiny_npy, tmp_path):
    from xferlab.engine.run import train

    class StopAfterTwo:
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, record, state):
            self.seen.append((record.epoch, record.val_acc))
            state.stop = record.epoch == 2

    hook = StopAfterTwo()
    cfg = TrainConfig(data=DataConfig(path=tiny_npy), backbone="resnet18", weights="none", regime="frozen", epochs=5,
                      batch_size=8, device="cpu", num_threads=1)
    result = train(cfg, tmp_path / "run", progress=False, hooks=[hook])
    assert [e for e, _ in hook.seen] == [1, 2] and len(result.history) == 2
    assert [r["val_acc"] for r in result.history] == [acc for _, acc in hook.seen]


def test_where_to_add_things_states_each_count_and_names_what_exists():
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    table = text.split("## Where to add things")[1].split("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| to add")]
    assert len(rows) >= 9 and all(re.search(r"\(\d+", r.split(" | ")[0]) for r in rows), rows
    # the two the dummy entries of the tests exercise: a module (or function) plus one entry
    assert "| an audit check (2: a module + an entry) |" in table and "`audit/checks.py::CHECKS`" in table
    assert "| a report section (2: a function + an entry;" in table and "`report/html.py::SECTIONS`" in table
    named = re.findall(r"`([\w/]+)\.py::(\w+)`", table)
    assert len(named) >= 6
    for path, name in named:
        assert hasattr(importlib.import_module("xferlab." + path.replace("/", ".")), name), (path, name)
